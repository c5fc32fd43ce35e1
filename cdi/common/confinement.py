"""Worker confinement: a private mount namespace, then an unprivileged uid with no capabilities.

An importer or upload server reads untrusted bytes (and runs qemu-img, nbdkit and decompressors
on them). Should any of that be subverted, the worker must not be able to reach the machine:

- The controller (the runner, ``cdi.backends.embedded.workers``) picks a uid/gid for the worker,
  gives that uid the worker's volume (a directory or a block device), its scratch directory and
  its run directory (result, progress, secrets), and starts it as root with a ``Spec`` in
  ``CDI_WORKER_CONFINE``.
- The worker calls ``enter(env)`` first thing, while it is still single-threaded: it loads every
  module it will need (the interpreter may live where the new uid cannot read, such as
  ``/root/.pyenv``), makes a private mount namespace, mounts an empty size-limited tmpfs on
  ``/tmp`` (hiding the host's ``/tmp``), bind-mounts what the spec grants under ``/tmp/cdi``
  (``nosuid``, ``nodev`` and ``noexec`` except for a device), rewrites the host paths in its
  environment to those mount points, and then drops to the uid: no supplementary groups, no
  capabilities, ``no_new_privs`` (no setuid binary can give them back) and not dumpable (no other
  process of the uid can read its memory or ``/proc/<pid>/root``). It checks that the drop held.
- After that the worker can read only what any unprivileged user can read, and write only its
  volume, its scratch and run directories and its private ``/tmp`` (``/var/tmp``, ``/dev/shm``
  and ``/run/lock``, which anyone may write on the host, are small empty tmpfs here too). The
  data dir (0700) and every other volume are out of reach; so are ``/etc/shadow`` and block
  devices. When it has ended, the runner gives its volume back to root, so it keeps nothing.

The mount namespace is needed because the worker's directories live under the 0700 data dir,
which the worker's uid cannot traverse; a bind mount under ``/tmp/cdi`` shows the worker just
those directories. ``unshare`` and ``mount`` come from libc through ctypes (Python 3.11 has no
``os.unshare``). Without a spec (a controller that is not root, or unit tests) ``enter`` changes
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import importlib.abc
import json
import logging
import os
import pkgutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cdi.api.contract import Reason
from cdi.common.errors import PermanentError

log = logging.getLogger(__name__)

ENV_CONFINE = "CDI_WORKER_CONFINE"
ROOT = "/tmp/cdi"  # where the worker sees what it was given
RUN = "run"  # the run directory's mount name
TMP_SIZE = "64m"  # the private /tmp: sockets, nbdkit's small files; images go to scratch, never here
DIR, DEVICE = "dir", "device"
SHARED_WRITABLE = ("/var/tmp", "/dev/shm", "/run/lock")  # world-writable besides /tmp

# Modules loaded lazily by code the workers run (stdlib codecs and parsers, compression).
PRELOAD = (
    "encodings.idna", "encodings.ascii", "encodings.latin_1", "encodings.utf_8", "encodings.utf_8_sig",
    "encodings.utf_16", "encodings.utf_16_le", "encodings.utf_16_be", "encodings.utf_32",
    "encodings.utf_32_le", "encodings.utf_32_be", "encodings.cp437", "encodings.iso8859_1",
    "encodings.punycode", "stringprep", "unicodedata", "_strptime", "http.client", "http.server",
    "email.parser", "email.feedparser", "email.message", "ssl", "socket", "socketserver", "lzma", "zlib",
    "bz2", "tarfile", "concurrent.futures.thread", "queue", "tempfile", "shutil", "uuid", "hmac",
    "secrets", "base64", "json", "isal.igzip", "zstandard", "traceback", "linecache", "tokenize",
)

_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x2, 0x4, 0x8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
_MNT_DETACH = 2
_PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS = 4, 38


class ConfinementError(PermanentError):
    reason = Reason.CONFIG_ERROR


@dataclass(frozen=True)
class Grant:
    """A host path the worker may use, seen as ``/tmp/cdi/<name>``."""

    name: str
    path: str
    kind: str = DIR  # DIR or DEVICE


@dataclass(frozen=True)
class Spec:
    uid: int
    gid: int
    grants: tuple[Grant, ...] = field(default_factory=tuple)
    preload: tuple[str, ...] = ()  # packages of the worker, loaded with all their modules

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, raw: str) -> Spec:
        try:
            d = json.loads(raw)
            return cls(
                uid=int(d["uid"]), gid=int(d["gid"]),
                grants=tuple(Grant(str(g["name"]), str(g["path"]), str(g.get("kind", DIR))) for g in d["grants"]),
                preload=tuple(str(p) for p in d.get("preload", ())),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ConfinementError(f"{ENV_CONFINE} is not a valid confinement spec: {e}") from None

    def seen_as(self, grant: Grant) -> str:
        return os.path.join(ROOT, grant.name)


def enter(env: Mapping[str, str]) -> dict[str, str]:
    """Confine this process as ``env[CDI_WORKER_CONFINE]`` says; returns the environment to use
    (``os.environ`` becomes it too, so that children see the same paths).

    :raises ConfinementError: the spec is invalid or the kernel refused a step (nothing of the
        worker's job has run yet; the caller reports it as its result).
    """
    out = dict(env)
    raw = out.pop(ENV_CONFINE, None)
    if not raw:
        return out
    spec = Spec.from_env(raw)
    preload(spec.preload)
    if threading.active_count() != 1:
        raise ConfinementError("internal: the worker started a thread before confining itself")
    libc = _libc()
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    # opened in the new namespace (a bind mount's source must be in it), before /tmp is covered
    fds = _open_grants(spec.grants)
    try:
        _mount(libc, "tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={TMP_SIZE},mode=1777,uid=0,gid=0")
        try:
            _bind_grants(libc, spec, fds)
            for shared in SHARED_WRITABLE:  # other places any user may write: empty and small here
                if os.path.isdir(shared):
                    _mount(libc, "tmpfs", shared, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                           "size=1m,mode=1777,uid=0,gid=0")
        except BaseException:
            libc.umount2(b"/tmp", _MNT_DETACH)  # the host's /tmp again: the caller can still report
            raise
    finally:
        for fd in fds.values():
            os.close(fd)
    out = rewrite(out, spec)
    out["HOME"] = out["TMPDIR"] = "/tmp"
    # children (xz, qemu-img, nbdkit) inherit os.environ: the same view, without the spec
    os.environ.clear()
    os.environ.update(out)
    tempfile.tempdir = None
    os.chdir(os.path.join(ROOT, RUN) if any(g.name == RUN for g in spec.grants) else "/tmp")
    drop(spec.uid, spec.gid)
    sys.meta_path.append(_NotPreloaded())
    log.info("confined: uid %d, no capabilities, seeing %s", spec.uid,
             ", ".join(spec.seen_as(g) for g in spec.grants))
    return out


class _NotPreloaded(importlib.abc.MetaPathFinder):
    """Last on ``sys.meta_path`` after the drop: a module nobody could find may simply be out of
    the new uid's reach (an interpreter under /root); the log says so before the ImportError."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        log.warning("module %s was not found after the worker dropped its privileges; if it exists, its "
                    "files are not readable by the worker's uid: add it to cdi.common.confinement.PRELOAD",
                    fullname)
        return None


def preload(packages: Iterable[str] = ()) -> None:
    """Import every module of ``packages`` and the lazily loaded stdlib ones, while we can read them."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # optional ones (bz2 on a minimal Python): the worker will not need them
            log.debug("preload: %s is not available", name)
    for pkg in packages:
        mod = importlib.import_module(pkg)
        for info in pkgutil.walk_packages(getattr(mod, "__path__", []), prefix=f"{pkg}."):
            if info.name.rpartition(".")[2] != "__main__":  # a package's __main__ runs the worker
                importlib.import_module(info.name)


def rewrite(env: Mapping[str, str], spec: Spec) -> dict[str, str]:
    """Replace each granted host path (and paths inside it) in ``env``'s values by where it is seen."""
    out = dict(env)
    # longest first: a grant inside another grant's directory wins
    grants = sorted(spec.grants, key=lambda g: len(g.path), reverse=True)
    for key, value in env.items():
        prefix, _, rest = value.partition(":") if value.startswith("unix:") else ("", "", value)
        for g in grants:
            host = g.path.rstrip("/")
            if rest == host or rest.startswith(host + "/"):
                rest = spec.seen_as(g) + rest[len(host):]
                out[key] = f"{prefix}:{rest}" if prefix else rest
                break
    return out


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise ConfinementError(
            f"cannot confine the worker: {what} failed: {os.strerror(err)}; the controller must run as root "
            "on a kernel with mount namespaces (or set workerIsolation: false in config.yaml, not recommended)"
        )


def _mount(libc: ctypes.CDLL, src: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    rc = libc.mount(
        src.encode() if src else None, target.encode(), fstype.encode() if fstype else None,
        ctypes.c_ulong(flags), data.encode() if data else None,
    )
    _check(rc, f"mount {target}")


def _open_grants(grants: tuple[Grant, ...]) -> dict[str, int]:
    """O_PATH descriptors of the grants, opened before /tmp (where they may live) is covered."""
    fds: dict[str, int] = {}
    try:
        for g in grants:
            if "/" in g.name or g.name in ("", ".", ".."):
                raise ConfinementError(f"invalid grant name {g.name!r}")
            flags = os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_DIRECTORY if g.kind == DIR else 0)
            try:
                fds[g.name] = os.open(g.path, flags)
            except OSError as e:
                raise ConfinementError(f"cannot open {g.kind} {g.path} for the worker: {e.strerror}") from None
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def _bind_grants(libc: ctypes.CDLL, spec: Spec, fds: dict[str, int]) -> None:
    """Bind each grant (from its descriptor) under ROOT on the private /tmp, hardened."""
    os.mkdir(ROOT, 0o755)
    for g in spec.grants:
        target = spec.seen_as(g)
        if g.kind == DEVICE:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
        else:
            os.mkdir(target, 0o700)
        source = f"/proc/self/fd/{fds[g.name]}"
        _mount(libc, source, target, None, _MS_BIND)
        hardening = _MS_NOSUID | (0 if g.kind == DEVICE else _MS_NODEV | _MS_NOEXEC)
        _mount(libc, None, target, None, _MS_REMOUNT | _MS_BIND | hardening)


def drop(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with no groups and no capabilities, for good; check that it held."""
    libc = _libc()
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    caps = capabilities()
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups() or any(caps.values()):
        raise ConfinementError(f"internal: dropping privileges did not hold (uid {os.getresuid()}, caps {caps})")


def capabilities() -> dict[str, int]:
    """The capability sets of this process (``CapEff``, ``CapPrm``, ...) from /proc/self/status."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Cap"):
                key, _, value = line.partition(":")
                if key in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
                    out[key] = int(value.strip(), 16)
    return out
