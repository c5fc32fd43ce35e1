"""Blocking HTTP body readers shared by the upload server (and the tests' clients).

Every reader implements ``readinto(memoryview) -> int`` (0 = end of body) over a buffered
socket file, so the data path can read the body straight into its own buffers.
"""

from __future__ import annotations

import re
from typing import Any

from cdi.common.errors import PermanentError, TemporaryError

MAX_LINE = 65536


class BodyError(TemporaryError):
    """The client's body ended early or was malformed (the connection is not reusable)."""

    reason = "UploadInterrupted"


def _read1(f: Any, buf: memoryview) -> int:
    """At most one read from the socket: what has arrived, never waiting to fill ``buf``."""
    r = getattr(f, "readinto1", None)
    return int(r(buf) if r is not None else f.readinto(buf))


class LengthReader:
    """Exactly ``length`` bytes of ``f``; short read -> BodyError."""

    def __init__(self, f: Any, length: int) -> None:
        self.f = f
        self.remaining = length

    def readinto(self, buf: memoryview) -> int:
        if self.remaining <= 0:
            return 0
        n = _read1(self.f, buf[: min(len(buf), self.remaining)])
        if not n:
            raise BodyError(f"the client closed the connection with {self.remaining} bytes of the body missing")
        self.remaining -= n
        return int(n)


class ChunkedReader:
    """A ``Transfer-Encoding: chunked`` body."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.left = 0
        self.done = False

    def _line(self) -> bytes:
        line: bytes = self.f.readline(MAX_LINE)
        if not line:
            raise BodyError("the client closed the connection in the middle of a chunked body")
        return line

    def readinto(self, buf: memoryview) -> int:
        if self.done:
            return 0
        if self.left == 0:
            line = self._line().split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                raise BodyError(f"malformed chunk size {line[:20]!r}") from None
            if size == 0:
                while self._line() not in (b"\r\n", b"\n"):  # trailers
                    pass
                self.done = True
                return 0
            self.left = size
        n = _read1(self.f, buf[: min(len(buf), self.left)])
        if not n:
            raise BodyError("the client closed the connection in the middle of a chunk")
        self.left -= n
        if self.left == 0 and self._line().strip():
            raise BodyError("malformed chunked body (no CRLF after a chunk)")
        return int(n)


class MultipartFileReader:
    """The content of the part named ``file`` of a multipart/form-data body (CDI's form upload).

    Streams: keeps only a delimiter-sized tail in memory.
    """

    def __init__(self, inner: Any, boundary: bytes, field: bytes = b"file") -> None:
        self.inner = inner
        self.delim = b"\r\n--" + boundary
        self.field = field
        self.buf = bytearray()
        self.eof = False
        self.in_file = False
        self.done = False
        self._scratch = bytearray(256 << 10)

    def _fill(self) -> bool:
        if self.eof:
            return False
        n = self.inner.readinto(memoryview(self._scratch))
        if n == 0:
            self.eof = True
            return False
        self.buf += self._scratch[:n]
        return True

    def _start(self) -> None:
        # Prefix the body with CRLF so that the first boundary looks like every other delimiter.
        self.buf[:0] = b"\r\n"
        while True:
            while True:
                i = self.buf.find(self.delim)
                if i >= 0:
                    break
                keep = len(self.delim)
                if len(self.buf) > keep:
                    del self.buf[: len(self.buf) - keep]  # content of a part we skip
                if not self._fill():
                    raise PermanentError("multipart form has no part named 'file'", reason="InvalidForm")
            del self.buf[: i + len(self.delim)]
            while len(self.buf) < 2 and self._fill():
                pass
            if self.buf.startswith(b"--"):
                raise PermanentError("multipart form has no part named 'file'", reason="InvalidForm")
            while b"\r\n\r\n" not in self.buf:
                if not self._fill():
                    raise PermanentError("multipart body ended inside part headers", reason="InvalidForm")
                if len(self.buf) > MAX_LINE * 4:
                    raise PermanentError("multipart part headers are too long", reason="InvalidForm")
            if self.buf.startswith(b"--"):
                raise PermanentError("multipart form has no part named 'file'", reason="InvalidForm")
            head, _, _ = bytes(self.buf).partition(b"\r\n\r\n")
            del self.buf[: len(head) + 4]
            m = re.search(rb'name="([^"]*)"', head, re.I)
            if m and m.group(1) == self.field:
                self.in_file = True
                return  # the file's content starts right here

    def readinto(self, out: memoryview) -> int:
        if self.done:
            return 0
        if not self.in_file:
            self._start()
        while True:
            i = self.buf.find(self.delim)
            if i == 0:
                self.done = True
                return 0
            avail = i if i > 0 else len(self.buf) - len(self.delim) + 1
            if avail > 0 and (i > 0 or avail >= len(out) or self.eof):
                n = min(avail, len(out))
                out[:n] = self.buf[:n]
                del self.buf[:n]
                return n
            if not self._fill():
                raise PermanentError("multipart body ended without its closing boundary", reason="InvalidForm")


def boundary_of(content_type: str) -> bytes | None:
    m = re.search(r'boundary="?([^";]+)"?', content_type or "", re.I)
    return m.group(1).encode() if m else None


CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$")


def parse_content_range(value: str) -> tuple[int, int, int]:
    """``bytes a-b/n`` -> (a, b, n); ValueError otherwise."""
    m = CONTENT_RANGE.match(value or "")
    if not m:
        raise ValueError(f"Content-Range {value!r} is not 'bytes <first>-<last>/<length>'")
    a, b, n = (int(x) for x in m.groups())
    if a > b or b >= n:
        raise ValueError(f"Content-Range {value!r} is not a valid range")
    return a, b, n
