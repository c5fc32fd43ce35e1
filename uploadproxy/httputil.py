"""HTTP/1.1 framing rules shared by the upload proxy and the upload server, and the blocking
body readers of the upload server (and the tests' clients).

Framing (RFC 9112 section 6) decides where a request's body ends. A proxy and the server behind
it that decide differently let one request hide another (request smuggling), and a lenient
reader lets an upload with no image in it through. So both sides use the same strict rules
(``body_framing``): ``Transfer-Encoding`` and ``Content-Length`` together are refused, the only
transfer coding is ``chunked`` (exactly once), ``Content-Length`` is one decimal number, a
chunk-size line is hex digits with short extensions and CRLF, and every chunk ends in CRLF.

Limits, as common servers use (nginx, Go, Apache): the request line and each header line at
most ``MAX_LINE`` (8 KiB), at most ``MAX_FIELDS`` (100) header fields and ``MAX_HEAD`` (64 KiB)
in all; the same for the trailer section of a chunked body and the headers of a multipart part.
A head over them is answered with 431 (414 for the request line) and the connection closed.

Every reader implements ``readinto(memoryview) -> int`` (0 = end of body) over a buffered
socket file, so the data path can read the body straight into its own buffers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cdi.common.errors import PermanentError, TemporaryError

MAX_LINE = 8 * 1024  # request line, each header / trailer / part header line (without CRLF)
MAX_FIELDS = 100  # header fields in one section
MAX_HEAD = 64 * 1024  # all field lines of one section
MAX_CHUNK_LINE = 1024  # a chunk-size line with its extensions and CRLF
MAX_LENGTH_DIGITS = 19  # Content-Length fits a signed 64-bit number
HEAD_TIMEOUT = 30.0  # seconds a request head may take to arrive once it started
IDLE_TIMEOUT = 60.0  # seconds a connection may wait for the first byte of a request

EMPTY_UPLOAD = "EmptyUpload"
NO_FILE_PART = "the multipart form has no part named 'file'; send the image in it (curl -F file=@disk.img)"
EMPTY_BODY_MESSAGE = ("the upload body is empty: send the image file as the request body (curl -T disk.img, "
                      "cdi image-upload --image-path disk.img); the volume is ready for another upload")
EMPTY_FORM_MESSAGE = ("the upload body is empty: the form's 'file' part has no content; send the image file in it "
                      "(curl -F file=@disk.img); the volume is ready for another upload")


class BodyError(TemporaryError):
    """The client's body ended early (the connection is not reusable)."""

    reason = "UploadInterrupted"


class RequestError(PermanentError):
    """The request itself is wrong: answer ``status`` with ``reason`` and close the connection."""

    reason = "BadRequest"
    status = 400

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        if status is not None:
            self.status = status


class HeaderTooLarge(RequestError):
    reason = "HeaderTooLarge"
    status = 431


_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but HTAB
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e\x80-\xff]+) (HTTP/[0-9]\.[0-9])\r\n")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(;[^\r\n]*)?\r\n")


def _check_line_end(line: bytes, what: str, limit: int) -> None:
    """``line`` as read, with its line end: not longer than ``limit`` bytes without CRLF, ends in CRLF."""
    if not line.endswith(b"\n"):
        if len(line) >= limit + 2:
            raise HeaderTooLarge(f"a {what} line is longer than {limit} bytes")
        raise BodyError(f"the connection closed in the middle of a {what} line")
    if len(line) > limit + 2:
        raise HeaderTooLarge(f"a {what} line is longer than {limit} bytes")
    if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
        raise RequestError(f"a {what} line ends with a bare LF or holds a bare CR; end every line with CRLF")


def parse_request_line(line: bytes) -> tuple[str, str, str]:
    """``METHOD target HTTP/1.x`` + CRLF -> (method, target, version)."""
    if len(line) > MAX_LINE + 2:
        raise RequestError(f"the request line is longer than {MAX_LINE} bytes; shorten the URL",
                           status=414, reason="RequestLineTooLong")
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise RequestError("malformed request line: send 'METHOD /path HTTP/1.1' and CRLF")
    method, target, version = (g.decode("latin-1") for g in m.groups())
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise RequestError(f"{version} is not supported; use HTTP/1.1", status=505, reason="VersionNotSupported")
    return method, target, version


class FieldSection:
    """Checks and counts the lines of one header section: a request head, the trailer of a
    chunked body or the headers of a multipart part. Feed every line as read (with its line
    end); ``add`` returns the (name, value) of a field, or None at the empty line that ends it."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self.size = 0

    def add(self, line: bytes) -> tuple[str, str] | None:
        _check_line_end(line, self.what, MAX_LINE)
        if line == b"\r\n":
            return None
        self.count += 1
        self.size += len(line)
        if self.count > MAX_FIELDS:
            raise HeaderTooLarge(f"more than {MAX_FIELDS} {self.what} fields; send fewer")
        if self.size > MAX_HEAD:
            raise HeaderTooLarge(f"the {self.what} fields are larger than {MAX_HEAD // 1024} KiB in all; send fewer")
        return parse_field_line(line[:-2], self.what)


def parse_field_line(line: bytes, what: str = "header") -> tuple[str, str]:
    """``name: value`` (without CRLF) -> (name, value); no space before the colon, no line folding,
    no control characters in the value (a bare LF there would start a header downstream)."""
    if line[:1] in (b" ", b"\t"):
        raise RequestError(f"a folded {what} line (starting with white space) is not allowed; send each field "
                           "on one line")
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.fullmatch(name):
        raise RequestError(f"malformed {what} line {line[:40]!r}: send 'Name: value'")
    value = value.strip(b" \t")
    if _CTL.search(value):
        raise RequestError(f"the {what} {name.decode()!r} holds a control character")
    return name.decode("ascii"), value.decode("latin-1")


def read_fields(f: Any, what: str) -> list[tuple[str, str]]:
    """The field lines of ``f`` up to the empty line, within the limits (blocking)."""
    section = FieldSection(what)
    fields: list[tuple[str, str]] = []
    while True:
        line: bytes = f.readline(MAX_LINE + 2)
        if not line:
            raise BodyError(f"the connection closed in the {what} section")
        field = section.add(line)
        if field is None:
            return fields
        fields.append(field)


@dataclass(frozen=True)
class Framing:
    """Where a request's body ends: ``chunked``, or ``length`` bytes (None: no body framing)."""

    chunked: bool = False
    length: int | None = None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


SINGLE_FIELDS = ("host", "authorization", "content-type", "content-range", "x-checksum", "x-cdi-content-type",
                 "x-upload-id")


def check_single(fields: Iterable[tuple[str, str]]) -> None:
    """Refuse a field that may appear once but appears again: one parser would take the first
    value and another the last (a checksum checked against the wrong value, for one)."""
    seen: set[str] = set()
    for name, _ in fields:
        low = name.lower()
        if low in SINGLE_FIELDS:
            if low in seen:
                raise RequestError(f"the request has more than one {name} header; send exactly one")
            seen.add(low)


def body_framing(fields: Iterable[tuple[str, str]], version: str = "HTTP/1.1") -> Framing:
    """The framing of a request from its header fields (RFC 9112 section 6), refusing what two
    HTTP implementations could read differently."""
    te: list[str] = []
    cl: list[str] = []
    for name, value in fields:
        low = name.lower()
        if low == "transfer-encoding":
            te.append(value)
        elif low == "content-length":
            cl.append(value)
    if te and cl:
        raise RequestError("the request has both Transfer-Encoding and Content-Length; send only one (a request "
                           "with both is refused: a proxy and a server could disagree on where its body ends, "
                           "which smuggles requests)")
    if te:
        if version == "HTTP/1.0":
            raise RequestError("Transfer-Encoding needs HTTP/1.1; send Content-Length instead")
        codings = [c.strip().lower() for v in te for c in v.split(",")]
        if codings == ["chunked"]:
            return Framing(chunked=True)
        unknown = sorted({c for c in codings if c != "chunked"})
        if unknown and all(unknown):
            raise RequestError(f"Transfer-Encoding {', '.join(unknown)} is not supported; send the image as is "
                               "with Content-Length, or with Transfer-Encoding: chunked",
                               status=501, reason="NotImplemented")
        raise RequestError(f"Transfer-Encoding {', '.join(te)!r} is not valid; send exactly "
                           "'Transfer-Encoding: chunked' or Content-Length")
    if cl:
        if len(cl) > 1 or "," in cl[0]:
            raise RequestError("the request has more than one Content-Length; send exactly one")
        value = cl[0]
        if not re.fullmatch(rf"[0-9]{{1,{MAX_LENGTH_DIGITS}}}", value):
            raise RequestError(f"invalid Content-Length {value[:30]!r}: send the body's size in bytes as a decimal "
                               "number")
        return Framing(length=int(value))
    return Framing()


def parse_chunk_size(line: bytes) -> int:
    """A chunk-size line as read (hex size, optional short extensions, CRLF) -> the size."""
    if not line.endswith(b"\n") and len(line) < MAX_CHUNK_LINE:
        raise BodyError("the connection closed in the middle of a chunk-size line")
    if len(line) > MAX_CHUNK_LINE or not line.endswith(b"\n"):
        raise RequestError(f"a chunk-size line is longer than {MAX_CHUNK_LINE} bytes (chunk extensions are limited)")
    m = _CHUNK_LINE.fullmatch(line)
    if m is None or (m.group(2) and _CTL.search(m.group(2))):
        raise RequestError(f"malformed chunk-size line {line[:20]!r}: send the size in hex and CRLF")
    return int(m.group(1), 16)


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
    """A ``Transfer-Encoding: chunked`` body, strictly framed (``parse_chunk_size``, CRLF after
    every chunk, a trailer section within the header limits); malformed -> RequestError."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.left = 0
        self.done = False

    def readinto(self, buf: memoryview) -> int:
        if self.done:
            return 0
        if self.left == 0:
            size = parse_chunk_size(self.f.readline(MAX_CHUNK_LINE))
            if size == 0:
                read_fields(self.f, "trailer")
                self.done = True
                return 0
            self.left = size
        n = _read1(self.f, buf[: min(len(buf), self.left)])
        if not n:
            raise BodyError("the client closed the connection in the middle of a chunk")
        self.left -= n
        if self.left == 0:
            end = self.f.read(2)
            if len(end) < 2 and end in (b"", b"\r"):
                raise BodyError("the client closed the connection after a chunk")
            if end != b"\r\n":
                raise RequestError("malformed chunked body: a chunk is not followed by CRLF (its size does not "
                                   "match its data)")
        return int(n)


class Prefixed:
    """``first`` (read ahead to see that the body is not empty), then the rest of ``inner``."""

    def __init__(self, first: bytes, inner: Any) -> None:
        self.first = memoryview(first)
        self.inner = inner

    def readinto(self, buf: memoryview) -> int:
        if self.first:
            n = min(len(buf), len(self.first))
            buf[:n] = self.first[:n]
            self.first = self.first[n:]
            return n
        return int(self.inner.readinto(buf))


def read_ahead(reader: Any, size: int = 64 << 10) -> tuple[bytes, Prefixed]:
    """The first bytes of a body (b"" when it is empty) and a reader that still yields them."""
    buf = bytearray(size)
    n = reader.readinto(memoryview(buf))
    first = bytes(buf[:n])
    return first, Prefixed(first, reader)


class MultipartFileReader:
    """The content of the part named ``file`` of a multipart/form-data body (CDI's form upload).

    Streams: keeps only a delimiter-sized tail in memory. Part headers obey the header limits.
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

    def _part_head(self) -> bytes:
        """The header lines of the part that starts at the front of ``buf`` (after its boundary)."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buf) > MAX_HEAD + 2 * MAX_LINE:
                raise HeaderTooLarge(f"the headers of a form part are larger than {MAX_HEAD // 1024} KiB; send fewer")
            if not self._fill():
                raise RequestError("multipart body ended inside part headers", reason="InvalidForm")
        head = bytes(self.buf[: end + 2])
        del self.buf[: end + 4]
        # The boundary line's own end (after optional padding), then the part's field lines.
        pad, _, lines = head.partition(b"\r\n")
        if pad.strip(b" \t"):
            raise RequestError("malformed multipart boundary line: a boundary must be followed by CRLF (send the "
                               "form as curl -F file=@disk.img does)", reason="InvalidForm")
        section = FieldSection("form part header")
        for line in lines.split(b"\r\n")[:-1]:
            section.add(line + b"\r\n")
        return lines

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
                    raise RequestError(NO_FILE_PART, reason="InvalidForm")
            del self.buf[: i + len(self.delim)]
            while len(self.buf) < 2 and self._fill():
                pass
            if self.buf.startswith(b"--"):
                raise RequestError(NO_FILE_PART, reason="InvalidForm")
            head = self._part_head()
            m = re.search(rb'(?:^|[;\s])name="([^"]*)"', head, re.I)
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
                raise RequestError("multipart body ended without its closing boundary", reason="InvalidForm")


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
