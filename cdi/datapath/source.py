"""The source interface every importer source (and the upload receiver) implements.

A source is a sequence of bytes *as served* (possibly compressed, possibly a qcow2) that the
data path (``cdi.datapath.processor``) reads once, front to back, and where possible re-opens at
an offset to resume after a transient error. Sources that can serve random access to a remote
file (HTTP with Range) also describe how nbdkit can reach it, so that qemu-img can read only the
allocated clusters of a qcow2/vmdk/... without a scratch copy.

Errors: ``open``/``readinto`` raise ``cdi.common.errors.TemporaryError`` for what a retry may fix
(connection reset, 5xx, timeout) and ``PermanentError`` subclasses for the rest (404, 401/403,
TLS trust). Messages never include secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SourceInfo:
    size: int | None  # bytes as served, when known (Content-Length)
    supports_range: bool  # open(offset > 0) works
    content_type: str = ""  # as the server said (e.g. text/html)
    validator: str = ""  # ETag or Last-Modified, for If-Range on resume
    description: str = ""  # e.g. the final URL after redirects (no credentials in it)


@dataclass(frozen=True)
class NbdkitPlan:
    """How to expose the source to qemu-img through nbdkit (random access, no scratch).

    ``args`` follow the plugin name; secret values are passed in ``secret_files`` (path ->
    content) which the caller writes with mode 0600 and removes afterwards, and the args refer
    to them (e.g. ``password=+/path``), so that secrets never appear in a command line.
    """

    plugin: str
    args: tuple[str, ...]
    secret_files: dict[str, bytes] = field(default_factory=dict)


class Stream(Protocol):
    def readinto(self, buf: memoryview) -> int:
        """Fill up to len(buf) bytes; 0 means the end of the source."""
        ...

    def close(self) -> None: ...


class Source(Protocol):
    def info(self) -> SourceInfo:
        """Probe the source (HEAD or equivalent; may fall back to a GET's headers)."""
        ...

    def open(self, offset: int = 0) -> Stream:
        """A stream of the bytes from ``offset``; offset > 0 only if info().supports_range."""
        ...

    def nbdkit_plan(self) -> NbdkitPlan | None:
        """How nbdkit reaches this source for random access, or None if it cannot."""
        ...

    def close(self) -> None: ...
