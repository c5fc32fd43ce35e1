"""The upload server worker (``python -m uploadproxy.server``): one per volume being uploaded.

It listens on a unix socket in its worker directory (or ``127.0.0.1:<port>``), accepts the body
the upload proxy forwards, and feeds it to the shared data path
(``cdi.datapath.processor.run``): the very code the importers use for format detection,
decompression, conversion, the size check and archive extraction. The body is read straight
from the socket into the data path's buffers; nothing buffers the whole image.

Settings: ``ImportSettings`` from the environment (``IMPORTER_SOURCE=upload`` and the usual
target/size/overhead variables) plus ``UPLOAD_LISTEN``, ``UPLOAD_PROXY_AUTH_FILE``,
``UPLOAD_STATE_FILE``, ``UPLOAD_RESUME_TIMEOUT`` and ``UPLOAD_TARGET`` (``namespace/name``).

Protocol (CDI's, plus resume and checksum; see ``cdi.api.upload``):

- ``GET /healthz`` -> 200 OK.
- ``POST`` sync paths answer once the data is converted and synced; async paths answer once
  every byte has been received (conversion goes on; ``upload-state.json`` and the DataVolume
  tell the rest). Errors: 400 for what the upload itself gets wrong (too small, checksum,
  invalid image), 409 after completion, 503 while another upload runs, 500 otherwise; the
  ``X-Cdi-Reason`` header names the reason.
- ``HEAD`` on an upload path -> 200 with ``Upload-Offset``/``Upload-Length`` (resume probe).
- Requests are read as strictly as the proxy reads them (``uploadproxy.httputil``: one body
  framing, header limits; defense in depth). An upload with no image bytes (``Content-Length:
  0``, a chunked body or a form ``file`` part that ends at once) is refused with 400
  ``EmptyUpload`` before a run starts: a run on it would leave a blank disk and end the worker.
  Chunked and form bodies are read ahead to their first byte for that.
- A body that ends early *suspends* the run: the data path waits (``UPLOAD_RESUME_TIMEOUT``) in
  its read for a request with ``Content-Range: bytes <received>-<last>/<length>`` that continues
  the same run. A new upload without Content-Range replaces a suspended one.

One upload run at a time. A failed run leaves the server ready for another upload (the data
path removes what it wrote to a Filesystem volume); only a successful run ends the worker,
with exactly one ``WorkerResult`` in the termination log. ``upload-state.json`` (atomic JSON)
tells the controller: ``state`` (Starting/Ready/Receiving/Suspended/Processing/Done),
``received``, ``total``, ``attempts``, ``lastError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import http.server
import io
import json
import logging
import os
import signal
import socket
import socketserver
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cdi.api import upload as api
from cdi.api.contract import ENV_TERMINATION_LOG, ImportSettings, Outcome, Reason, WorkerResult
from cdi.common import confinement
from cdi.common.errors import CDIError, PermanentError, TemporaryError
from cdi.datapath.source import NbdkitPlan, SourceInfo
from uploadproxy import httputil

log = logging.getLogger("uploadproxy.server")

ENV_TARGET = "UPLOAD_TARGET"
USER_ERRORS = {
    str(Reason.TOO_SMALL), str(Reason.CHECKSUM_ERROR), str(Reason.INVALID_IMAGE), str(Reason.UNSAFE_IMAGE),
    str(Reason.NOT_AN_IMAGE), str(Reason.CONFIG_ERROR), "InvalidForm", "UploadInterrupted",
    httputil.RequestError.reason, httputil.HeaderTooLarge.reason,
}
# The data path words NotAnImage for a URL (the HTTP importer); an upload has a file instead.
NOT_AN_IMAGE_MESSAGE = ("the uploaded file is an HTML page, not a disk image; upload the image file itself (an HTML "
                        "file is usually an error or login page saved instead of the download)")


def _atomic_json(path: str, data: dict[str, Any]) -> None:
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-state-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _Conn:
    """One request body attached to a session."""

    def __init__(self, reader: Any, sock: socket.socket | None) -> None:
        self.reader = reader
        self.sock = sock
        self.done = threading.Event()
        self.error = ""  # why the body broke, if it did
        self.failure: httputil.RequestError | None = None  # the body is malformed (not resumable)
        self.complete = False  # every byte of the upload has been received


class Session:
    """One data path run, fed by one or more request bodies (a resumed upload). A ``Source``."""

    def __init__(self, server: UploadServer, total: int | None, resumable: bool) -> None:
        self.server = server
        self.total = total
        self.resumable = resumable and total is not None
        self.received = 0
        self.cond = threading.Condition()
        self.conn: _Conn | None = None
        self.abort_reason = ""
        self.opened = False
        self.all_received = threading.Event()
        self.finished = threading.Event()
        self.result: WorkerResult | None = None
        self.suspended_at = 0.0
        self.upload_id = ""
        self.attempt = 0  # this run's number (``attempts`` in the state file when it started)

    # --- Source protocol ----------------------------------------------------------------------

    def info(self) -> SourceInfo:
        return SourceInfo(size=self.total, supports_range=False, content_type="application/octet-stream",
                          description="upload")

    def open(self, offset: int = 0) -> Session:
        if offset != 0 or self.opened:
            raise TemporaryError("an upload can be read only once; upload the image again",
                                 reason="UploadInterrupted")
        self.opened = True
        return self

    def nbdkit_plan(self) -> NbdkitPlan | None:
        return None

    def close(self) -> None:
        pass

    # --- Stream protocol ----------------------------------------------------------------------

    def readinto(self, buf: memoryview) -> int:
        while True:
            with self.cond:
                if self.total is not None and self.received >= self.total:
                    return 0
                if self.all_received.is_set():
                    return 0
                deadline = time.monotonic() + self.server.resume_timeout
                while self.conn is None and not self.abort_reason:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self.resumable:
                        self.abort_reason = (
                            f"the upload was interrupted at {self.received} of {self.total} bytes and not "
                            f"resumed within {self.server.resume_timeout:.0f}s; upload again"
                            if self.resumable else
                            f"the upload was interrupted after {self.received} bytes; upload again")
                        break
                    self.cond.wait(min(left, 1.0))
                if self.abort_reason:
                    raise TemporaryError(self.abort_reason, reason="UploadInterrupted")
                conn = self.conn
                assert conn is not None
            want = len(buf)
            if self.total is not None:
                want = min(want, self.total - self.received)
            try:
                n = conn.reader.readinto(buf[:want])
            except (httputil.BodyError, OSError) as e:
                log.warning("upload body broke at %d bytes: %s", self.received, e)
                self._detach(conn, error=str(e) or type(e).__name__)
                continue
            except PermanentError as e:
                if isinstance(e, httputil.RequestError):
                    conn.failure = e
                self._detach(conn, error=e.message)
                raise
            with self.cond:
                if n == 0:
                    if self.total is None:
                        conn.complete = True
                        self.all_received.set()
                        self._detach_locked(conn, "")
                        self.server.write_state(force=True)
                        return 0
                    self._detach_locked(conn, "the request body ended before the upload was complete")
                    continue
                self.received += n
                if self.total is not None and self.received >= self.total:
                    conn.complete = True
                    self.all_received.set()
                    self._detach_locked(conn, "")
                    self.server.write_state(force=True)
                else:
                    self.server.write_state()
            return int(n)

    # --- attaching bodies ---------------------------------------------------------------------

    def attach(self, conn: _Conn) -> None:
        with self.cond:
            self.conn = conn
            self.suspended_at = 0.0
            self.cond.notify_all()
        self.server.write_state(force=True)

    def _detach(self, conn: _Conn, error: str) -> None:
        with self.cond:
            self._detach_locked(conn, error)

    def _detach_locked(self, conn: _Conn, error: str) -> None:
        if self.conn is conn:
            self.conn = None
            if not conn.complete:
                self.suspended_at = time.monotonic()
        conn.error = error
        conn.done.set()
        self.cond.notify_all()
        if not conn.complete:
            self.server.write_state(force=True)

    def abort(self, reason: str) -> None:
        with self.cond:
            self.abort_reason = reason
            self.cond.notify_all()

    @property
    def state(self) -> str:
        if self.finished.is_set():
            return api.ST_DONE if self.result and self.result.outcome == Outcome.SUCCEEDED else api.ST_READY
        if self.all_received.is_set():
            return api.ST_PROCESSING
        if self.conn is None and self.opened:
            return api.ST_SUSPENDED
        return api.ST_RECEIVING


class UploadServer:
    def __init__(self, settings: ImportSettings, env: Mapping[str, str],
                 run: Any = None) -> None:
        self.settings = settings
        self.listen = env.get(api.ENV_LISTEN, "127.0.0.1:0")
        self.state_file = env.get(api.ENV_STATE_FILE)
        self.resume_timeout = float(env.get(api.ENV_RESUME_TIMEOUT, str(api.DEFAULT_RESUME_TIMEOUT)))
        self.target = env.get(ENV_TARGET, "")
        self.secret = b""
        auth_file = env.get(api.ENV_AUTH_FILE)
        if auth_file:
            with open(auth_file, "rb") as f:
                self.secret = f.read().strip()
        if run is None:
            from cdi.datapath import processor

            run = processor.run
        self._run = run
        self.lock = threading.Lock()
        self.session: Session | None = None
        self.attempts = 0
        self.last_error: dict[str, Any] | None = None
        self.result: WorkerResult | None = None
        self.done = threading.Event()
        self._last_state_write = 0.0
        self._state_lock = threading.Lock()
        self.httpd: socketserver.BaseServer | None = None
        self.address = ""
        self.in_flight = 0  # upload requests being handled

    # --- state file ---------------------------------------------------------------------------

    def state(self) -> str:
        if self.result is not None:
            return api.ST_DONE
        s = self.session
        return s.state if s is not None else api.ST_READY

    def write_state(self, force: bool = False) -> None:
        if not self.state_file:
            return
        now = time.monotonic()
        if not force and now - self._last_state_write < 0.5:
            return
        with self._state_lock:
            self._last_state_write = now
            s = self.session
            data = {
                "state": self.state(),
                "received": s.received if s else 0,
                "total": s.total if s else None,
                "attempts": self.attempts,
                "lastError": self.last_error,
                "listen": self.address,
                "pid": os.getpid(),
                "updated": time.time(),
            }
            try:
                _atomic_json(self.state_file, data)
            except OSError as e:
                log.warning("cannot write %s: %s", self.state_file, e)

    # --- sessions -----------------------------------------------------------------------------

    def start_session(self, total: int | None, resumable: bool, checksum: str | None, archive: bool,
                      conn: _Conn | None = None) -> Session:
        """Create a session and its data path thread (call with self.lock held)."""
        s = self.settings
        changes: dict[str, Any] = {"max_resumes": 0}
        if checksum:
            changes["checksum"] = checksum
        if archive:
            changes["content_type"] = "archive"
        settings = dataclasses.replace(s, **changes)
        sess = Session(self, total, resumable)
        sess.conn = conn  # attached before the data path may read
        self.session = sess
        self.attempts += 1
        sess.attempt = self.attempts
        t = threading.Thread(target=self._run_session, args=(sess, settings), name="datapath", daemon=True)
        t.start()
        self.write_state(force=True)
        return sess

    def _run_session(self, sess: Session, settings: ImportSettings) -> None:
        from cdi.datapath.progress import ProgressReporter

        reporter = ProgressReporter(settings.progress_file)
        try:
            result = self._run(sess, settings, reporter)
        except Exception as e:  # the data path should not raise; never leave a client hanging
            log.error("data path raised:\n%s", traceback.format_exc())
            result = WorkerResult(Outcome.TEMPORARY, str(Reason.INTERNAL), f"internal error: {e}")
        if sess.abort_reason and result.outcome != Outcome.SUCCEEDED:
            result = dataclasses.replace(result, reason="UploadInterrupted", message=sess.abort_reason)
        elif result.reason == Reason.NOT_AN_IMAGE and "HTML" in result.message:
            result = dataclasses.replace(result, message=NOT_AN_IMAGE_MESSAGE)
        with self.lock:
            if result.outcome == Outcome.SUCCEEDED:
                self.result = dataclasses.replace(
                    result, reason=str(Reason.UPLOAD_COMPLETE),
                    message="Upload Complete" + result.message.removeprefix("Import complete"))
                log.info("upload complete: %s", result.message)
            else:
                log.warning("upload failed (%s): %s", result.reason, result.message)
                self.last_error = {"reason": result.reason, "message": result.message, "time": time.time(),
                                   "attempt": self.attempts}
                if self.session is sess:
                    self.session = None
        self.write_state(force=True)
        with sess.cond:
            sess.result = result
            sess.finished.set()
            if sess.conn is not None:
                c = sess.conn
                sess.conn = None
                c.done.set()
            sess.cond.notify_all()
        if result.outcome == Outcome.SUCCEEDED:
            self.done.set()
        elif result.reason == Reason.CONFIG_ERROR:
            # Every further upload would fail the same way: end the worker so the DataVolume fails.
            self.result = result
            self.done.set()

    # --- serving ------------------------------------------------------------------------------

    def serve(self) -> None:
        handler = _make_handler(self)
        if self.listen.startswith("unix:"):
            path = self.listen[len("unix:"):]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            httpd: socketserver.BaseServer = _UnixServer(path, handler)
            os.chmod(path, 0o600)
            self.address = self.listen
        else:
            host, _, port = self.listen.rpartition(":")
            httpd = _TCPServer((host or "127.0.0.1", int(port or 0)), handler)
            self.address = f"{httpd.server_address[0]}:{httpd.server_address[1]}"  # type: ignore[str-bytes-safe]
        self.httpd = httpd
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                         name="http").start()
        log.info("upload server listening on %s (target %s)", self.address, self.settings.target_path)
        self.write_state(force=True)

    def shutdown(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            if self.listen.startswith("unix:"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.listen[len("unix:"):])


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TCPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _status_for(result: WorkerResult) -> int:
    if result.outcome == Outcome.SUCCEEDED:
        return 200
    if result.reason in USER_ERRORS:
        return 400
    return 500


def _make_handler(server: UploadServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "pycdi-uploadserver"
        timeout = httputil.HEAD_TIMEOUT  # per socket read; _post sets the body's idle timeout
        framing = httputil.Framing()
        raw_requestline: bytes  # set by http.server before parse_request

        def parse_request(self) -> bool:
            """http.server's parsing, on a head first read within the limits and framing rules of
            ``httputil`` (as strict as the proxy: defense in depth)."""
            self.close_connection = True  # until a whole head is read
            self.command, self.request_version = "", "HTTP/1.1"
            self.requestline = self.raw_requestline.decode("latin-1").rstrip("\r\n")[:200]
            try:
                _, _, version = httputil.parse_request_line(self.raw_requestline)
                fields = httputil.read_fields(self.rfile, "header")
                self.framing = httputil.body_framing(fields, version)
            except httputil.RequestError as e:
                with contextlib.suppress(OSError):
                    self._reply(e.status, e.message, e.reason)
                    self._linger()
                return False
            except (httputil.BodyError, OSError):
                return False  # the connection closed or stalled in the middle of the head
            head = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in fields) + b"\r\n"
            rfile, self.rfile = self.rfile, io.BytesIO(head)
            try:
                return bool(super().parse_request())
            finally:
                self.rfile = rfile

        def address_string(self) -> str:
            return "proxy"

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s", format % args)

        # -- helpers ---------------------------------------------------------------------

        def _reply(self, status: int, text: str = "", reason: str = "", headers: dict[str, str] | None = None,
                   body: bool = True) -> None:
            data = (text + "\n").encode() if text else b""
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            if reason:
                self.send_header(api.HDR_REASON, reason)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if body and data:
                self.wfile.write(data)
            self.wfile.flush()

        def _linger(self) -> None:
            """After answering early: stop writing, drain a little so the client reads the answer."""
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(2.0)
                end = time.monotonic() + 3.0
                while time.monotonic() < end:
                    if not self.connection.recv(1 << 20):
                        break

        def _refuse(self, status: int, text: str, reason: str, headers: dict[str, str] | None = None) -> None:
            """Answer an error before (or instead of) reading the rest of the body; close."""
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._reply(status, text, reason, headers)
            self._linger()

        def _authorized(self) -> bool:
            if server.secret:
                got = (self.headers.get(api.HDR_PROXY_AUTH) or "").encode()
                if not hmac.compare_digest(got, server.secret):
                    self.close_connection = True
                    self._reply(401, "this upload server accepts requests from the upload proxy only",
                                "Unauthorized")
                    return False
            want = self.headers.get("X-Cdi-Target")
            if want and server.target and want != server.target:
                self.close_connection = True
                self._reply(401, f"this upload server serves {server.target}, not {want}", "WrongTarget")
                return False
            return True

        # -- methods ---------------------------------------------------------------------

        def do_GET(self) -> None:
            if urlsplit(self.path).path == api.HEALTH_PATH:
                self._reply(200, "OK")
            else:
                self._reply(404, "not found")

        def do_HEAD(self) -> None:
            path = urlsplit(self.path).path
            if path == api.HEALTH_PATH:
                self._reply(200, "OK", body=False)
                return
            if path not in api.UPLOAD_PATHS:
                self._reply(404, body=False)
                return
            if not self._authorized():
                return
            with server.lock:
                s = server.session
                # Upload-Length whenever the current run's length is known. None before the first
                # upload or after a failed one (its bytes are gone; the next one's length is unknown
                # until it starts), nor for forms and chunked bodies.
                hdr = {api.HDR_OFFSET: "0"}
                if s is not None and s.resumable and not s.finished.is_set():
                    hdr = {api.HDR_OFFSET: str(s.received), api.HDR_LENGTH: str(s.total)}
                    if s.upload_id:
                        hdr[api.HDR_UPLOAD_ID] = s.upload_id
                elif s is not None and server.result is not None and s.total is not None:
                    hdr = {api.HDR_OFFSET: str(s.received), api.HDR_LENGTH: str(s.total)}  # done: all received
                hdr["X-Upload-State"] = server.state()
            self._reply(200, "", headers=hdr, body=False)

        def do_PUT(self) -> None:
            self.do_POST()

        def do_POST(self) -> None:
            with server.lock:
                server.in_flight += 1
            try:
                self._post()
            finally:
                with server.lock:
                    server.in_flight -= 1

        def _post(self) -> None:
            url = urlsplit(self.path)
            path = url.path
            if path not in api.UPLOAD_PATHS:
                self.close_connection = True
                self._reply(404, f"no such endpoint {path}; use one of {', '.join(api.SYNC_PATHS + api.ASYNC_PATHS)}")
                return
            if not self._authorized():
                self._linger()
                return
            is_async = path in api.ASYNC_PATHS or path in api.FORM_ASYNC_PATHS
            is_form = path in api.FORM_SYNC_PATHS or path in api.FORM_ASYNC_PATHS
            archive = path in api.ARCHIVE_PATHS
            query = parse_qs(url.query)
            checksum = self.headers.get(api.HDR_CHECKSUM) or (query.get("checksum") or [""])[0] or None
            chunked, length = self.framing.chunked, self.framing.length
            if length is None and not chunked:
                self.close_connection = True
                self._reply(411, "send Content-Length (or Transfer-Encoding: chunked)", "LengthRequired")
                return
            empty = httputil.EMPTY_FORM_MESSAGE if is_form else httputil.EMPTY_BODY_MESSAGE
            if length == 0:  # before a run starts: a run would leave a blank disk
                self._refuse(400, empty, httputil.EMPTY_UPLOAD)
                return
            crange = None
            if self.headers.get("Content-Range"):
                try:
                    crange = httputil.parse_content_range(self.headers["Content-Range"])
                except ValueError as e:
                    self.close_connection = True
                    self._reply(400, str(e), "BadRequest")
                    self._linger()
                    return
                if is_form or chunked or length != crange[1] - crange[0] + 1 or crange[1] != crange[2] - 1:
                    self.close_connection = True
                    self._reply(400, "Content-Range needs a plain (non-form) body with Content-Length that "
                                "runs to the end of the image", "BadRequest")
                    self._linger()
                    return
            reader: Any = httputil.ChunkedReader(self.rfile) if chunked else httputil.LengthReader(
                self.rfile, length or 0)
            if is_form:
                boundary = httputil.boundary_of(self.headers.get("Content-Type", ""))
                if not boundary:
                    self.close_connection = True
                    self._reply(400, "form upload without a multipart boundary", "InvalidForm")
                    self._linger()
                    return
                reader = httputil.MultipartFileReader(reader, boundary)
            with contextlib.suppress(OSError):
                self.connection.settimeout(max(5.0, server.settings.idle_timeout))
            if chunked or is_form:
                # The size is not known before the end: see the first bytes before a run starts.
                try:
                    first, reader = httputil.read_ahead(reader)
                except httputil.RequestError as e:
                    self._refuse(e.status, e.message, e.reason)
                    return
                except (httputil.BodyError, OSError) as e:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self._reply(400, f"the request body ended before the image started ({e}); upload again",
                                    "UploadInterrupted")
                    return
                if not first:
                    self._refuse(400, empty, httputil.EMPTY_UPLOAD)
                    return
            conn = _Conn(reader, self.connection)

            superseded: Session | None = None
            for _ in range(2):
                with server.lock:
                    if server.result is not None:
                        self.close_connection = True
                        self._reply(409, "already finished uploading", "AlreadyUploaded")
                        self._linger()
                        return
                    s = server.session
                    if s is not None and (s.conn is not None or s.all_received.is_set()):
                        what = "being processed" if s.all_received.is_set() else "in progress"
                        self.close_connection = True
                        self._reply(503, f"an upload to this volume is {what}; try again later", "UploadInProgress",
                                    headers={"Retry-After": "5"})
                        self._linger()
                        return
                    upload_id = self.headers.get(api.HDR_UPLOAD_ID) or ""
                    if crange is not None and crange[0] > 0:
                        if s is not None and s.upload_id and upload_id != s.upload_id:
                            self.close_connection = True
                            self._reply(409, "the interrupted upload on this volume is another one (X-Upload-Id "
                                        "differs); upload from the beginning to replace it", "UploadIdMismatch",
                                        headers={api.HDR_OFFSET: "0"})
                            self._linger()
                            return
                        if s is None or not s.resumable or s.total != crange[2] or s.received != crange[0]:
                            offset = s.received if (s and s.resumable and s.total == crange[2]) else 0
                            self.close_connection = True
                            self._reply(416, f"cannot continue at byte {crange[0]}: the server has {offset} bytes "
                                        "of this upload; continue from there", "WrongOffset",
                                        headers={api.HDR_OFFSET: str(offset)})
                            self._linger()
                            return
                        s.attach(conn)
                        sess = s
                        log.info("resuming the upload at byte %d of %d", crange[0], crange[2])
                        break
                    if s is not None and superseded is None:
                        superseded = s
                        s.abort("replaced by a new upload from the beginning")
                    elif s is None:
                        total = crange[2] if crange is not None else length
                        if is_form or chunked:
                            total = None
                        sess = server.start_session(total, not (is_form or chunked), checksum, archive, conn)
                        sess.upload_id = upload_id
                        break
                if superseded is not None:
                    superseded.finished.wait(60)
            else:
                self.close_connection = True
                self._reply(503, "the previous upload is still being cleaned up; try again", "UploadInProgress")
                self._linger()
                return

            conn.done.wait()
            run = {api.HDR_ATTEMPT: str(sess.attempt)}  # lets a client match lastError to its upload
            if not conn.complete:
                if conn.failure is not None:  # the body is malformed: the run fails with it
                    self._refuse(conn.failure.status, conn.failure.message, conn.failure.reason, headers=run)
                    return
                if sess.finished.is_set() and sess.result is not None and sess.result.outcome != Outcome.SUCCEEDED:
                    r = sess.result
                    self.close_connection = True
                    self._reply(_status_for(r), f"Saving stream failed: {r.message}", r.reason, headers=run)
                    self._linger()
                    return
                # The body broke (client or proxy went away): nobody may be listening any more.
                self.close_connection = True
                how = ("HEAD for Upload-Offset and continue with Content-Range" if sess.resumable
                       else "upload again")
                with contextlib.suppress(OSError):
                    self._reply(400, f"upload interrupted ({conn.error}); received {sess.received} bytes; {how}",
                                "UploadInterrupted", headers={api.HDR_OFFSET: str(sess.received), **run})
                return
            if is_async:
                # Every byte is here; conversion goes on. Fail fast if the data path already failed.
                sess.finished.wait(0.05)
                early = sess.result
                if early is not None and early.outcome != Outcome.SUCCEEDED:
                    self._reply(_status_for(early), f"Saving stream failed: {early.message}", early.reason,
                                headers=run)
                else:
                    self._reply(200, "", headers={api.HDR_OFFSET: str(sess.received), **run})
                return
            sess.finished.wait()
            final = sess.result
            assert final is not None
            r = final
            if r.outcome == Outcome.SUCCEEDED:
                self.close_connection = True
                self._reply(200, "", headers={api.HDR_OFFSET: str(sess.received), **run})
            else:
                self._reply(_status_for(r), f"Saving stream failed: {r.message}", r.reason, headers=run)

    return Handler


# --- worker entry point ---------------------------------------------------------------------


def main(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    termination_log = env.get(ENV_TERMINATION_LOG, "/dev/termination-log")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server: UploadServer | None = None
    try:
        env = confinement.enter(env)  # before anything reads the upload (see cdi.common.confinement)
        termination_log = env.get(ENV_TERMINATION_LOG, "/dev/termination-log")
        settings = ImportSettings.from_env(env)
        termination_log = settings.termination_log
        server = UploadServer(settings, env)
        server.serve()
        while not stop.is_set() and not server.done.is_set():
            stop.wait(0.2)
        if server.result is not None:
            # let the handler of a sync upload write its answer
            end = time.monotonic() + 5.0
            while server.in_flight and time.monotonic() < end:
                time.sleep(0.01)
            result: WorkerResult = server.result
        else:
            result = WorkerResult(Outcome.TEMPORARY, str(Reason.KILLED),
                                  "upload server stopped before an upload completed; it will be restarted")
    except ValueError as e:
        result = WorkerResult(Outcome.PERMANENT, str(Reason.CONFIG_ERROR), f"invalid upload server environment: {e}")
    except CDIError as e:
        outcome = Outcome.PERMANENT if isinstance(e, PermanentError) else Outcome.TEMPORARY
        result = WorkerResult(outcome, e.reason, e.message)
    except Exception as e:
        log.error("unexpected error:\n%s", traceback.format_exc())
        result = WorkerResult(Outcome.TEMPORARY, str(Reason.INTERNAL), f"internal error in the upload server: {e}")
    if server is not None:
        with contextlib.suppress(Exception):
            server.shutdown()
    try:
        result.write(termination_log)
    except OSError as e:
        log.error("cannot write the termination log %s: %s", termination_log, e)
    if server is not None:
        server.write_state(force=True)
    log.info("exiting: %s %s: %s", result.outcome, result.reason, result.message)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
