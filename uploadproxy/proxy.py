"""The upload proxy (``python -m uploadproxy.proxy --data-dir D``): an asyncio HTTPS server.

CDI's endpoints (``/v1beta1/upload``, ``/v1alpha1/upload``, ``/v1beta1/upload-async``,
``/v1beta1/upload-form``, ``/v1beta1/upload-form-async``, their v1alpha1 twins, HEAD on upload
paths, ``GET /healthz``). Every upload request carries ``Authorization: Bearer <token>``; the
token (``uploadproxy.tokens``) names the namespace and volume, so a token for volume A can only
ever reach volume A. The proxy then waits (at most ``readyWaitSeconds``, 10 s) until the volume's
upload server is ready (PVC annotations written by the controller: ``storage.upload.target``,
``storage.pod.ready=true``, ``embedded.cdi.kubevirt.io/upload-server``) and streams the body
through: one bounded buffer per direction, ``drain()`` after every write, so a slow volume
back-pressures the client over TCP and the proxy's memory does not grow with the image.

Requests are read strictly (``uploadproxy.httputil``, the same rules as the upload server):
one framing only (``Transfer-Encoding: chunked`` or one ``Content-Length``), header limits of
8 KiB a line, 100 fields, 64 KiB in all, a head complete within 30 s of its first byte and an
idle connection closed after 60 s. A chunked body is parsed here and forwarded re-framed; one
that is malformed or empty never reaches its end at the upload server (the proxy cuts that
connection), so no upload run can complete on it.

Status codes: 400 malformed/missing Authorization, wrong token operation, malformed framing
(``BadRequest``) or an upload with no image bytes (``EmptyUpload``, before a run starts); 401
bad, expired, unsigned token; 404 unknown path, or no DataVolume or PVC of the token's name; 408
head too slow; 409 volume already uploaded; 411 no body framing; 414 request line too long; 431
header fields too large (``HeaderTooLarge``; chunked trailers too); 501 a transfer coding other
than chunked; 503 upload server not ready in time (with ``Retry-After``); 502 the upload server
went away mid-request; the upload server's own answers (200, 400 too small / checksum / invalid
image, 416 wrong resume offset, 503 busy) are passed through. ``X-Cdi-Reason`` names the reason
on every error; every error closes the connection (after draining what the client still sends).

Embedded mode: one proxy per data dir, flock ``<data dir>/upload/proxy.lock``, pid in
``proxy.pid``, URL and CA in ``proxy.json``. Started by the controller (``cdi.controller.upload``)
or on demand by ``cdi image-upload``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import ssl
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cdi.api import upload as api
from cdi.api.contract import read_worker_file
from cdi.api.naming import worker_held_secret
from cdi.common import documents
from uploadproxy import httputil
from uploadproxy.tokens import KeyRing, TokenError, bearer

log = logging.getLogger("uploadproxy.proxy")

PVC = "PersistentVolumeClaim"
UPLOAD_TARGET = "cdi.kubevirt.io/storage.upload.target"
POD_PHASE = "cdi.kubevirt.io/storage.pod.phase"
CHUNK = 256 << 10  # bounded buffers: the proxy's memory does not grow with the image
RING = 8  # body buffers per upload (more than the 4 * CHUNK backpressure mark keeps in flight)
MAX_HEADER = 64 * 1024
STATE_FILE = "proxy.json"


class HTTPError(Exception):
    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}


REASONS = {200: "OK", 100: "Continue", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
           413: "Payload Too Large", 414: "URI Too Long", 416: "Range Not Satisfiable",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
           505: "HTTP Version Not Supported"}


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-cased names
    framing: httputil.Framing = field(default_factory=httputil.Framing)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request's head, within ``httputil``'s limits and framing rules. None when the
    client closed the connection, or left it idle for ``IDLE_TIMEOUT``, between requests; a
    head that started must be complete within ``HEAD_TIMEOUT`` (408: a client trickling its
    head does not hold a connection for long)."""
    try:
        first = await asyncio.wait_for(reader.readexactly(1), httputil.IDLE_TIMEOUT)
    except (asyncio.IncompleteReadError, TimeoutError):
        return None
    try:
        return await asyncio.wait_for(_read_head(reader, first), httputil.HEAD_TIMEOUT)
    except TimeoutError:
        raise HTTPError(408, "RequestTimeout", f"the request head did not arrive within "
                        f"{httputil.HEAD_TIMEOUT:.0f}s; send it at once") from None
    except asyncio.IncompleteReadError:
        raise HTTPError(400, "BadRequest", "the connection closed in the middle of the request head") from None
    except httputil.RequestError as e:
        raise HTTPError(e.status, e.reason, e.message) from None


async def _read_line(reader: asyncio.StreamReader, too_long: httputil.RequestError) -> bytes:
    """One line with its end; longer than the reader's buffer limit (1 MiB) -> ``too_long``
    (shorter lines are measured against the limits by the caller)."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise too_long from None


async def _read_head(reader: asyncio.StreamReader, first: bytes) -> Request:
    long_line = httputil.RequestError(f"the request line is longer than {httputil.MAX_LINE} bytes; shorten the URL",
                                      status=414, reason="RequestLineTooLong")
    line = first if first == b"\n" else first + await _read_line(reader, long_line)
    for _ in range(4):  # empty lines before a request line are allowed (RFC 9112 section 2.2)
        if line not in (b"\r\n", b"\n"):
            break
        line = await _read_line(reader, long_line)
    method, target, version = httputil.parse_request_line(line)
    section = httputil.FieldSection("header")
    long_field = httputil.HeaderTooLarge(f"a header line is longer than {httputil.MAX_LINE} bytes")
    fields = []
    while (f := section.add(await _read_line(reader, long_field))) is not None:
        fields.append(f)
    httputil.check_single(fields)
    framing = httputil.body_framing(fields, version)
    return Request(method.upper(), target, version, {k.lower(): v for k, v in fields}, framing)


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The upload server's response head (the server is ours; its answers are not client input)."""
    lines = head.decode("latin-1").split("\r\n")
    first = lines[0]
    raw = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HTTPError(400, "BadRequest", f"malformed header line {line[:40]!r}")
        raw.append((name.strip(), value.strip()))
    return first, raw


def response_bytes(status: int, text: str = "", reason: str = "", headers: dict[str, str] | None = None,
                   close: bool = False, head_only: bool = False) -> bytes:
    body = (text + "\n").encode() if text else b""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", "Server: pycdi-uploadproxy",
             f"Content-Length: {len(body)}", "Content-Type: text/plain; charset=utf-8",
             "Access-Control-Allow-Origin: *"]
    if reason:
        lines.append(f"{api.HDR_REASON}: {reason}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


class Proxy:
    def __init__(self, data_dir: str, config: api.UploadConfig, store: Any = None) -> None:
        self.data_dir = data_dir
        self.config = config
        self.keys = KeyRing.for_data_dir(data_dir)
        self.keys.ensure()
        self._store = store
        self.active = 0
        self.bytes_proxied = 0
        self.stopping = False
        self.connections: set[asyncio.Task[Any]] = set()  # the tasks serving client connections

    # --- target lookup --------------------------------------------------------------------------

    @property
    def store(self) -> Any:
        if self._store is None:
            from cdi.store.sqlite import Store

            self._store = Store(os.path.join(self.data_dir, "state.db"))
        return self._store

    def _lookup(self, ns: str, name: str) -> tuple[str, str, bytes] | HTTPError:
        """(kind, address, secret) when ready, else the error to give if it stays so."""
        pvc = self.store.get(PVC, ns, name)
        if pvc is None:
            if self.store.get("DataVolume", ns, name) is None:  # nothing will make the claim appear
                return HTTPError(404, "NotFound", f"there is no DataVolume or PVC {ns}/{name} to upload into; create "
                                 "it first (cdi image-upload creates one, or cdi apply a DataVolume with "
                                 "source: {upload: {}})")
            return HTTPError(503, "NotFound", f"PVC {ns}/{name} of the DataVolume does not exist yet",
                             {"Retry-After": "2"})
        a = pvc["metadata"].get("annotations") or {}
        if UPLOAD_TARGET not in a:
            return HTTPError(503, "NotUploadTarget",
                             f"PVC {ns}/{name} is not an upload target (no {UPLOAD_TARGET} annotation)")
        if a.get(POD_PHASE) == "Succeeded":
            return HTTPError(409, "AlreadyUploaded", f"PVC {ns}/{name} already finished uploading")
        if a.get(api.POD_READY) != "true" or not a.get(api.UPLOAD_SERVER):
            return HTTPError(503, "UploadServerNotReady",
                             f"the upload server for {ns}/{name} is not ready; try again in a few seconds",
                             {"Retry-After": "2"})
        addr = a[api.UPLOAD_SERVER]
        held = worker_held_secret(self.data_dir, api.worker_name(ns, name), api.AUTH_FILE)
        secret = (read_worker_file(held, 256) or "").strip().encode()
        return ("unix" if addr.startswith("unix:") else "tcp", addr, secret)

    async def connect_target(self, ns: str, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        deadline = time.monotonic() + self.config.ready_wait
        last: HTTPError | None = None
        while True:
            found = await asyncio.to_thread(self._lookup, ns, name)
            if isinstance(found, HTTPError):
                last = found
                if found.status in (404, 409):  # waiting cannot change these
                    raise found
            else:
                kind, addr, secret = found
                try:
                    if kind == "unix":
                        r, w = await _open_worker_socket(addr[5:])
                    else:
                        host, _, port = addr.rpartition(":")
                        r, w = await asyncio.open_connection(host, int(port), limit=4 * CHUNK)
                    return r, w, secret
                except OSError as e:
                    last = HTTPError(503, "UploadServerNotReady",
                                     f"cannot reach the upload server for {ns}/{name}: {e}", {"Retry-After": "2"})
            if time.monotonic() >= deadline:
                assert last is not None
                raise last
            await asyncio.sleep(0.5)

    # --- connections ----------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        self.active += 1
        try:
            while True:
                try:
                    keep = await self._one(reader, writer)
                except HTTPError as e:
                    with contextlib.suppress(Exception):
                        writer.write(response_bytes(e.status, e.message, e.reason, e.headers, close=True))
                        await writer.drain()
                    # The client may still be sending (a long head, a body): read a little so
                    # that closing does not reset the connection before it reads the answer.
                    await _linger(reader, writer)
                    keep = False
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError) as e:
            log.info("client connection ended: %s", e)
        except Exception:
            log.exception("request failed")
        except asyncio.CancelledError:
            # Only shutdown() cancels a connection; ending normally keeps asyncio from logging
            # the cancellation as an error of the connection callback.
            log.debug("connection closed: the proxy is stopping")
        finally:
            self.active -= 1
            if task is not None:
                self.connections.discard(task)
            # A cancel during the close is shutdown() too: stop waiting for the client's TLS goodbye.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                if not self.stopping:
                    writer.close()
                    await asyncio.wait_for(writer.wait_closed(), 2)
            if self.stopping:
                writer.transport.abort()

    async def shutdown(self) -> None:
        """Close every client connection now (an interrupted upload can be resumed later)."""
        self.stopping = True
        tasks = list(self.connections)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        req = await read_request(reader)
        if req is None:
            return False
        path = req.path
        wants_close = req.headers.get("connection", "").lower() == "close" or req.version == "HTTP/1.0"
        if req.method == "OPTIONS":
            writer.write(response_bytes(200, headers={
                "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Range, X-Checksum"}))
            await writer.drain()
            return not wants_close and not req.framing.has_body
        if path == api.HEALTH_PATH and req.method in ("GET", "HEAD"):
            writer.write(response_bytes(200, "OK", head_only=req.method == "HEAD"))
            await writer.drain()
            return not wants_close and not req.framing.has_body
        if path not in api.UPLOAD_PATHS:
            raise HTTPError(404, "NotFound", f"no such endpoint {path}; upload to /v1beta1/upload or "
                            "/v1beta1/upload-async")
        if req.method not in ("POST", "PUT", "HEAD"):
            raise HTTPError(405, "MethodNotAllowed", f"{req.method} is not allowed on {path}; use POST")
        try:
            claims = self.keys.verify(bearer(req.headers.get("authorization")))
        except TokenError as e:
            log.info("refused %s %s: %s (%s)", req.method, path, e.reason, e.message)
            raise HTTPError(e.status, e.reason, e.message) from None
        if req.method != "HEAD":
            self._check_body(req)
        sr, sw, secret = await self.connect_target(claims.namespace, claims.name)
        try:
            return await self._forward(req, reader, writer, sr, sw, secret, claims.namespace, claims.name,
                                       wants_close)
        finally:
            with contextlib.suppress(Exception):
                sw.close()

    @staticmethod
    def _check_body(req: Request) -> None:
        """An upload has a body of known framing with image bytes in it (chunked: _pump checks)."""
        if not req.framing.chunked and req.framing.length is None:
            raise HTTPError(411, "LengthRequired", "send Content-Length (curl -T does) or Transfer-Encoding: chunked")
        if req.framing.length == 0:
            form = req.path in api.FORM_SYNC_PATHS or req.path in api.FORM_ASYNC_PATHS
            raise HTTPError(400, httputil.EMPTY_UPLOAD,
                            httputil.EMPTY_FORM_MESSAGE if form else httputil.EMPTY_BODY_MESSAGE)

    async def _forward(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       sr: asyncio.StreamReader, sw: asyncio.StreamWriter, secret: bytes, ns: str, name: str,
                       wants_close: bool) -> bool:
        chunked = req.framing.chunked and req.method != "HEAD"
        length = None if req.method == "HEAD" else req.framing.length
        lines = [f"{req.method} {req.target} HTTP/1.1", "Host: upload-server"]
        for k in ("content-type", "content-range", "x-checksum", "x-cdi-content-type", "x-upload-id"):
            if k in req.headers:
                lines.append(f"{k}: {req.headers[k]}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif length is not None:
            lines.append(f"Content-Length: {length}")
        lines.append(f"{api.HDR_PROXY_AUTH}: {secret.decode()}")
        lines.append(f"X-Cdi-Target: {ns}/{name}")
        lines.append("Connection: close")
        sw.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await sw.drain()
        if req.method == "HEAD":
            status, headers, _ = await self._read_response(sr, head=True)
            writer.write(response_bytes(status, "", headers.pop(api.HDR_REASON.lower(), ""),
                                        _pass_headers(headers), head_only=True))
            await writer.drain()
            return not wants_close and not req.framing.has_body
        if req.headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()

        if not chunked and length and hasattr(writer.transport, "set_protocol"):
            pump = asyncio.ensure_future(self._pump_fast(reader, writer, sw, length))
        else:
            pump = asyncio.ensure_future(self._pump(reader, sw, length, chunked))
        resp = asyncio.ensure_future(self._read_response(sr))
        try:
            done, _ = await asyncio.wait({pump, resp}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            for t in (pump, resp):
                t.cancel()
            await asyncio.gather(pump, resp, return_exceptions=True)
            raise
        body_complete = False
        if pump in done:
            exc = pump.exception()
            if exc is not None:
                resp.cancel()
                if isinstance(exc, _ClientGone):
                    log.info("client went away during the upload to %s/%s: %s", ns, name, exc)
                    sw.close()  # the upload server sees the body end early and waits for a resume
                    raise ConnectionResetError(str(exc))
                if isinstance(exc, httputil.RequestError):  # a malformed or empty chunked body
                    log.info("refused the upload to %s/%s: %s", ns, name, exc.message)
                    sw.close()  # the upload server sees the body break off: no run ends with it
                    raise HTTPError(exc.status, exc.reason, exc.message)
                if isinstance(exc, _ServerGone):
                    raise HTTPError(502, "UploadServerGone",
                                    f"the upload server closed the connection during the upload: {exc}; "
                                    "HEAD the upload path for Upload-Offset and resume")
                raise exc
            body_complete = True
            try:
                status, headers, body = await resp
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                raise HTTPError(502, "UploadServerGone",
                                f"the upload server went away before answering: {e}; see the DataVolume "
                                "status, or HEAD the upload path and resume") from None
        else:
            # The server answered before the body was done (an early error): pass it on, stop.
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
            try:
                status, headers, body = resp.result()
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                raise HTTPError(502, "UploadServerGone", f"the upload server went away: {e}") from None
        reason = headers.pop(api.HDR_REASON.lower(), "")
        keep = body_complete and not wants_close
        writer.write(response_bytes(status, body.decode("utf-8", "replace").rstrip("\n"), reason,
                                    _pass_headers(headers), close=not keep))
        await writer.drain()
        if not body_complete:
            await _linger(reader, writer)
        return keep

    async def _pump_fast(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         sw: asyncio.StreamWriter, length: int) -> None:
        """Content-Length bodies: TLS decrypts straight into one buffer that goes to the server
        (a BufferedProtocol on the client transport), no per-chunk copies through a StreamReader.
        Backpressure: the client transport stops reading while the server side is over its
        high-water mark."""
        loop = asyncio.get_running_loop()
        ct = writer.transport
        pump = _BodyPump(ct, sw, length, loop.create_future(), self)
        old = ct.get_protocol()
        # Synchronously (no await until the switch is done): from now on the pump gets the data;
        # what the StreamReader already holds of the body goes first.
        ct.set_protocol(pump)
        pre = reader._buffer  # type: ignore[attr-defined]
        if pre:
            take = bytes(pre[:length])
            del pre[: len(take)]
            pump.feed(take)
        if not pump.done.done() and not pump.waiting:
            ct.resume_reading()  # type: ignore[attr-defined]
        try:
            await pump.done
        finally:
            if not ct.is_closing():
                ct.pause_reading()  # type: ignore[attr-defined]
            ct.set_protocol(old)
            pump.release()
            helpers = [t for t in pump.tasks if not t.done()]
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, sw: asyncio.StreamWriter, length: int | None,
                    chunked: bool) -> None:
        async def send(data: bytes) -> None:
            try:
                sw.write(data)
                await sw.drain()
            except (ConnectionError, OSError) as e:
                raise _ServerGone(str(e) or type(e).__name__) from None

        async def recv(n: int) -> bytes:
            try:
                data = await reader.read(n)
            except (ConnectionError, ssl.SSLError, OSError) as e:
                raise _ClientGone(str(e) or type(e).__name__) from None
            if not data:
                raise _ClientGone("the client closed the connection before the end of the body")
            return data

        if not chunked:
            left = length or 0
            while left > 0:
                data = await recv(min(CHUNK, left))
                left -= len(data)
                self.bytes_proxied += len(data)
                await send(data)
            return
        # Chunked: parsed as strictly as the upload server does (httputil), forwarded re-framed
        # (no extensions, no trailers), and never ended for the server if the client's body is
        # malformed or empty (httputil.RequestError; the caller cuts the server's connection).
        async def line() -> bytes:
            try:
                return await _read_line(reader, httputil.RequestError(
                    "a chunk-size or trailer line is too long: malformed chunked body"))
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError) as e:
                raise _ClientGone(f"chunked body ended early: {e}") from None

        empty = True
        while True:
            size = httputil.parse_chunk_size(await line())
            if size == 0:
                trailer = httputil.FieldSection("trailer")
                while trailer.add(await line()) is not None:
                    pass
                if empty:
                    raise httputil.RequestError(httputil.EMPTY_BODY_MESSAGE, reason=httputil.EMPTY_UPLOAD)
                await send(b"0\r\n\r\n")
                return
            empty = False
            await send(f"{size:x}\r\n".encode())
            left = size
            while left > 0:
                data = await recv(min(CHUNK, left))
                left -= len(data)
                self.bytes_proxied += len(data)
                await send(data)
            try:
                end = await reader.readexactly(2)
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError) as e:
                raise _ClientGone(f"chunked body ended early: {e}") from None
            if end != b"\r\n":
                raise httputil.RequestError("malformed chunked body: a chunk is not followed by CRLF (its size does "
                                            "not match its data)")
            await send(b"\r\n")

    @staticmethod
    async def _read_response(sr: asyncio.StreamReader, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        while True:
            raw_head = await sr.readuntil(b"\r\n\r\n")
            first, raw = parse_head(raw_head)
            status = int(first.split(" ", 2)[1])
            if status != 100:
                break
        headers = {k.lower(): v for k, v in raw}
        body = b""
        if not head:
            n = int(headers.get("content-length") or 0)
            body = await sr.readexactly(min(n, MAX_HEADER)) if n else b""
        return status, headers, body


async def _open_worker_socket(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the upload server's socket, which lives in a directory its (unprivileged) worker
    owns: the worker could put a link there, or a hard link to another service's socket, and make
    the proxy (root) deliver a client's bytes to it. Only a socket owned by the directory's owner,
    reached without following links, is connected to."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror} (the upload server's socket)") from None
    try:
        st, owner = os.fstat(fd), os.lstat(os.path.dirname(path)).st_uid
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != owner:
            raise OSError(errno.EPERM, "the upload server's socket is not a socket its worker made")
        return await asyncio.open_unix_connection(f"/proc/self/fd/{fd}", limit=4 * CHUNK)
    finally:
        os.close(fd)


class _ClientGone(Exception):
    pass


class _BodyPump(asyncio.BufferedProtocol):
    def __init__(self, client: Any, sw: asyncio.StreamWriter, left: int, done: asyncio.Future[None],
                 proxy: Proxy) -> None:
        self.client = client
        self.sw = sw
        self.out = sw.transport
        self.left = left
        self.done = done
        self.proxy = proxy
        # A ring of buffers, each with the count of bytes written up to its end: the transport
        # keeps what it cannot send at once (uvloop as a reference, not a copy), so a buffer is
        # read into again only once every byte of it has left (sent >= its mark).
        self.ring = [memoryview(bytearray(CHUNK)) for _ in range(RING)]
        self.marks = [0] * RING
        self.slot: int | None = 0
        self.next_slot = 0
        self.written = 0
        self.buf = self.ring[0]
        self.waiting = False
        self.tasks: set[asyncio.Future[None]] = set()  # keep references to running helpers

    def release(self) -> None:
        """Drop the buffers now: the pump sits in reference cycles (its helper tasks) that only
        the cyclic garbage collector would free, megabytes per upload, much later."""
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()
        self.ring = []
        self.buf = memoryview(b"")

    def feed(self, data: bytes) -> None:
        if data:
            self.buf, self.slot = memoryview(data), None
            self.buffer_updated(len(data))

    def get_buffer(self, sizehint: int) -> memoryview:
        sent = self.written - self.out.get_write_buffer_size()
        for _ in range(RING):
            i = self.next_slot
            self.next_slot = (i + 1) % RING
            if sent >= self.marks[i]:
                self.buf, self.slot = self.ring[i], i
                break
        else:  # every buffer still has bytes in flight (backpressure makes this rare)
            self.buf, self.slot = memoryview(bytearray(CHUNK)), None
        return self.buf[: max(1, min(len(self.buf), self.left))]

    def buffer_updated(self, nbytes: int) -> None:
        if self.done.done():
            return
        if self.out.is_closing():
            self.done.set_exception(_ServerGone("the upload server closed the connection"))
            return
        self.out.write(self.buf[:nbytes])
        self.written += nbytes
        if self.slot is not None:
            self.marks[self.slot] = self.written
        self.left -= nbytes
        self.proxy.bytes_proxied += nbytes
        if self.left <= 0:
            self.client.pause_reading()
            self.tasks.add(asyncio.ensure_future(self._finish()))
        elif self.out.get_write_buffer_size() > 4 * CHUNK:
            # Backpressure: stop reading the client until the upload server caught up.
            self.client.pause_reading()
            if not self.waiting:
                self.waiting = True
                self.tasks.add(asyncio.ensure_future(self._wait_drain()))

    async def _drained(self) -> bool:
        """Wait until the upload server took what is buffered; False (and done fails) if it went away."""
        try:
            await self.sw.drain()
        except (ConnectionError, OSError) as e:
            if not self.done.done():
                self.done.set_exception(_ServerGone(str(e) or type(e).__name__))
            return False
        return True

    async def _wait_drain(self) -> None:
        if not await self._drained():
            return
        self.waiting = False
        if not self.done.done() and not self.client.is_closing():
            self.client.resume_reading()

    async def _finish(self) -> None:
        if await self._drained() and not self.done.done():
            self.done.set_result(None)

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_exception(_ClientGone("the client closed the connection before the end of the body"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(_ClientGone(f"the client connection was lost: {exc or 'closed'}"))


class _ServerGone(Exception):
    pass


def _pass_headers(headers: dict[str, str]) -> dict[str, str]:
    out = {}
    names = {"upload-offset": api.HDR_OFFSET, "upload-length": api.HDR_LENGTH, "retry-after": "Retry-After",
             "x-upload-state": "X-Upload-State", "x-upload-id": api.HDR_UPLOAD_ID,
             "x-upload-attempt": api.HDR_ATTEMPT}
    for k, v in headers.items():
        if k in names:
            out[names[k]] = v
    return out


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After an early answer: stop writing and drain what the client still sends (at most 3 s,
    until it pauses for half a second) so that closing does not reset the connection before the
    client read the answer."""
    with contextlib.suppress(Exception):
        writer.transport.resume_reading()  # type: ignore[attr-defined]  # paused by the body pump
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
    end = time.monotonic() + 3.0
    with contextlib.suppress(Exception):
        while time.monotonic() < end:
            data = await asyncio.wait_for(reader.read(CHUNK), min(0.5, max(0.1, end - time.monotonic())))
            if not data:
                break


# --- daemon ---------------------------------------------------------------------------------


def load_config(data_dir: str) -> api.UploadConfig:
    path = os.path.join(data_dir, "config.yaml")
    try:
        raw = documents.load_one(documents.read_file(path)) or {}
    except FileNotFoundError:
        raw = {}
    except documents.DocumentError as e:  # bounded like manifests (aliases, size, nesting)
        raise ValueError(str(e)) from None
    return api.UploadConfig.from_mapping(raw.get("upload") if isinstance(raw, dict) else None)


def ssl_context(data_dir: str, config: api.UploadConfig) -> tuple[ssl.SSLContext, Any]:
    from uploadproxy import certs  # cryptography.x509 only when needed (memory)

    files = certs.ensure_tls(data_dir, config.proxy_cert_file, config.proxy_key_file)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    return ctx, files


async def serve(data_dir: str, config: api.UploadConfig, ready: Any = None,
                stop: asyncio.Event | None = None) -> None:
    proxy = Proxy(data_dir, config)
    ctx, files = ssl_context(data_dir, config)
    server = await asyncio.start_server(proxy.handle, config.proxy_address, config.proxy_port, ssl=ctx,
                                        limit=4 * CHUNK, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    host = config.proxy_address
    url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
    state = {"url": url, "pid": os.getpid(), "ca": files.ca, "cert": files.cert, "started": time.time()}
    d = api.upload_dir(data_dir)
    os.makedirs(d, mode=0o700, exist_ok=True)
    with open(os.path.join(d, STATE_FILE + ".tmp"), "w") as f:
        json.dump(state, f)
    os.replace(os.path.join(d, STATE_FILE + ".tmp"), os.path.join(d, STATE_FILE))
    log.info("upload proxy listening on %s", url)
    if ready is not None:
        ready(url)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async def watchdog() -> None:
        # A proxy whose data dir is gone (a test's temporary dir) has nothing left to serve.
        while not stop.is_set():
            await asyncio.sleep(2.0)
            if not os.path.exists(os.path.join(data_dir, "state.db")):
                log.info("data dir %s is gone; stopping", data_dir)
                stop.set()

    wd = asyncio.ensure_future(watchdog())
    try:
        await stop.wait()
    finally:
        server.close()  # no new connections
        wd.cancel()
        await asyncio.gather(wd, return_exceptions=True)
        await proxy.shutdown()
        await server.wait_closed()
    log.info("upload proxy stopped")


def _tame_malloc() -> None:
    """Large buffers straight from mmap and few arenas: freed memory goes back to the system."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, not the dynamic one that creeps up
        libc.mallopt(-8, 2)  # M_ARENA_MAX


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed: its TLS and transports take about 60% less CPU per byte."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    _tame_malloc()
    p = argparse.ArgumentParser(prog="uploadproxy", description="pycdi upload proxy (embedded backend)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--address")
    p.add_argument("--port", type=int)
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_dir = os.path.abspath(args.data_dir)
    try:
        config = load_config(data_dir)
    except ValueError as e:
        print(f"error: {data_dir}/config.yaml: {e}", file=sys.stderr)
        return 2
    if args.address:
        config = _replace(config, proxy_address=args.address)
    if args.port is not None:
        config = _replace(config, proxy_port=args.port)
    d = api.upload_dir(data_dir)
    os.makedirs(d, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(d, "proxy.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"an upload proxy already runs for {data_dir}", file=sys.stderr)
        return 1
    with open(os.path.join(d, "proxy.pid"), "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(data_dir, config))
    except OSError as e:
        log.error("cannot serve on %s:%s: %s", config.proxy_address, config.proxy_port, e)
        return 1
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(d, "proxy.pid"))
        os.close(fd)
    return 0


def _replace(config: api.UploadConfig, **kw: Any) -> api.UploadConfig:
    import dataclasses

    return dataclasses.replace(config, **kw)


if __name__ == "__main__":
    sys.exit(main())
