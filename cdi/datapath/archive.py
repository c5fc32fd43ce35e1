"""Streamed, confined tar extraction (contentType ``archive``).

Entries are checked one by one as they stream past: absolute names, ``..`` components, links
whose target leaves the volume, device nodes and FIFOs are refused (``UnsafeImage`` naming the
entry), and the total extracted size is bounded by the volume's usable size. Extraction goes to
a staging directory inside the volume whose entries are moved into place at the end.
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import tarfile
from collections.abc import Callable

from cdi.api.contract import Reason
from cdi.common.errors import CDIError, PermanentError
from cdi.datapath.source import Stream
from cdi.datapath.streams import _FileAdapter

STAGING_PREFIX = ".cdi-staging"


def unsafe(name: str, why: str) -> PermanentError:
    return PermanentError(f"archive entry {name!r} {why}; refusing to extract", reason=Reason.UNSAFE_IMAGE)


def _inside(path: str) -> bool:
    """True if the normalized relative ``path`` stays inside the root."""
    norm = posixpath.normpath(path)
    return not (norm == ".." or norm.startswith("../") or posixpath.isabs(norm))


def check_member(m: tarfile.TarInfo) -> None:
    name = m.name
    if name.startswith("/") or posixpath.isabs(name):
        raise unsafe(name, "has an absolute path")
    if ".." in name.split("/"):
        raise unsafe(name, "has a '..' component")
    if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
        raise unsafe(name, "is a device node or FIFO")
    if m.issym():
        target = m.linkname
        if posixpath.isabs(target) or not _inside(posixpath.join(posixpath.dirname(name), target)):
            raise unsafe(name, f"is a symlink to {target!r} outside the volume")
    elif m.islnk():
        target = m.linkname
        if posixpath.isabs(target) or ".." in target.split("/") or not _inside(target):
            raise unsafe(name, f"is a hard link to {target!r} outside the volume")
    elif not (m.isfile() or m.isdir()):
        raise unsafe(name, "has an unsupported type")


def _check_resolved(root_real: str, root: str, m: tarfile.TarInfo, rel: str) -> None:
    real = os.path.realpath(os.path.join(root, rel))
    if real != root_real and not real.startswith(root_real + os.sep):
        raise unsafe(m.name, "resolves through links to a path outside the volume")


def extract(
    stream: Stream,
    dest_dir: str,
    limit: int,
    on_progress: Callable[[int], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> int:
    """Extract the tar ``stream`` into ``dest_dir``; returns the bytes of file data extracted.

    ``before_commit`` runs after the last entry and before anything is moved into place (the
    processor verifies the checksum there); if it raises, nothing is moved.
    """
    staging = os.path.join(dest_dir, f"{STAGING_PREFIX}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging, mode=0o750)
    staging_real = os.path.realpath(staging)
    total = 0
    uid, gid = os.getuid(), os.getgid()
    try:
        fileobj = io.BufferedReader(_FileAdapter(stream), 1 << 20)
        try:
            with tarfile.open(fileobj=fileobj, mode="r|") as tar:
                for m in tar:
                    check_member(m)
                    if m.isfile():
                        total += m.size
                        if total > limit:
                            raise PermanentError(
                                f"archive entry {m.name!r} takes the extracted size past the volume's "
                                f"usable size ({limit} bytes); request a larger volume",
                                reason=Reason.TOO_SMALL,
                            )
                    _check_resolved(staging_real, staging, m, m.name.rstrip("/").rpartition("/")[0])
                    m.uid, m.gid = uid, gid
                    m.uname = m.gname = ""
                    m.mode &= 0o777  # no setuid/setgid/sticky from an untrusted archive
                    tar.extract(
                        m, staging, set_attrs=not m.issym(), numeric_owner=True, filter="fully_trusted"
                    )
                    if m.issym():  # links through links: judge where it really points
                        _check_resolved(staging_real, staging, m, m.name)
                    if on_progress is not None:
                        on_progress(total)
        except CDIError:
            raise
        except (tarfile.TarError, EOFError) as e:
            raise PermanentError(f"the archive cannot be read: {e}", reason=Reason.INVALID_IMAGE) from e
        if before_commit is not None:
            before_commit()
        for name in os.listdir(staging):
            dst = os.path.join(dest_dir, name)
            if os.path.isdir(dst) and not os.path.islink(dst):
                shutil.rmtree(dst)
            os.replace(os.path.join(staging, name), dst)
        fd = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return total
    finally:
        shutil.rmtree(staging, ignore_errors=True)
