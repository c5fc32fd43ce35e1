"""The data dir holds Secrets: its private parts are checked, and tightened, whenever it is opened.

``state.db`` holds every Secret (registry passwords, S3 keys) and ``upload/`` the upload proxy's
TLS key and the token signing keys. They are safe only while no other local user can read them
or swap them. Each CLI command and the controller, when they open the data dir, call
:func:`secure`, which makes sure that

- the data dir and its private subdirs (``workers``, ``scratch``, ``upload``, ``upload/tls``,
  ``upload/keys``) are mode 0700 and the files holding secrets (``state.db`` and its ``-wal``,
  ``-shm``, ``-journal``; ``*.key`` under ``upload/tls`` and ``upload/keys``) 0600, tightening
  what an older version, a pre-created directory (``mkdir -m 755``) or a copy left looser and
  logging one line per change;
- they, and every entry directly in the data dir and under ``upload``, belong to the user
  running cdi or to root. Anything owned by another (non-root) user is refused: while the
  directory was open to them they could have planted a ``config.yaml`` pointing elsewhere or a
  ``state.db`` of their own, so cdi will not trust it (the message says what to do).

A root-owned directory that a non-root user cannot tighten is refused only when others may
write to it (``/tmp`` as a data dir); a root-owned file is left as it is (only root could have
made it). Modes are set with ``chmod``, so the umask does not matter; new files are created
0600 by their writers (``cdi.store.sqlite``, ``uploadproxy.certs``, ``uploadproxy.tokens``).
"""

from __future__ import annotations

import logging
import os
import pwd
import stat

from cdi.common.errors import PermanentError

log = logging.getLogger("cdi.datadir")

DIR_MODE = 0o700
FILE_MODE = 0o600
PRIVATE_DIRS = ("workers", "scratch", "upload", "upload/tls", "upload/keys")
STATE_FILES = ("state.db", "state.db-wal", "state.db-shm", "state.db-journal")
KEY_DIRS = ("upload/tls", "upload/keys")
ENTRIES_CHECKED = ("", "upload")  # every entry of these belongs to us or root


class UnsafeDataDir(PermanentError):
    reason = "UnsafeDataDir"


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _check_owner(path: str, st: os.stat_result, data_dir: str) -> None:
    me = os.geteuid()
    if st.st_uid in (me, 0):
        return
    if path == data_dir:
        raise UnsafeDataDir(
            f"the data dir {data_dir} belongs to {_user(st.st_uid)}, not to you ({_user(me)}): its owner "
            "could replace the files cdi trusts (state.db with the Secrets, config.yaml, keys). Use a data dir "
            "of your own (--data-dir or CDI_DATA_DIR), or run cdi as its owner"
        )
    raise UnsafeDataDir(
        f"{path} in the data dir belongs to {_user(st.st_uid)}, not to you ({_user(me)}) or root: another user "
        "could have planted it while the data dir was open to them. Check it and remove it (cdi recreates "
        f"what it needs), or chown it to {_user(me)} if you know why it is there"
    )


def _tighten(path: str, st: os.stat_result, want: int, changed: list[str]) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode == want:
        return
    if st.st_uid != os.geteuid():  # root's, and we are not root
        if stat.S_ISDIR(st.st_mode) and mode & 0o022:
            raise UnsafeDataDir(
                f"{path} belongs to root and other users may write to it (mode {mode:04o}), so they could "
                "replace the files cdi keeps there; use a data dir of your own (--data-dir or CDI_DATA_DIR)"
            )
        return
    os.chmod(path, want)
    changed.append(f"{path} from {mode:04o} to {want:04o}")


def secure(data_dir: str) -> list[str]:
    """Create ``data_dir`` (0700) if needed, then check and tighten it; returns what was tightened.

    :raises UnsafeDataDir: something in it belongs to another non-root user, or it is a root-owned
        directory others may write to.
    """
    os.makedirs(data_dir, mode=DIR_MODE, exist_ok=True)
    changed: list[str] = []
    st = os.stat(data_dir)
    _check_owner(data_dir, st, data_dir)
    _tighten(data_dir, st, DIR_MODE, changed)
    for rel in ENTRIES_CHECKED:
        base = os.path.join(data_dir, rel) if rel else data_dir
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            _check_owner(entry.path, entry.stat(follow_symlinks=False), data_dir)
    for rel in PRIVATE_DIRS:
        path = os.path.join(data_dir, rel)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        _check_owner(path, st, data_dir)
        if stat.S_ISDIR(st.st_mode):
            _tighten(path, st, DIR_MODE, changed)
    files = [os.path.join(data_dir, name) for name in STATE_FILES]
    for rel in KEY_DIRS:
        try:
            names = sorted(os.listdir(os.path.join(data_dir, rel)))
        except (FileNotFoundError, NotADirectoryError):
            continue
        files.extend(os.path.join(data_dir, rel, n) for n in names if n.endswith((".key", ".key.tmp")))
    for path in files:
        try:
            lst = os.lstat(path)
            st = os.stat(path)
        except FileNotFoundError:
            continue
        _check_owner(path, lst, data_dir)
        _check_owner(path, st, data_dir)
        if stat.S_ISREG(st.st_mode):
            _tighten(path, st, FILE_MODE, changed)
    for what in changed:
        log.warning("tightened the permissions of %s: the data dir holds Secrets and keys", what)
    return changed


__all__ = ["DIR_MODE", "FILE_MODE", "UnsafeDataDir", "secure"]
