"""A misbehaving HTTP server for error-path tests (after CDI's ``cdi-func-test-bad-webserver``).

``BadHTTPServer(root_dir)`` serves the files of ``root_dir`` on a free 127.0.0.1 port, from a
thread. The first path segments choose a behaviour; the rest names the file under the root::

    /<file>                      well-behaved: Range (206/416), If-Range, ETag, Last-Modified
    /drop/<n>/[<k>/]<file>       the first k GETs (default 1) of this URL send n body bytes of
                                 the announced length and close; later GETs behave (with Range)
    /reset/<n>/[<k>/]<file>      like drop, but the connection is reset (RST) instead of closed
    /flaky500/<k>/<file>         500 for the first k requests (HEAD included), then normal
    /html/<anything>             200 text/html with a small HTML page (what a login page looks like)
    /trickle/<file>              16 KiB every 20 ms
    /stall/<n>/<file>            n body bytes, then nothing until the client gives up
    /nolength/<file>             no Content-Length, no Range, body ends when the connection closes
    /norange/<file>              ignores Range, no Accept-Ranges
    /nohead/<file>               HEAD -> 405, GET normal
    /hanghead/<file>             HEAD never answers, GET normal
    /changing/<file>             a new ETag on every request (If-Range never matches)
    /redirect/<n>/<rest>         302 to /redirect/<n-1>/<rest>, /redirect/0/<rest> -> /<rest>
    /404/<anything>, /401/<anything> (with WWW-Authenticate), /status/<code>/<anything>

Counters are per full URL path: ``count(path, method=None)``; ``requests`` lists every request;
``reset()`` clears both (the drop/flaky counters too).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in</body></html>\n"
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str  # "" if none
    headers: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # the client went away: nothing to answer
            super().handle()

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    # -- dispatch --

    def _dispatch(self, head: bool) -> None:
        bad = self.server.bad
        path = self.path.split("?", 1)[0]
        n = bad._record(self.command, path, self.headers.get("Range", ""), dict(self.headers.items()))
        gets = bad.count(path, "GET")
        seg = [s for s in path.split("/") if s]
        kind = seg[0] if seg else ""

        def ints(count: int, optional: int = 0) -> tuple[list[int], list[str]]:
            """Take ``count`` integer segments, then up to ``optional`` more if followed by a file."""
            rest = seg[1:]
            values = [int(rest.pop(0)) for _ in range(count)]
            for _ in range(optional):
                if len(rest) > 1 and rest[0].isdigit():
                    values.append(int(rest.pop(0)))
            return values, rest

        try:
            if kind == "drop" or kind == "reset":
                (after, *times), rest = ints(1, 1)
                if gets <= (times[0] if times else 1) and not head:
                    return self._file(rest, head, drop_after=after, reset=kind == "reset")
                return self._file(rest, head)
            if kind == "flaky500":
                (k,), rest = ints(1)
                if n <= k:
                    return self._status(500, head)
                return self._file(rest, head)
            if kind == "html":
                return self._send_body(200, HTML_PAGE, "text/html; charset=utf-8", head)
            if kind == "trickle":
                return self._file(seg[1:], head, trickle=True)
            if kind == "stall":
                (after,), rest = ints(1)
                return self._file(rest, head, stall_after=after)
            if kind == "nolength":
                return self._file(seg[1:], head, ranges=False, length=False)
            if kind == "norange":
                return self._file(seg[1:], head, ranges=False)
            if kind == "nohead":
                if head:
                    return self._status(405, head, extra={"Allow": "GET"})
                return self._file(seg[1:], head)
            if kind == "hanghead":
                if head:
                    bad._stop.wait(120)
                    self.close_connection = True
                    return None
                return self._file(seg[1:], head)
            if kind == "changing":
                return self._file(seg[1:], head, etag=f'"v{n}"')
            if kind == "redirect":
                (hops,), rest = ints(1)
                target = "/" + "/".join(rest) if hops <= 0 else f"/redirect/{hops - 1}/" + "/".join(rest)
                return self._status(302, head, extra={"Location": target})
            if kind == "404":
                return self._status(404, head)
            if kind == "401":
                return self._status(401, head, extra={"WWW-Authenticate": 'Basic realm="bad"'})
            if kind == "status":
                (code,), _rest = ints(1)
                return self._status(code, head)
            return self._file(seg, head)
        except (ValueError, IndexError):
            return self._status(400, head)

    # -- answers --

    def _status(self, code: int, head: bool, extra: dict[str, str] | None = None) -> None:
        body = f"{code} {self.responses.get(code, ('',))[0]}\n".encode()
        self._send_body(code, body, "text/plain", head, extra)

    def _send_body(self, code: int, body: bytes, ctype: str, head: bool,
                   extra: dict[str, str] | None = None) -> None:  # fmt: skip
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _file(
        self,
        rest: list[str],
        head: bool,
        *,
        ranges: bool = True,
        length: bool = True,
        drop_after: int | None = None,
        reset: bool = False,
        stall_after: int | None = None,
        trickle: bool = False,
        etag: str | None = None,
    ) -> None:
        root = self.server.bad.root
        path = os.path.normpath(os.path.join(root, *rest))
        if not rest or not path.startswith(root + os.sep) or not os.path.isfile(path):
            return self._status(404, head)
        st = os.stat(path)
        size = st.st_size
        etag = etag or '"' + hashlib.sha1(f"{st.st_mtime_ns}-{size}".encode()).hexdigest()[:16] + '"'
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        start, end, code = 0, size, 200
        want = self.headers.get("Range", "")
        if_range = self.headers.get("If-Range")
        if ranges and want and (if_range is None or if_range in (etag, last_modified)):
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", want.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                else:
                    start = max(0, size - int(m.group(2)))
                if start >= size or start >= end:
                    return self._status(416, head, extra={"Content-Range": f"bytes */{size}"})
                code = 206
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        if length:
            self.send_header("Content-Length", str(end - start))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        if ranges:
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", last_modified)
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if head:
            return None
        limit = end
        if drop_after is not None:
            limit = min(end, start + drop_after)
        elif stall_after is not None:
            limit = min(end, start + stall_after)
        with open(path, "rb") as f:
            f.seek(start)
            pos = start
            step = 16 * 1024 if trickle else CHUNK
            while pos < limit:
                data = f.read(min(step, limit - pos))
                if not data:
                    break
                self.wfile.write(data)
                pos += len(data)
                if trickle:
                    self.wfile.flush()
                    if self.server.bad._stop.wait(0.02):
                        break
        self.wfile.flush()
        if drop_after is not None and limit < end:
            self._drop(reset)
        elif stall_after is not None and limit < end:
            self.server.bad._stop.wait(120)
            self.close_connection = True
        return None

    def _drop(self, reset: bool) -> None:
        self.close_connection = True
        if reset:  # SO_LINGER 0: close() sends RST
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    bad: BadHTTPServer


class BadHTTPServer:
    """``with BadHTTPServer(root_dir) as bad: bad.url + "/drop/1000/disk.img"``."""

    def __init__(self, root_dir: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root_dir))
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self.requests: list[Request] = []
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"

    # -- counters --

    def _record(self, method: str, path: str, rng: str, headers: dict[str, str]) -> int:
        """Record a request; returns how many requests (any method) this path has had."""
        with self._lock:
            self.requests.append(Request(method, path, rng, headers))
            self._counts[(method, path)] = self._counts.get((method, path), 0) + 1
            return sum(v for (m, p), v in self._counts.items() if p == path)

    def count(self, path: str, method: str | None = None) -> int:
        """Requests seen for the URL path ``path`` (e.g. "/drop/100/disk.img"), per method or all."""
        path = "/" + path.split("://", 1)[-1].split("/", 1)[-1] if "://" in path else path
        with self._lock:
            return sum(v for (m, p), v in self._counts.items() if p == path and method in (None, m))

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self.requests.clear()

    # -- lifecycle --

    def start(self) -> BadHTTPServer:
        os.makedirs(self.root, exist_ok=True)
        self._stop.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.bad = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="bad-http", daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        time.sleep(0)

    def __enter__(self) -> BadHTTPServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
