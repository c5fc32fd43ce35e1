"""Streamed, confined tar extraction (contentType ``archive``).

The importer and the upload server run with more rights than whoever wrote the archive, so every
entry is hostile until proven otherwise. ``tarfile`` only parses the headers (streaming mode
``r|``); the files are made here, and nothing on the way ever follows a link:

- Every path is walked one component at a time from a directory fd of the staging root
  (``O_NOFOLLOW | O_DIRECTORY``; ``mkdir``/``unlink``/``link``/``symlink`` with ``dir_fd``). A
  component that is not a real directory stops the entry. Regular files are created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` (an earlier entry of the same name is removed first, never
  written through); modes are set with ``fchmod`` on the open fd and never carry
  setuid/setgid/sticky; ownership never comes from the archive.
- Symbolic links are made only after every other entry, so no entry can pass through one (an
  entry below a link's name is refused, as GNU tar refuses it). Then every link the archive
  named, including one a later entry replaced, is resolved in the final tree, following the
  other links (at most 40 hops, like the kernel): a link that leads out of the volume or loops
  is refused. Absolute link targets are refused at once, so no volume ever holds a link to a
  host path. The reported attack (``x -> b/b/../../..<host path>``, ``b -> .``, then a file
  ``x``) depended on judging a link before the links it goes through existed.
- Hard links only to a regular file extracted earlier, found with the same walk: never to a
  link, never through one, never outside.
- Refused outright (``UnsafeImage`` naming the entry): absolute names, ``..`` components,
  device nodes, FIFOs and unknown entry types, top-level names starting with the staging
  directory's prefix. Entries that contradict each other (a file where a later entry needs a
  directory, replacing a directory that is not empty) are ``InvalidImage``, as in GNU tar.
- Kept: file modes (``& 0o777``; a directory without owner rwx gets its mode after the last entry
  so the extraction can go on inside it), mtimes of files and links, sparse files (GNU and pax
  sparse entries; runs of zeros are left as holes).
- Bounds (the volume and the host must survive any archive): file data plus a fixed overhead
  per entry (its inode, directory entry and partial block) is summed against the volume's usable
  size (``DataVolumeTooSmall``); the number of entries, the path depth and length, one header's
  size (GNU long names, pax records, sparse maps: ``tarfile`` holds them in memory) and the
  memory kept for links are capped (``UnsafeImage``, saying which limit).

Extraction goes to a staging directory inside the volume; entries are moved into place only
after the last one was checked and ``before_commit`` (the processor verifies the checksum there)
returned. If anything fails nothing is moved, and the staging directory is always removed
without following links.
"""

from __future__ import annotations

import collections
import errno
import io
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from cdi.api.contract import Reason
from cdi.common.errors import CDIError, PermanentError
from cdi.datapath.source import Stream
from cdi.datapath.streams import _FileAdapter

STAGING_PREFIX = ".cdi-staging"
CHUNK = 1 << 20  # read-ahead from the source
COPY = 64 << 10  # file data per read; all-zero pieces of this size become holes

MAX_ENTRIES = 1_000_000
ENTRY_OVERHEAD = 4096  # bytes counted per entry on top of its file data
MAX_DEPTH = 256  # path components in a name
MAX_PATH_BYTES = 4095  # a name or a link target (PATH_MAX without the NUL)
MAX_COMPONENT_BYTES = 255  # NAME_MAX
MAX_HEADER_BYTES = 1 << 20  # one header with its GNU long names, pax records, sparse map
MAX_GLOBAL_PAX_KEYS = 256
MAX_RECORD_BYTES = 64 << 20  # memory for the links (and rare directory modes) kept to the end
MAX_LINK_HOPS = 40  # links followed while resolving one link, as the kernel allows
MAX_RESOLVE_STEPS = 8192  # path components walked while resolving one link
MAX_RESOLVE_TOTAL = 32_000_000  # ... and for all of them

_KINDS = "an archive for a volume holds files, directories and links"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ZEROS = bytes(COPY)
_FD_CACHE = 256


def unsafe(name: str, why: str) -> PermanentError:
    return PermanentError(
        f"archive entry {name!r} {why}; refusing to extract the archive (nothing was written to the volume)",
        reason=Reason.UNSAFE_IMAGE,
    )


def invalid(name: str, why: str) -> PermanentError:
    return PermanentError(
        f"archive entry {name!r} {why}; the archive cannot be extracted (nothing was written to the volume)",
        reason=Reason.INVALID_IMAGE,
    )


def _limit(what: str) -> PermanentError:
    return PermanentError(f"{what}; refusing to extract the archive", reason=Reason.UNSAFE_IMAGE)


def _inside(path: str) -> bool:
    """True if the normalized relative ``path`` stays inside the root."""
    norm = posixpath.normpath(path)
    return not (norm == ".." or norm.startswith("../") or posixpath.isabs(norm))


def _check_path(name: str, what: str, text: str) -> None:
    """Length and NUL checks shared by names and link targets."""
    if "\0" in text:
        raise unsafe(name, f"has a NUL byte in its {what}")
    if len(os.fsencode(text)) > MAX_PATH_BYTES:
        raise _limit(f"archive entry {name[:200]!r}... has a {what} longer than {MAX_PATH_BYTES} bytes")


def _parts(name: str, text: str, what: str) -> tuple[str, ...]:
    """``text`` (a member name or hard link target) as path components; '' and '.' dropped."""
    _check_path(name, what, text)
    if text.startswith("/"):
        raise unsafe(name, f"has an absolute {what} ({text!r}); CDI extracts relative paths only")
    parts = tuple(p for p in text.split("/") if p not in ("", "."))
    if ".." in parts:
        raise unsafe(name, f"has a '..' component in its {what}")
    if len(parts) > MAX_DEPTH:
        raise _limit(
            f"archive entry {name[:200]!r}... is {len(parts)} directories deep (at most {MAX_DEPTH})"
        )
    for p in parts:
        if len(os.fsencode(p)) > MAX_COMPONENT_BYTES:
            raise _limit(
                f"archive entry {name[:200]!r}... has a path component longer than "
                f"{MAX_COMPONENT_BYTES} bytes"
            )
    return parts


def check_member(m: tarfile.TarInfo) -> tuple[str, ...]:
    """Checks that need only the header; returns the name as path components."""
    name = m.name
    if posixpath.isabs(name):
        raise unsafe(name, "has an absolute path; CDI extracts relative paths only")
    if m.isdev():  # character and block devices and FIFOs
        raise unsafe(name, f"is a device node or FIFO; {_KINDS}")
    parts = _parts(name, name, "name")
    if parts and parts[0].startswith(STAGING_PREFIX):
        raise unsafe(
            name, f"uses a name that starts with {STAGING_PREFIX!r}, which the importer keeps for itself"
        )
    if m.issym():
        target = m.linkname
        _check_path(name, "link target", target)
        if not target:
            raise invalid(name, "is a symlink with an empty target")
        lexical = posixpath.join(*parts[:-1], target) if parts[:-1] else target
        if posixpath.isabs(target) or not _inside(lexical):
            raise unsafe(name, f"is a symlink to {target!r} outside the volume")
    elif m.islnk():
        target = m.linkname
        if not target or posixpath.isabs(target) or ".." in target.split("/"):
            raise unsafe(name, f"is a hard link to {target!r} outside the volume")
        if not _parts(name, target, "hard link target"):
            raise invalid(name, "is a hard link to the archive's top directory")
    elif m.isfile():
        if m.size < 0:
            raise invalid(name, f"has a negative size ({m.size})")
    elif not m.isdir():
        raise unsafe(name, f"has an unsupported type ({m.type!r}); {_KINDS}")
    if not parts and not m.isdir():
        raise invalid(name, "names the archive's top directory but is not a directory")
    return parts


def _show(parts: tuple[str, ...]) -> str:
    return "/".join(parts)


class _Meter(io.RawIOBase):
    """What ``tarfile`` reads, with a ceiling while it parses one header."""

    def __init__(self, inner: io.BufferedReader) -> None:
        self.inner = inner
        self.delivered = 0
        self.ceiling: int | None = None
        self.after = ""  # the last entry's name, for the message

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self.inner.readinto(buf)
        self.delivered += n
        if self.ceiling is not None and self.delivered > self.ceiling:
            where = f"after entry {self.after!r}" if self.after else "at the start"
            raise _limit(
                f"an archive header {where} is larger than {MAX_HEADER_BYTES} bytes (a long name, pax "
                "records or a sparse map)"
            )
        return n


# one header's bytes may arrive with what tarfile buffers before and after it
_SLACK = 2 * tarfile.RECORDSIZE + tarfile.BLOCKSIZE


@dataclass
class _Link:
    name: str
    parts: tuple[str, ...]
    target: str
    mtime: float


class _Dirs:
    """Directory fds below the staging root, opened one component at a time without following."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.cache: dict[tuple[str, ...], int] = {}
        self._recent: collections.deque[tuple[str, ...]] = collections.deque(maxlen=2)

    def get(self, parts: tuple[str, ...], name: str, create: bool) -> int:
        """The fd of directory ``parts`` (made if missing and ``create``; else FileNotFoundError).

        It stays valid until the next call but one (a hard link needs two at once): past
        ``_FD_CACHE`` the others are closed first, so a deep name or a long chain of links never
        runs the process out of descriptors (at most ``_FD_CACHE`` + ``MAX_DEPTH`` + 2 open)."""
        if not parts:
            return self.root
        fd = self.cache.get(parts)
        if fd is None:
            if len(self.cache) >= _FD_CACHE:
                for key in [k for k in self.cache if k not in self._recent]:
                    os.close(self.cache.pop(key))
            fd = self._walk(parts, name, create)
        self._recent.append(parts)
        return fd

    def _walk(self, parts: tuple[str, ...], name: str, create: bool) -> int:
        i = len(parts) - 1
        while i > 0 and parts[:i] not in self.cache:
            i -= 1
        fd = self.cache[parts[:i]] if i else self.root
        for j in range(i, len(parts)):
            fd = self._child(fd, parts[: j + 1], name, create)
            self.cache[parts[: j + 1]] = fd
        return fd

    def _child(self, parent: int, path: tuple[str, ...], name: str, create: bool) -> int:
        comp = path[-1]
        try:
            return os.open(comp, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(comp, 0o755, dir_fd=parent)
            return os.open(comp, _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            st = os.stat(comp, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise unsafe(name, f"passes through the symlink {_show(path)!r}") from None
            raise invalid(
                name, f"needs {_show(path)!r} to be a directory, but an earlier entry made it a file"
            ) from None

    def trim(self) -> None:
        """Between entries: keep the number of open fds bounded."""
        if len(self.cache) > _FD_CACHE:
            self.close()

    def forget(self, parts: tuple[str, ...]) -> None:
        """``parts`` and what is below it are about to be removed."""
        n = len(parts)
        for key in [k for k in self.cache if k[:n] == parts]:
            os.close(self.cache.pop(key))

    def close(self) -> None:
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()


def _set_mtime(fd_or_name: int | str, mtime: float, dir_fd: int | None = None) -> None:
    try:
        if isinstance(fd_or_name, int):
            os.utime(fd_or_name, (mtime, mtime))
        else:
            os.utime(fd_or_name, (mtime, mtime), dir_fd=dir_fd, follow_symlinks=False)
    except (OSError, OverflowError, ValueError):
        pass  # an odd timestamp is not worth failing the import for


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


class _Extractor:
    def __init__(self, root: int, limit: int) -> None:
        self.dirs = _Dirs(root)
        self.limit = limit
        self.entries = 0
        self.data = 0  # file data, what extract() returns
        self.links: list[_Link] = []  # every symlink entry, replaced ones too
        self.live: dict[tuple[str, ...], _Link] = {}  # the symlinks to make at the end
        self.modes: dict[tuple[str, ...], int] = {}  # directory modes without owner rwx, set at the end
        self.record_bytes = 0
        self.buf = bytearray(COPY)
        self.steps = 0

    # --- bounds -------------------------------------------------------------------------

    def _count(self, m: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise _limit(
                f"the archive has more than {MAX_ENTRIES} entries (at {m.name[:200]!r}); repack the files "
                "into fewer entries, for example a disk image or a nested archive"
            )
        if m.isfile():
            self.data += m.size
        cost = self.data + self.entries * ENTRY_OVERHEAD
        if cost > self.limit:
            raise PermanentError(
                f"archive entry {m.name!r} takes the extracted size past the volume's usable size "
                f"({self.limit} bytes; {self.data} bytes of file data so far and {self.entries} entries, "
                f"each counted {ENTRY_OVERHEAD} bytes more for its inode and directory entry); "
                "request a larger volume",
                reason=Reason.TOO_SMALL,
            )

    def _remember(self, nbytes: int) -> None:
        self.record_bytes += nbytes + 100
        if self.record_bytes > MAX_RECORD_BYTES:
            raise _limit(
                f"the archive's symlinks (and directories without owner access) take more than "
                f"{MAX_RECORD_BYTES} bytes to check; repack it with fewer or shorter links"
            )

    def _not_through_links(self, name: str, parts: tuple[str, ...], what: str = "") -> None:
        if self.live:
            for i in range(1, len(parts)):
                if parts[:i] in self.live:
                    link = _show(parts[:i])
                    raise unsafe(name, f"{what}passes through the symlink {link!r} made by an earlier entry")

    # --- entries ------------------------------------------------------------------------

    def add(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.dirs.trim()
        parts = check_member(m)
        self._count(m)
        if not parts:  # "./": the volume's own directory keeps its mode
            return
        self._not_through_links(m.name, parts)
        if m.issym():
            self.dirs.get(parts[:-1], m.name, create=True)
            link = _Link(m.name, parts, m.linkname, m.mtime)
            self._remember(len(m.name) + len(m.linkname))
            self.links.append(link)
            self.live[parts] = link
            return
        self.live.pop(parts, None)  # a later entry replaces a link of the same name
        if m.isdir():
            self._directory(m, parts)
        elif m.islnk():
            self._hard_link(m, parts)
        else:
            self._file(tar, m, parts)

    def _clear(self, parent: int, parts: tuple[str, ...], name: str) -> None:
        """Remove what an earlier entry made at ``parts`` (never following it)."""
        leaf = parts[-1]
        try:
            st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(leaf, dir_fd=parent)
            return
        self.dirs.forget(parts)
        try:
            os.rmdir(leaf, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise invalid(
                    name,
                    f"would replace the directory {_show(parts)!r}, which holds entries from earlier in "
                    "the archive",
                ) from None
            raise
        self.modes.pop(parts, None)

    def _directory(self, m: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        parent = self.dirs.get(parts[:-1], m.name, create=True)
        leaf = parts[-1]
        try:
            st: os.stat_result | None = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(leaf, dir_fd=parent)
            st = None
        if st is None:
            os.mkdir(leaf, 0o700, dir_fd=parent)
        fd = self.dirs.get(parts, m.name, create=False)
        mode = m.mode & 0o777
        os.fchmod(fd, mode | 0o700)  # the owner keeps access until the last entry is in
        if mode & 0o700 != 0o700:
            if parts not in self.modes:
                self._remember(len(m.name))
            self.modes[parts] = mode
        else:
            self.modes.pop(parts, None)

    def _file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        parent = self.dirs.get(parts[:-1], m.name, create=True)
        self._clear(parent, parts, m.name)
        fd = os.open(parts[-1], _FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            if m.size:
                src = tar.extractfile(m)
                assert src is not None
                try:
                    self._copy(src, fd, m)
                except (tarfile.TarError, EOFError) as e:
                    raise invalid(
                        m.name, f"is cut short or damaged ({e}); check that the archive is complete"
                    ) from e
            os.fchmod(fd, m.mode & 0o777)
            _set_mtime(fd, m.mtime)
        finally:
            os.close(fd)

    def _copy(self, src: Any, fd: int, m: tarfile.TarInfo) -> None:
        """The entry's data into ``fd``; whole pieces of zeros become holes."""
        view = memoryview(self.buf)
        left = m.size
        while left:
            want = min(COPY, left)
            n = src.readinto(view[:want])
            if not n:
                raise invalid(m.name, "is cut short: the archive ends inside its data")
            if n == COPY and self.buf == _ZEROS:
                os.lseek(fd, n, os.SEEK_CUR)
            else:
                _write_all(fd, view[:n])
            left -= n
        os.ftruncate(fd, m.size)

    def _hard_link(self, m: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        target = _parts(m.name, m.linkname, "hard link target")
        shown = _show(target)
        to_link = unsafe(
            m.name, f"is a hard link to the symlink {shown!r}; hard links may name regular files only"
        )
        if target in self.live:
            raise to_link
        self._not_through_links(m.name, target, f"is a hard link to {shown!r}, which ")
        not_there = invalid(
            m.name, f"is a hard link to {shown!r}, which is not a regular file extracted before it"
        )
        try:
            tparent = self.dirs.get(target[:-1], m.name, create=False)
            st = os.stat(target[-1], dir_fd=tparent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise not_there from None
        except PermanentError as e:
            if e.reason == Reason.UNSAFE_IMAGE:
                raise
            raise not_there from None
        if stat.S_ISLNK(st.st_mode):
            raise to_link
        if not stat.S_ISREG(st.st_mode):
            raise not_there
        if target == parts:
            return
        parent = self.dirs.get(parts[:-1], m.name, create=True)
        self._clear(parent, parts, m.name)
        os.link(target[-1], parts[-1], src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)

    # --- the end ------------------------------------------------------------------------

    def finish(self) -> None:
        """Make the symlinks and judge every link against the final tree."""
        self.dirs.close()
        for link in self.live.values():
            parent = self.dirs.get(link.parts[:-1], link.name, create=True)
            self._clear(parent, link.parts, link.name)
            os.symlink(link.target, link.parts[-1], dir_fd=parent)
            _set_mtime(link.parts[-1], link.mtime, dir_fd=parent)
        self.dirs.close()
        memo: dict[tuple[str, ...], tuple[tuple[str, ...], int]] = {}
        for link in self.links:
            where = self._resolve(link, memo)
            if self.live.get(link.parts) is link:
                memo[link.parts] = where
            self.dirs.trim()
        self.dirs.close()

    def set_saved_modes(self, root: int) -> None:
        """Directories without owner rwx get their modes last, deepest first, once moved into
        place (renaming a directory needs write access to it unless one is root)."""
        dirs = _Dirs(root)
        try:
            for parts in sorted(self.modes, key=len, reverse=True):
                os.fchmod(dirs.get(parts, _show(parts), create=False), self.modes[parts])
                dirs.trim()
        finally:
            dirs.close()

    def _probe(self, path: tuple[str, ...]) -> tuple[int, str]:
        """(st_mode, link target or '') of ``path``, whose parents are real directories; mode 0: missing."""
        parent = self.dirs.get(path[:-1], _show(path), create=False)
        try:
            st = os.stat(path[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return 0, ""
        if stat.S_ISLNK(st.st_mode):
            return st.st_mode, os.readlink(path[-1], dir_fd=parent)
        return st.st_mode, ""

    def _resolve(
        self, link: _Link, memo: dict[tuple[str, ...], tuple[tuple[str, ...], int]]
    ) -> tuple[tuple[str, ...], int]:
        """Where ``link`` leads in the final tree, following the tree's links.

        Returns the path and how many of its leading components are real directories; past a
        missing entry or a file the rest is taken as written (the kernel would stop there).
        """
        out = unsafe(
            link.name,
            f"is a symlink to {link.target!r}, which leads outside the volume once the archive's other links "
            "are followed",
        )
        todo = list(reversed(link.target.split("/"))) + list(reversed(link.parts[:-1]))
        stack: list[str] = []
        real = 0  # stack[:real] are real directories
        hops = steps = 0
        while todo:
            comp = todo.pop()
            steps += 1
            self.steps += 1
            if steps > MAX_RESOLVE_STEPS or self.steps > MAX_RESOLVE_TOTAL:
                raise _limit(
                    f"archive entry {link.name!r} is a symlink that takes more than {MAX_RESOLVE_STEPS} path "
                    f"components to follow (or the archive's links more than {MAX_RESOLVE_TOTAL})"
                )
            if comp in ("", "."):
                continue
            if comp == "..":
                if not stack:
                    raise out
                stack.pop()
                real = min(real, len(stack))
                continue
            stack.append(comp)
            if real != len(stack) - 1:
                continue
            key = tuple(stack)
            known = memo.get(key)
            if known is not None:
                hops += 1
                stack, real = list(known[0]), known[1]
            else:
                mode, target = self._probe(key)
                if stat.S_ISDIR(mode):
                    real += 1
                    continue
                if not stat.S_ISLNK(mode):
                    continue
                hops += 1
                if target.startswith("/"):
                    raise out
                stack.pop()
                todo.extend(reversed(target.split("/")))
            if hops > MAX_LINK_HOPS:
                raise unsafe(
                    link.name,
                    f"is a symlink to {link.target!r} that goes through more than {MAX_LINK_HOPS} links "
                    "(a loop?)",
                )
        return tuple(stack), real


def _check_globals(pax: Mapping[str, str]) -> None:
    if pax and (
        len(pax) > MAX_GLOBAL_PAX_KEYS or sum(len(k) + len(v) for k, v in pax.items()) > MAX_HEADER_BYTES
    ):
        raise _limit(
            f"the archive's global pax headers hold more than {MAX_GLOBAL_PAX_KEYS} keys or "
            f"{MAX_HEADER_BYTES} bytes"
        )


def _remove(dir_fd: int, name: str) -> None:
    """Remove ``name`` in ``dir_fd`` (a whole tree if a directory) without following links."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _read_all(tar_stream: _Meter, ex: _Extractor, on_progress: Callable[[int], None] | None) -> None:
    last: list[bytes] = [b""]  # the last header block tarfile looked at

    class Header(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
            last[0] = bytes(buf[: tarfile.BLOCKSIZE])
            return super().frombuf(buf, encoding, errors)

    tar_stream.ceiling = MAX_HEADER_BYTES + _SLACK
    with tarfile.open(fileobj=tar_stream, mode="r|", tarinfo=Header) as tar:
        while True:
            tar_stream.ceiling = tar.offset + MAX_HEADER_BYTES + _SLACK
            m = tar.next()
            tar_stream.ceiling = None
            if m is None:
                _check_end(last[0], tar.offset, tar_stream.after)
                return
            tar.members.clear()  # type: ignore[attr-defined]  # streaming: keep no list of every header
            _check_globals(tar.pax_headers)
            ex.add(tar, m)
            tar_stream.after = m.name[:200]
            if on_progress is not None:
                on_progress(ex.data)


def _check_end(block: bytes, offset: int, after: str) -> None:
    """tarfile ends the same way at the end-of-archive marker (a zero block), at the end of the
    data and at a damaged header; only the first is a whole archive."""
    if len(block) == tarfile.BLOCKSIZE and not any(block):
        return
    where = f"after entry {after!r}" if after else "before its first entry"
    if not block:
        what = "ends without its end-of-archive marker: it was cut short (an interrupted download or copy?)"
    elif len(block) < tarfile.BLOCKSIZE:
        what = f"ends in the middle of a header at byte {offset}: it was cut short"
    else:
        what = f"has a damaged header at byte {offset}"
    raise PermanentError(f"the archive {what} {where}; nothing was written to the volume: check the "
                         "archive with tar -tvf and send it whole", reason=Reason.INVALID_IMAGE)


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
    staging = f"{STAGING_PREFIX}-{os.getpid()}"
    dest = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove(dest, staging)
        os.mkdir(staging, 0o700, dir_fd=dest)
        try:
            root = os.open(staging, _DIR_FLAGS, dir_fd=dest)
            try:
                ex = _Extractor(root, limit)
                try:
                    _read_all(_Meter(io.BufferedReader(_FileAdapter(stream), CHUNK)), ex, on_progress)
                    ex.finish()
                except CDIError:
                    raise
                except (tarfile.TarError, EOFError) as e:
                    raise PermanentError(
                        f"the archive cannot be read: {e}; check that the source is a complete tar archive",
                        reason=Reason.INVALID_IMAGE,
                    ) from e
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise PermanentError(
                            "the volume ran out of space while extracting the archive "
                            f"({ex.entries} entries, "
                            f"{ex.data} bytes of file data); request a larger volume",
                            reason=Reason.TOO_SMALL,
                        ) from e
                    raise
                finally:
                    ex.dirs.close()
                if before_commit is not None:
                    before_commit()
                for name in os.listdir(root):
                    _remove(dest, name)
                    os.rename(name, name, src_dir_fd=root, dst_dir_fd=dest)
            finally:
                os.close(root)
            ex.set_saved_modes(dest)
            os.fsync(dest)
            return ex.data
        finally:
            _remove(dest, staging)
    finally:
        os.close(dest)
