"""``cdi image-upload dv|pvc NAME --image-path FILE --size 10Gi``: a local image into a volume.

Like ``virtctl image-upload``: creates the DataVolume (``source: {upload: {}}``) or the PVC
(annotated ``cdi.kubevirt.io/storage.upload.target``) unless ``--no-create``, waits for
UploadReady, gets an upload token, streams the file to the upload proxy with a progress bar,
then waits for Succeeded and prints where the disk is. Beyond virtctl:

- ``--checksum sha256:<hex>`` (or ``--checksum sha256`` to compute it from the file first) is
  sent as ``X-Checksum`` and verified by the upload server over the bytes as sent.
- A dropped connection resumes: the client asks ``HEAD`` for ``Upload-Offset`` and sends only the
  rest with ``Content-Range`` (the server keeps the same conversion run waiting for it).
- A 401 (token expired during a long upload or a retry) gets a fresh token (the embedded ``cdi``
  is the API server: it signs tokens with the key in ``<data dir>/upload/keys``).
- After the last byte it waits for the outcome of *this* upload: Succeeded, or a failure of the
  upload server run that took the bytes (``X-Upload-Attempt`` of the answer = ``lastError.attempt``
  in the server's ``upload-state.json``); an earlier upload's error is history, not a failure.
- A certificate it does not accept is a permanent error (no retries), naming the fixes.

Tokens: ``issue_token(data_dir, namespace, name)`` is the UploadTokenRequest of the embedded
backend (``upload.cdi.kubevirt.io/v1beta1``; nothing is stored, as in CDI).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import os
import random
import select
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO
from urllib.parse import urlsplit

from cdi.api import upload as api
from cdi.api.contract import read_worker_json
from cdi.api.naming import worker_run_dir
from cdi.cli.context import CLIError, Context

DV = "DataVolume"
PVC = "PersistentVolumeClaim"
CHUNK = 1 << 20
BIND_IMMEDIATE = "cdi.kubevirt.io/storage.bind.immediate.requested"
CONTENT_TYPE = "cdi.kubevirt.io/storage.contentType"
POD_PHASE = "cdi.kubevirt.io/storage.pod.phase"
DISK_PATH = "embedded.cdi.kubevirt.io/disk-path"
VOLUME_PATH = "embedded.cdi.kubevirt.io/volume-path"
CERT_REASON = "CertificateVerifyFailed"
# Bound=False reasons the controller gives for what only the user can fix (a CDI PermanentError: no
# default storage class, an unknown class, an invalid spec); anything else may pass by itself.
PERMANENT_BOUND = frozenset({"PermanentError", "Invalid", "StorageClassNotFound"})
PERMANENT_GRACE = 5.0  # seconds a permanent reason must stay before giving up (it may be stale)


# --- argument parsing ---------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "image-upload", help="Upload a local disk image into a DataVolume or PVC",
        description="Upload a local disk image (raw, qcow2, vmdk, ..., optionally gz/xz/zst compressed, or a tar "
                    "with --archive-path) into a new or existing DataVolume or PVC, like virtctl image-upload.")
    p.add_argument("kind", choices=["dv", "pvc"], help="upload into a DataVolume or a PVC")
    p.add_argument("name", help="name of the DataVolume or PVC")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image-path", metavar="FILE", help="the disk image to upload")
    src.add_argument("--archive-path", metavar="FILE", help="a tar archive to extract into the volume (Filesystem)")
    p.add_argument("--size", "--pvc-size", dest="size", help="size of the volume to create, e.g. 10Gi")
    p.add_argument("--storage-class", help="storage class of the new volume")
    p.add_argument("--access-mode", help="access mode of the new volume (ReadWriteOnce, ReadWriteMany)")
    p.add_argument("--volume-mode", choices=["block", "filesystem"], help="volume mode of the new volume")
    p.add_argument("--block-volume", action="store_true", help="same as --volume-mode block (deprecated)")
    p.add_argument("--no-create", action="store_true", help="upload into an existing DataVolume or PVC")
    p.add_argument("--force-bind", action="store_true", help="bind immediately (WaitForFirstConsumer classes)")
    p.add_argument("--insecure", action="store_true", help="do not verify the upload proxy's certificate")
    p.add_argument("--uploadproxy-url", help="URL of the upload proxy (default: the embedded one)")
    p.add_argument("--wait-secs", type=int, default=300, help="seconds to wait for the upload server (300)")
    p.add_argument("--retry", type=int, default=5, help="retries after transient errors (5)")
    p.add_argument("--checksum", help="sha256:<hex> to verify, or 'sha256' to compute it from the file first")
    p.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS, help="data dir of the embedded backend")
    p.add_argument("-n", "--namespace", metavar="NS", default=argparse.SUPPRESS, help='namespace (default "default")')
    p.add_argument("--no-controller", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run(args: argparse.Namespace, ctx: Context | None = None) -> int:
    if ctx is None:
        ctx = Context(data_dir_arg=getattr(args, "data_dir", None), namespace_arg=getattr(args, "namespace", None),
                      no_controller=bool(getattr(args, "no_controller", False)))
    try:
        return ImageUpload(ctx, args).run()
    except CLIError as e:
        ctx.eprint(e.message if e.message.startswith("error") else f"error: {e.message}")
        return e.code
    finally:
        with contextlib.suppress(Exception):
            ctx.close()


# --- tokens -------------------------------------------------------------------------------------


def issue_token(data_dir: str, namespace: str, name: str, ttl: float | None = None) -> str:
    """The embedded UploadTokenRequest: a signed token for ``namespace/name``."""
    from cdi.controller.upload import upload_config
    from uploadproxy.tokens import KeyRing

    ring = KeyRing.for_data_dir(data_dir)
    req = api.UploadTokenRequest(namespace=namespace, pvc_name=name)
    token = ring.issue(req.namespace, req.pvc_name, ttl or upload_config(data_dir, strict=True).token_ttl)
    return api.UploadTokenRequest(namespace, name, req.name, token).token


# --- the HTTP client --------------------------------------------------------------------------


class UploadFailed(Exception):
    def __init__(self, status: int, reason: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retryable = retryable


@dataclass
class Response:
    status: int
    reason: str
    text: str
    headers: dict[str, str]


class Progress:
    """A progress bar on a TTY (bytes, rate, ETA), plain lines otherwise."""

    def __init__(self, total: int, out: TextIO, tty: bool | None = None) -> None:
        self.total = total
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.start = time.monotonic()
        self.last = 0.0
        self.last_pct = -1
        self.done = 0
        self.printed = -1  # ``done`` of the last line written
        self.base = 0  # bytes already on the server when this attempt started

    def update(self, done: int, force: bool = False) -> None:
        from cdi.common.units import human_bytes

        self.done = done
        now = time.monotonic()
        if not force and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        elapsed = max(1e-6, now - self.start)
        rate = max(0, done - self.base) / elapsed
        pct = 100.0 * done / self.total if self.total else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0
        text = (f"{human_bytes(done)} / {human_bytes(self.total)} ({pct:5.1f}%) "
                f"{human_bytes(int(rate))}/s ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        self.printed = done
        if self.tty:
            width = 30
            filled = int(width * pct / 100)
            self.out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}   ")
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty or self.printed != self.done:  # plain lines: the last one may already say this
            self.update(self.done, force=True)
        if self.tty:
            self.out.write("\n")
            self.out.flush()


class Uploader:
    """Streams a file to an upload proxy with resume and token refresh."""

    def __init__(self, url: str, token_fn: Any, cafile: str | None = None, insecure: bool = False,
                 timeout: float = 60.0, upload_id: str = "") -> None:
        self.upload_id = upload_id
        u = urlsplit(url if "://" in url else "https://" + url)
        self.scheme = u.scheme
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.token_fn = token_fn
        self.token = token_fn()
        self.timeout = timeout
        if self.scheme == "https":
            ctxt = ssl.create_default_context()  # the system's CAs, plus the embedded proxy's CA
            if cafile:
                ctxt.load_verify_locations(cafile)
            if insecure:
                ctxt.check_hostname = False
                ctxt.verify_mode = ssl.CERT_NONE
            self.ssl: ssl.SSLContext | None = ctxt
        else:
            self.ssl = None

    def _conn(self) -> http.client.HTTPConnection:
        if self.ssl is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.ssl)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def head(self, path: str) -> Response:
        c = self._conn()
        try:
            c.request("HEAD", path, headers=self._headers())
            r = c.getresponse()
            r.read()
            return Response(r.status, r.getheader(api.HDR_REASON, ""), "", {k.lower(): v for k, v in r.getheaders()})
        finally:
            c.close()

    def _socket(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl is None:
            return raw
        return self.ssl.wrap_socket(raw, server_hostname=self.host)

    def send(self, path: str, f: BinaryIO, offset: int, total: int, checksum: str | None,
             progress: Progress | None) -> Response:
        """One request: the file from ``offset`` to the end; returns the answer (early ones too)."""
        sock = self._socket()
        try:
            lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Authorization: Bearer {self.token}",
                     "Content-Type: application/octet-stream", f"Content-Length: {total - offset}",
                     "User-Agent: cdi-image-upload", "Connection: close"]
            if offset:
                lines.append(f"Content-Range: bytes {offset}-{total - 1}/{total}")
            if checksum:
                lines.append(f"{api.HDR_CHECKSUM}: {checksum}")
            if self.upload_id:
                lines.append(f"{api.HDR_UPLOAD_ID}: {self.upload_id}")
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            f.seek(offset)
            pos = offset
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            got = b""
            try:
                while pos < total:
                    n = f.readinto(view[: min(CHUNK, total - pos)])  # type: ignore[attr-defined]
                    if not n:
                        raise CLIError(f"the file shrank while it was being uploaded (at byte {pos})")
                    sock.sendall(view[:n])
                    pos += n
                    if progress is not None:
                        progress.update(pos)
                    got = _early(sock)
                    if got:  # the server answered before the end: an error; stop sending
                        break
            except OSError as e:  # the server answered early and closed (EPIPE, reset, TLS EOF)
                got = b""
                try:
                    return _read_response(sock, b"")
                except OSError:
                    raise ConnectionError(f"connection lost at byte {pos}: {e}") from e
            return _read_response(sock, got)
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _untrusted(self, e: ssl.SSLCertVerificationError) -> UploadFailed:
        """A certificate the client does not accept: retrying cannot help."""
        why = e.verify_message or e.reason or str(e)
        return UploadFailed(0, CERT_REASON, f"the TLS certificate of the upload proxy {self.host}:{self.port} was "
                            f"not accepted: {why}", False)

    def upload(self, f: BinaryIO, total: int, checksum: str | None, retries: int, progress: Progress | None,
               log: Any = None, path: str | None = None) -> Response:
        log = log or (lambda s: None)
        offset = 0
        if path is None:
            try:
                probe = self.head(api.ASYNC_PATHS[0])
            except ssl.SSLCertVerificationError as e:
                raise self._untrusted(e) from None
            except OSError:
                path = api.SYNC_PATHS[0]
            else:
                if probe.status == 401:
                    raise UploadFailed(401, probe.reason, "authentication failed: the proxy refused the upload token",
                                       False)
                path = api.ASYNC_PATHS[0] if probe.status == 200 else api.SYNC_PATHS[0]
                # An earlier run of the same upload (same X-Upload-Id) was interrupted: continue it.
                offset = self._offset_of(probe, total)
                if offset:
                    log(f"continuing an interrupted upload at byte {offset}")
        attempt, refreshes = 0, 0
        while True:
            if progress is not None:
                progress.base = offset
                progress.start = time.monotonic()
            try:
                resp = self.send(path, f, offset, total, checksum, progress)
            except ssl.SSLCertVerificationError as e:
                raise self._untrusted(e) from None
            except OSError as e:
                resp = Response(0, "ConnectionError", str(e), {})
            if resp.status == 200:
                return resp
            if resp.status == 401 and refreshes < 3 and (attempt > 0 or resp.reason == "TokenExpired"):
                refreshes += 1
                self.token = self.token_fn()
                log("the upload token was refused; got a new one")
                attempt += 1
                continue
            retryable = resp.status in (0, 502, 503, 504, 416) or resp.reason == "UploadInterrupted"
            if not retryable or attempt >= retries:
                raise UploadFailed(resp.status, resp.reason, resp.text or f"HTTP {resp.status}", retryable)
            attempt += 1
            delay = min(10.0, 0.5 * 2 ** (attempt - 1)) * (0.75 + random.random() / 2)
            log(f"upload interrupted ({resp.status or ''} {resp.reason}: {resp.text[:200]}); retrying in "
                f"{delay:.1f}s (attempt {attempt + 1} of {retries + 1})")
            time.sleep(delay)
            offset = self._resume_offset(path, total)
            if offset:
                log(f"resuming at byte {offset}")

    def _resume_offset(self, path: str, total: int) -> int:
        try:
            probe = self.head(path)
        except OSError:
            return 0
        if probe.status == 401:
            self.token = self.token_fn()
            with contextlib.suppress(OSError):
                probe = self.head(path)
        return self._offset_of(probe, total)

    def _offset_of(self, probe: Response, total: int) -> int:
        if probe.status != 200:
            return 0
        try:
            off = int(probe.headers.get(api.HDR_OFFSET.lower(), "0") or 0)
            length = int(probe.headers.get(api.HDR_LENGTH.lower(), "0") or 0)
        except ValueError:
            return 0
        if probe.headers.get(api.HDR_UPLOAD_ID.lower(), "") != self.upload_id:
            return 0  # someone else's interrupted upload (or an anonymous one): start over
        return off if length == total and 0 < off < total else 0


# --- the command ---------------------------------------------------------------------------------


class ImageUpload:
    def __init__(self, ctx: Context, args: argparse.Namespace) -> None:
        self.ctx = ctx
        self.a = args
        self.archive = bool(args.archive_path)
        self.path = args.archive_path or args.image_path
        self.ns = ctx.namespace
        self.name = args.name
        self.volume_mode = "Block" if args.block_volume or args.volume_mode == "block" else (
            "Filesystem" if args.volume_mode == "filesystem" else None)

    def say(self, text: str) -> None:
        self.ctx.print(text)

    def run(self) -> int:
        a = self.a
        if not api.is_name(self.name):
            raise CLIError(f"{self.name!r} is not a valid name (lower case letters, digits and '-')")
        if self.archive and self.volume_mode == "Block":
            raise CLIError("--archive-path needs a Filesystem volume; drop --volume-mode block")
        if a.access_mode == "ReadOnlyMany":
            raise CLIError("cannot upload to a ReadOnlyMany volume; use ReadWriteOnce or ReadWriteMany")
        try:
            f = open(self.path, "rb")  # noqa: SIM115
        except OSError as e:
            raise CLIError(f"cannot open {self.path}: {e.strerror}") from None
        with f:
            total = os.fstat(f.fileno()).st_size
            if total == 0:
                raise CLIError(f"{self.path} is empty")
            checksum = self._checksum(f)
            self._check_config()
            self.ctx.ensure_controller()
            self._ensure_target()
            self._wait_ready()
            url, cafile = self._proxy()
            st = os.fstat(f.fileno())
            upload_id = hashlib.sha256(
                f"{os.path.abspath(self.path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode()).hexdigest()[:32]
            uploader = Uploader(url, lambda: issue_token(self.ctx.data_dir, self.ns, self.name), cafile=cafile,
                                insecure=a.insecure, upload_id=upload_id)
            self.say(f"Uploading {self.path} ({total} bytes) to {self.kind_word} {self.ns}/{self.name} via {url}")
            progress = Progress(total, self.ctx.out)
            try:
                resp = uploader.upload(f, total, checksum, max(0, a.retry), progress, log=self._log_line(progress))
            except UploadFailed as e:
                progress.finish()
                if e.reason == CERT_REASON:
                    raise CLIError(f"{e.message}; {self._trust_hint(cafile)}") from None
                hint = ""
                if e.status == 401:
                    hint = " (authentication failed)"
                raise CLIError(f"upload failed{hint}: {e.status or ''} {e.reason}: {e.message}".replace("  ", " ")) from None
            progress.finish()
        run = self._this_run(resp)
        self.say("Uploading data completed successfully, waiting for processing to complete, you can hit "
                 "ctrl-c without interrupting the progress")
        return self._wait_done(run)

    @property
    def kind_word(self) -> str:
        return "DataVolume" if self.a.kind == "dv" else "PVC"

    def _log_line(self, progress: Progress) -> Any:
        def log(text: str) -> None:
            if progress.tty:
                self.ctx.out.write("\n")
            self.ctx.eprint(text)
        return log

    def _trust_hint(self, cafile: str | None) -> str:
        if cafile:
            return (f"it was checked against the embedded proxy's CA {cafile} and the system's CAs; "
                    "pass --insecure to skip the check")
        ca = os.path.join(api.upload_dir(self.ctx.data_dir), "tls", "ca.pem")
        return (f"trust the CA that signed it (the embedded proxy's generated one is {ca}: run with "
                f"SSL_CERT_FILE={ca}, or add it to the system's CAs), or pass --insecure to skip the check")

    def _check_config(self) -> None:
        """A wrong setting in config.yaml fails here, before a volume is created or a token issued."""
        from cdi.backends.embedded.config import Config
        from cdi.common.errors import PermanentError

        try:
            Config.load(self.ctx.data_dir)
        except PermanentError as e:
            raise CLIError(e.message) from None

    def _checksum(self, f: BinaryIO) -> str | None:
        c = self.a.checksum
        if not c:
            return None
        algo, sep, digest = c.partition(":")
        algo = algo.lower()
        if algo not in hashlib.algorithms_guaranteed:
            raise CLIError(f"--checksum {c!r}: write sha256:<hex>, or sha256 to compute it from the file")
        if sep:
            return f"{algo}:{digest.strip().lower()}"
        h = hashlib.new(algo)
        self.say(f"Computing the {algo} of {self.path} ...")
        while chunk := f.read(4 * CHUNK):
            h.update(chunk)
        f.seek(0)
        return f"{algo}:{h.hexdigest()}"

    # -- target -------------------------------------------------------------------------------

    def _storage(self) -> dict[str, Any]:
        a = self.a
        if not a.size:
            raise CLIError(f"--size is required to create {self.kind_word} {self.name} (e.g. --size 10Gi), "
                           "or use --no-create to upload into an existing one")
        s: dict[str, Any] = {"resources": {"requests": {"storage": a.size}}}
        if a.storage_class:
            s["storageClassName"] = a.storage_class
        if a.access_mode:
            s["accessModes"] = [a.access_mode]
        if self.volume_mode:
            s["volumeMode"] = self.volume_mode
        return s

    def _ensure_target(self) -> None:
        from cdi.api.validation import admit
        from cdi.common.errors import ConflictError, ValidationError, ValidationErrors

        store = self.ctx.store
        a = self.a
        ct = "archive" if self.archive else "kubevirt"
        if a.kind == "dv":
            dv = store.get(DV, self.ns, self.name)
            if dv is not None:
                if (dv.get("status") or {}).get("phase") == "Succeeded":
                    raise CLIError(f"DataVolume {self.ns}/{self.name} already succeeded; nothing to upload into")
                if "upload" not in ((dv.get("spec") or {}).get("source") or {}):
                    raise CLIError(f"DataVolume {self.ns}/{self.name} is not an upload DataVolume "
                                   "(spec.source.upload)")
                if not a.no_create:
                    self.say(f"Using existing DataVolume {self.ns}/{self.name}")
                return
            if a.no_create:
                raise CLIError(f"DataVolume {self.ns}/{self.name} does not exist (--no-create)")
            body: dict[str, Any] = {
                "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": DV,
                "metadata": {"name": self.name, "namespace": self.ns, "annotations": {}},
                "spec": {"source": {"upload": {}}, "storage": self._storage()},
            }
            if self.archive:
                body["spec"]["contentType"] = "archive"
        else:
            pvc = store.get(PVC, self.ns, self.name)
            if pvc is not None:
                ann = pvc["metadata"].get("annotations") or {}
                if ann.get(POD_PHASE) == "Succeeded":
                    raise CLIError(f"PVC {self.ns}/{self.name} already finished uploading")
                if api.UPLOAD_TARGET_KEY not in ann:
                    if not a.no_create:
                        raise CLIError(f"PVC {self.ns}/{self.name} exists and is not an upload target; use "
                                       "--no-create to upload into it")
                    ann[api.UPLOAD_TARGET_KEY] = ""
                    ann.setdefault(CONTENT_TYPE, ct)
                    pvc["metadata"]["annotations"] = ann
                    store.update(pvc, check_rv=False)
                return
            if a.no_create:
                raise CLIError(f"PVC {self.ns}/{self.name} does not exist (--no-create)")
            s = self._storage()
            body = {
                "apiVersion": "v1", "kind": PVC,
                "metadata": {"name": self.name, "namespace": self.ns,
                             "annotations": {api.UPLOAD_TARGET_KEY: "", CONTENT_TYPE: ct}},
                "spec": {"accessModes": s.get("accessModes") or ["ReadWriteOnce"],
                         "resources": s["resources"], **({"storageClassName": s["storageClassName"]}
                                                         if "storageClassName" in s else {}),
                         **({"volumeMode": s["volumeMode"]} if "volumeMode" in s else {})},
            }
        if a.force_bind:
            body["metadata"]["annotations"][BIND_IMMEDIATE] = "true"
        try:
            obj = admit(body, None)
        except (ValidationError, ValidationErrors) as e:
            raise CLIError(f"{self.kind_word} {self.name} is invalid: {e}") from None
        try:
            store.create(obj)
        except ConflictError:
            raise CLIError(f"{self.kind_word} {self.ns}/{self.name} was created meanwhile; use --no-create") from None
        self.say(f"{self.kind_word} {self.ns}/{self.name} created")

    def _wait_ready(self) -> None:
        store = self.ctx.store
        deadline = time.monotonic() + self.a.wait_secs
        said = False
        shown: tuple[str, str] = ("", "")  # the Bound=False (reason, message) last printed
        shown_at = 0.0
        while True:
            if self.a.kind == "dv":
                dv = store.get(DV, self.ns, self.name)
                if dv is None:
                    raise CLIError(f"DataVolume {self.ns}/{self.name} disappeared")
                st = dv.get("status") or {}
                phase = st.get("phase")
                if phase == "UploadReady":
                    return
                if phase in ("Failed", "Succeeded"):
                    raise CLIError(f"DataVolume {self.ns}/{self.name} is {phase}: {_message(st)}")
                if phase in ("WaitForFirstConsumer", "PendingPopulation") and not self.a.force_bind:
                    raise CLIError(f"DataVolume {self.ns}/{self.name} is {phase}; use --force-bind")
                bound = _condition(st, "Bound")
                unbound = (str(bound.get("reason") or ""), str(bound.get("message") or ""))
                if bound.get("status") == "False" and unbound[1]:
                    if unbound != shown:
                        shown, shown_at = unbound, time.monotonic()
                        self.say(f"DataVolume {self.ns}/{self.name} is {phase or 'Pending'}, its volume is not "
                                 f"bound: {unbound[0]}: {unbound[1]}")
                    elif unbound[0] in PERMANENT_BOUND and time.monotonic() - shown_at >= PERMANENT_GRACE:
                        raise CLIError(f"DataVolume {self.ns}/{self.name} cannot get a volume: {unbound[1]}; "
                                       f"after fixing that, run cdi image-upload dv {self.name} --no-create again, "
                                       f"or delete the DataVolume (cdi delete dv {self.name}) and start over")
                else:
                    shown = ("", "")
            else:
                pvc = store.get(PVC, self.ns, self.name)
                if pvc is None:
                    raise CLIError(f"PVC {self.ns}/{self.name} disappeared")
                ann = pvc["metadata"].get("annotations") or {}
                if ann.get(api.POD_READY) == "true":
                    return
                if ann.get(POD_PHASE) in ("Failed", "Succeeded"):
                    raise CLIError(f"PVC {self.ns}/{self.name} upload is {ann.get(POD_PHASE)}")
            for ev in store.events((self.a.kind == "dv" and DV) or PVC, self.ns, self.name)[-3:]:
                if ev.get("reason") in ("ProvisioningFailed", "ErrClaimNotValid"):
                    raise CLIError(f"{ev.get('reason')}: {ev.get('message')}")
            if not said:
                self.say(f"Waiting for the upload server of {self.kind_word} {self.ns}/{self.name} ...")
                said = True
            if time.monotonic() > deadline:
                if shown[1]:
                    raise CLIError(f"the upload server of {self.ns}/{self.name} was not ready within "
                                   f"{self.a.wait_secs}s: the volume is not bound: {shown[0]}: {shown[1]}")
                raise CLIError(f"the upload server of {self.ns}/{self.name} was not ready within {self.a.wait_secs}s; "
                               "is the controller running (cdi controller status)?")
            if self.ctx.stop.wait(0.1):
                raise CLIError("interrupted")

    def _proxy(self) -> tuple[str, str | None]:
        if self.a.uploadproxy_url:
            url = self.a.uploadproxy_url
            return (url if "://" in url else "https://" + url), None
        from cdi.controller.upload import ensure_proxy

        st = ensure_proxy(self.ctx.data_dir, wait=15.0)
        if st is None:
            raise CLIError(f"the upload proxy did not start; see {api.upload_dir(self.ctx.data_dir)}/proxy.log")
        return str(st["url"]), st.get("ca")

    def _state_file(self) -> str:
        """The upload server's ``upload-state.json`` (attempts, lastError with its attempt, pid)."""
        wname = api.worker_name(self.ns, self.name)
        return os.path.join(worker_run_dir(self.ctx.data_dir, wname), api.STATE_FILE)

    def _this_run(self, resp: Response) -> tuple[int, int]:
        """(attempt, pid) of the upload server run that took this upload's bytes: its failures are
        ours to report; an error recorded for another attempt (an earlier upload) is not."""
        st = _read_json(self._state_file())
        try:
            attempt = int(resp.headers.get(api.HDR_ATTEMPT.lower(), "") or 0)
        except ValueError:
            attempt = 0
        if not attempt:  # a proxy that does not pass the header: ours is the run the server is on now
            attempt = int(st.get("attempts") or 0)
        return attempt, int(st.get("pid") or 0)

    def _wait_done(self, run: tuple[int, int]) -> int:
        """Wait for the outcome of this upload: Succeeded, or a failure of this upload's run."""
        attempt, pid = run
        state_file = self._state_file()
        store = self.ctx.store
        deadline = time.monotonic() + 24 * 3600
        while time.monotonic() < deadline:
            pvc = store.get(PVC, self.ns, self.name)
            annotations = ((pvc or {}).get("metadata") or {}).get("annotations") or {}
            if self.a.kind == "dv":
                dv = store.get(DV, self.ns, self.name)
                st = (dv or {}).get("status") or {}
                phase = st.get("phase")
                if phase == "Failed":
                    raise CLIError(f"DataVolume {self.ns}/{self.name} failed: {_message(st)}")
                done = phase == "Succeeded"
            else:
                phase = annotations.get(POD_PHASE)
                if phase == "Failed":
                    raise CLIError(f"PVC {self.ns}/{self.name} upload failed; see cdi describe pvc {self.name}")
                done = phase == "Succeeded"
            if done:
                self.say("Processing completed successfully")
                where = self._where(annotations)
                where = f"; {where}" if where else ""
                self.say(f"Uploaded {self.path} to {self.kind_word} {self.ns}/{self.name}{where}")
                return 0
            server = _read_json(state_file)
            err = server.get("lastError") or {}
            same_server = not pid or server.get("pid") in (None, pid)
            if attempt and same_server and err.get("attempt") == attempt:
                raise CLIError(f"processing the upload failed: {err.get('reason')}: {err.get('message')}; "
                               "the volume is ready for another upload")
            if not same_server:
                raise CLIError(f"the upload server of {self.kind_word} {self.ns}/{self.name} restarted before it "
                               "finished processing this upload, which was lost; run the command again "
                               f"(see cdi describe {self.a.kind} {self.name})")
            if self.ctx.stop.wait(0.1):
                return 130
        raise CLIError("timed out waiting for processing to complete")

    def _where(self, annotations: dict[str, str]) -> str:
        """Where the data is: the disk, or for an archive (extracted files, no disk.img) the volume."""
        if self.archive or annotations.get(CONTENT_TYPE) == "archive":
            return f"the files are in {annotations[VOLUME_PATH]}" if annotations.get(VOLUME_PATH) else ""
        return f"the disk is {annotations[DISK_PATH]}" if annotations.get(DISK_PATH) else ""


def _early(sock: socket.socket) -> bytes:
    """Bytes of an answer that arrived while we still send (TLS tickets are not answers)."""
    r, _, _ = select.select([sock], [], [], 0)
    if not r:
        return b""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return b""
    finally:
        sock.settimeout(timeout)


def _read_response(sock: socket.socket, got: bytes) -> Response:
    data = bytearray(got)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the connection closed before an answer")
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length") or 0)
    while len(body) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Response(status, headers.get(api.HDR_REASON.lower(), ""), body[:n].decode("utf-8", "replace").strip(),
                    headers)


def _read_json(path: str) -> dict[str, Any]:
    """A worker's JSON file (the worker owns its directory: no links, FIFOs or huge files)."""
    return read_worker_json(path) or {}


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def _message(status: dict[str, Any]) -> str:
    for c in status.get("conditions") or []:
        if c.get("type") in ("Running", "Ready") and c.get("message"):
            return f"{c.get('reason')}: {c.get('message')}"
    return "no details; see cdi describe"


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m cdi.cli.image_upload``) until the lead wires it into ``cdi``."""
    parser = argparse.ArgumentParser(prog="cdi")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["image-upload", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
