"""The http/https source (``spec.source.http``), on ``http.client`` and ``ssl``.

Why not ``requests``: this machine (and many CI images) sets ``REQUESTS_CA_BUNDLE``, which
silently overrides ``verify=``; we also need exact control over redirects, Range/If-Range, the
idle timeout of every read, and ``readinto`` into the caller's buffer without copies.

Behaviour, after CDI's Go importer where it has one:

- Trust: the system store plus every PEM file of ``IMPORTER_CERT_DIR`` (the ``certConfigMap``);
  ``INSECURE_TLS`` turns verification off. A certificate that does not verify is permanent
  (``TLSError``) and the message says which of the two fields to set.
- Credentials: basic auth from ``accessKeyId``/``secretKey`` (or the URL's userinfo), extra
  headers (``extraHeaders``) and secret headers (one header line per file under
  ``IMPORTER_SECRET_EXTRA_HEADERS_DIR``). They are sent on redirects to the same origin and
  dropped on a redirect to another host or scheme, as curl and requests do.
- ``info()`` sends HEAD; servers that refuse it (presigned URLs signed for GET only, 403/405/
  501, or a HEAD that times out) are probed with ``GET Range: bytes=0-0`` instead.
- ``open(offset)`` sends ``Range: bytes=offset-`` with ``If-Range`` so that a file that changed
  under us is noticed. Every read has the idle timeout; a short body (fewer bytes than
  Content-Length) is a ``TemporaryError``.
- Status codes: 404/410 NotFound, 401/403 Unauthorized, 408/429/5xx transient, other 4xx
  HTTPError. Nothing that reaches a message or a log contains a credential (``redact_url``).
"""

from __future__ import annotations

import base64
import glob
import http.client
import logging
import os
import re
import socket
import ssl
import urllib.parse
from dataclasses import dataclass

from cdi.api.contract import ImportSettings, Reason
from cdi.common.errors import CDIError, PermanentError, TemporaryError
from cdi.datapath.source import NbdkitPlan, SourceInfo
from importers.redact import redact_url

log = logging.getLogger(__name__)

USER_AGENT = "cdi-importer/0.1 (pycdi)"
MAX_REDIRECTS = 10
READ_STEP = 256 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# HEAD answers that mean "this server does not do HEAD here", not "the file is not there".
HEAD_REFUSED_STATUSES = frozenset({400, 403, 405, 501})
CONNECT_TIMEOUT = 30.0
SECRETS = "@SECRETS@"  # cdi.datapath.nbdkit.Nbdkit.SECRETS: its private directory
HEAD_TIMEOUT = 60.0

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")

FIX_TLS = (
    "add the CA certificate that signed it to a ConfigMap and reference it in "
    "spec.source.http.certConfigMap, or set spec.source.http.insecureSkipVerify: true"
)


# --- headers ---------------------------------------------------------------------------------


def parse_header_line(line: str, where: str) -> tuple[str, str]:
    """Split ``"Name: value"``; raises PermanentError(ConfigError) naming ``where``, never the value."""
    if "\r" in line or "\n" in line or "\0" in line:
        raise PermanentError(
            f"{where} contains a line break; write exactly one 'Name: value' header",
            reason=Reason.CONFIG_ERROR,
        )
    name, sep, value = line.partition(":")
    name = name.strip()
    if not sep or not _TOKEN.match(name):
        raise PermanentError(f"{where} is not a header of the form 'Name: value'", reason=Reason.CONFIG_ERROR)
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise PermanentError(
            f"{where} has characters HTTP headers cannot carry (only Latin-1)", reason=Reason.CONFIG_ERROR
        ) from None
    return name, value.strip()


def load_secret_headers(directory: str) -> list[tuple[str, str]]:
    """Header lines from every file under ``directory`` (a mounted Secret: one header per value).

    Hidden entries (Kubernetes' ``..data`` links) are skipped; files are read in name order.
    """
    if not os.path.isdir(directory):
        raise PermanentError(
            f"secret extra headers directory {directory} does not exist", reason=Reason.CONFIG_ERROR
        )
    headers: list[tuple[str, str]] = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise PermanentError(
                    f"cannot read secret extra header file {rel}: {type(e).__name__}",
                    reason=Reason.CONFIG_ERROR,
                ) from None
            for line in text.splitlines():
                if line.strip():
                    headers.append(parse_header_line(line, f"secret extra header {rel}"))
    return headers


def basic_auth(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


# --- status and error mapping ----------------------------------------------------------------


def _phrase(reason: str) -> str:
    text = "".join(c for c in reason if c.isprintable())[:80]
    return f" {text}" if text else ""


def status_error(status: int, reason: str, url: str, *, sent_credentials: bool = False) -> CDIError:
    """The error for a non-success HTTP status. ``url`` must already be redacted."""
    said = f"{url} returned {status}{_phrase(reason)}"
    if status in (404, 410):
        return PermanentError(f"{said}; check spec.source.http.url", reason=Reason.NOT_FOUND)
    if status in (401, 403):
        if sent_credentials:
            hint = (
                "the credentials were refused; check accessKeyId and secretKey in the Secret "
                "referenced by spec.source.http.secretRef"
            )
        else:
            hint = (
                "the server wants credentials; reference a Secret with accessKeyId and secretKey "
                "in spec.source.http.secretRef"
            )
        return PermanentError(f"{said}; {hint}", reason=Reason.UNAUTHORIZED)
    if status in (408, 429) or 500 <= status <= 599:
        return TemporaryError(f"{said}; will retry", reason=Reason.TRANSIENT)
    return PermanentError(f"{said}; expected 200 or 206", reason=Reason.HTTP_ERROR)


def _network_error(e: BaseException, where: str, timeout: float) -> CDIError:
    """Map an exception from connect/request/getresponse. ``where`` is redacted text."""
    if isinstance(e, ssl.SSLCertVerificationError):
        detail = e.verify_message or e.reason or "verification failed"
        return PermanentError(
            f"TLS certificate of {where} is not trusted ({detail}); {FIX_TLS}", reason=Reason.TLS_ERROR
        )
    if isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return TemporaryError(f"{where} closed the TLS connection; will retry", reason=Reason.TRANSIENT)
    if isinstance(e, ssl.SSLError):
        detail = e.reason or type(e).__name__
        hint = "; is it an http:// server on an https:// URL?" if "WRONG_VERSION" in str(detail) else ""
        return PermanentError(f"TLS handshake with {where} failed ({detail}){hint}", reason=Reason.TLS_ERROR)
    if isinstance(e, TimeoutError):
        return TemporaryError(
            f"no answer from {where} for {timeout:g} s; will retry", reason=Reason.TRANSIENT
        )
    if isinstance(e, ConnectionRefusedError):
        return TemporaryError(f"connection to {where} refused; will retry", reason=Reason.TRANSIENT)
    if isinstance(e, socket.gaierror):
        return TemporaryError(f"cannot resolve the host of {where}; will retry", reason=Reason.TRANSIENT)
    if isinstance(e, http.client.RemoteDisconnected):
        return TemporaryError(
            f"{where} closed the connection without answering; will retry", reason=Reason.TRANSIENT
        )
    return TemporaryError(
        f"request to {where} failed ({type(e).__name__}); will retry", reason=Reason.TRANSIENT
    )


# --- TLS -------------------------------------------------------------------------------------


def pem_files(cert_dir: str) -> list[str]:
    """The certificate files of a mounted ConfigMap (every visible file holding a PEM block)."""
    found = []
    for path in sorted(glob.glob(os.path.join(cert_dir, "*"))):
        if os.path.basename(path).startswith(".") or not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as f:
                if b"-----BEGIN CERTIFICATE-----" in f.read():
                    found.append(path)
        except OSError:
            continue
    return found


def ssl_context(cert_dir: str | None, insecure: bool) -> ssl.SSLContext:
    """System trust plus the PEM files of ``cert_dir``; no verification when ``insecure``."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if cert_dir:
        if not os.path.isdir(cert_dir):
            raise PermanentError(
                f"certificate directory {cert_dir} (spec.source.http.certConfigMap) does not exist",
                reason=Reason.CONFIG_ERROR,
            )
        for path in pem_files(cert_dir):
            try:
                ctx.load_verify_locations(cafile=path)
            except ssl.SSLError as e:
                raise PermanentError(
                    f"certificate file {os.path.basename(path)} of the certConfigMap is not a valid "
                    f"PEM certificate ({e.reason}); fix the ConfigMap",
                    reason=Reason.TLS_ERROR,
                ) from None
    return ctx


def system_ca_file() -> str | None:
    """The system CA bundle libcurl would use (for a ``cainfo=`` bundle that adds to it)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (
        os.environ.get("SSL_CERT_FILE"),
        paths.cafile,
        paths.openssl_cafile,
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


# --- the source ------------------------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _same_origin(a: str, b: str) -> bool:
    """Whether credentials for ``a`` may be sent to ``b`` (same host and port, no https->http)."""
    sa, ha, pa = _origin(a)
    sb, hb, pb = _origin(b)
    if ha != hb:
        return False
    if sa == sb:
        return pa == pb
    # http -> https upgrade on the default ports keeps credentials (as requests does).
    return sa == "http" and sb == "https" and pa == 80 and pb == 443


def _validator(resp: http.client.HTTPResponse) -> str:
    etag = resp.getheader("ETag") or ""
    if etag and not etag.startswith("W/"):  # weak ETags are not allowed in If-Range
        return etag
    return resp.getheader("Last-Modified") or ""


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    raw = resp.getheader("Content-Length")
    if raw is None or resp.getheader("Transfer-Encoding"):
        return None
    try:
        n = int(raw.strip())
    except ValueError:
        return None
    return n if n >= 0 else None


@dataclass
class _Answer:
    conn: http.client.HTTPConnection
    resp: http.client.HTTPResponse
    url: str  # the URL that answered (after redirects, may carry no credentials)
    sent_credentials: bool

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


class HTTPStream:
    """The body of one GET; ``readinto`` maps every failure to a TemporaryError."""

    def __init__(self, answer: _Answer, expected: int | None, idle_timeout: float) -> None:
        self._answer = answer
        self._expected = expected
        self._idle = idle_timeout
        self._where = redact_url(answer.url)
        self.bytes_read = 0

    def readinto(self, buf: memoryview) -> int:
        if len(buf) == 0:
            return 0
        try:
            # http.client fills the whole buffer before it returns; bounded reads keep progress,
            # the idle watchdog and resume offsets fresh on slow links at no cost on fast ones.
            n = self._answer.resp.readinto(buf[:READ_STEP])
        except TimeoutError:
            raise TemporaryError(
                f"no data from {self._where} for {self._idle:g} s after {self.bytes_read} bytes; "
                "the transfer stalled",
                reason=Reason.TRANSIENT,
            ) from None
        except http.client.IncompleteRead:
            raise self._short() from None
        except (OSError, http.client.HTTPException) as e:
            raise TemporaryError(
                f"connection to {self._where} lost after {self.bytes_read} bytes ({type(e).__name__})",
                reason=Reason.TRANSIENT,
            ) from None
        if n == 0 and self._expected is not None and self.bytes_read < self._expected:
            # http.client returns 0 (no IncompleteRead) when the peer closes early.
            raise self._short()
        self.bytes_read += n
        return n

    def _short(self) -> TemporaryError:
        expected = "the announced length" if self._expected is None else f"{self._expected}"
        return TemporaryError(
            f"{self._where} closed the connection after {self.bytes_read} of {expected} bytes",
            reason=Reason.TRANSIENT,
        )

    def close(self) -> None:
        self._answer.close()


class EmptyStream:
    def readinto(self, buf: memoryview) -> int:
        return 0

    def close(self) -> None:
        pass


class HTTPSource:
    """``spec.source.http``: see the module docstring."""

    def __init__(self, settings: ImportSettings) -> None:
        self.settings = settings
        url = settings.endpoint.strip()
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise PermanentError(
                f"spec.source.http.url {redact_url(url)} is not a valid URL", reason=Reason.CONFIG_ERROR
            ) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentError(
                f"spec.source.http.url {redact_url(url)} must be an http:// or https:// URL",
                reason=Reason.CONFIG_ERROR,
            )
        user = settings.access_key_id
        password = settings.secret_key or ""
        if user is None and parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
        netloc = parts.netloc.rsplit("@", 1)[-1]
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self.redacted_url = redact_url(self.url)

        # Credential headers go only to the original origin.
        self._private: list[tuple[str, str]] = []
        if user:
            self._private.append(("Authorization", basic_auth(user, password)))
        for i, line in enumerate(settings.extra_headers):
            self._private.append(parse_header_line(line, f"extraHeaders[{i}]"))
        self._has_secret_headers = False
        if settings.secret_headers_dir:
            secret = load_secret_headers(settings.secret_headers_dir)
            self._has_secret_headers = bool(secret)
            self._private.extend(secret)
        self._user_agent = not any(n.lower() == "user-agent" for n, _ in self._private)
        self._ctx: ssl.SSLContext | None = None
        self._info: SourceInfo | None = None
        self._final_url = self.url
        self._redirected = False

    # -- requests --

    def _context(self) -> ssl.SSLContext:
        if self._ctx is None:
            self._ctx = ssl_context(self.settings.cert_dir, self.settings.insecure_tls)
        return self._ctx

    def _connect(self, url: str, io_timeout: float) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        connect_timeout = min(CONNECT_TIMEOUT, io_timeout)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                host, parts.port, timeout=connect_timeout, context=self._context()
            )
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(io_timeout)
        return conn

    def _request(self, method: str, extra: list[tuple[str, str]], io_timeout: float) -> _Answer:
        """Send ``method`` to the source URL, following redirects; the caller checks the status."""
        url = self.url
        credentials = True
        for _hop in range(MAX_REDIRECTS + 1):
            where = redact_url(url)
            parts = urllib.parse.urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn: http.client.HTTPConnection | None = None
            try:
                conn = self._connect(url, io_timeout)
                conn.putrequest(method, target, skip_accept_encoding=True)
                conn.putheader("Accept-Encoding", "identity")
                if self._user_agent or not credentials:
                    conn.putheader("User-Agent", USER_AGENT)
                for name, value in extra:
                    conn.putheader(name, value)
                if credentials:
                    for name, value in self._private:
                        conn.putheader(name, value)
                conn.endheaders()
                resp = conn.getresponse()
            except CDIError:
                if conn is not None:
                    conn.close()
                raise
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                raise _network_error(e, where, io_timeout) from None
            if resp.status not in REDIRECT_STATUSES:
                return _Answer(conn, resp, url, credentials and bool(self._private))
            location = resp.getheader("Location")
            resp.close()
            conn.close()
            if not location:
                raise PermanentError(
                    f"{where} answered {resp.status} without a Location header", reason=Reason.HTTP_ERROR
                )
            new = urllib.parse.urljoin(url, location.strip())
            if urllib.parse.urlsplit(new).scheme not in ("http", "https"):
                raise PermanentError(
                    f"{where} redirects to a non-HTTP URL {redact_url(new)}", reason=Reason.HTTP_ERROR
                )
            if credentials and not _same_origin(self.url, new) and self._private:
                log.info(
                    "redirect to another host %s: credentials and extra headers are not sent there",
                    redact_url(new),
                )
            credentials = credentials and _same_origin(self.url, new)
            if resp.status == 303 and method not in ("GET", "HEAD"):
                method = "GET"
            log.debug("%s redirects (%d) to %s", where, resp.status, redact_url(new))
            url = new
            self._redirected = True
        raise PermanentError(
            f"{self.redacted_url} redirects more than {MAX_REDIRECTS} times; check spec.source.http.url",
            reason=Reason.HTTP_ERROR,
        )

    # -- Source protocol --

    def info(self) -> SourceInfo:
        if self._info is None:
            self._info = self._probe()
            log.info(
                "source %s: size=%s range=%s content-type=%r validator=%s",
                self._info.description,
                self._info.size,
                self._info.supports_range,
                self._info.content_type,
                "yes" if self._info.validator else "no",
            )
        return self._info

    def _probe(self) -> SourceInfo:
        head_timeout = min(HEAD_TIMEOUT, self.settings.idle_timeout)
        try:
            answer = self._request("HEAD", [], head_timeout)
        except TemporaryError as e:
            log.info("HEAD failed (%s); probing with a ranged GET instead", e)
            return self._probe_get()
        try:
            status = answer.resp.status
            if status in HEAD_REFUSED_STATUSES:
                log.info("HEAD answered %d; probing with a ranged GET instead", status)
                return self._probe_get()
            if status != 200:
                raise status_error(
                    status,
                    answer.resp.reason,
                    redact_url(answer.url),
                    sent_credentials=answer.sent_credentials,
                )
            self._final_url = answer.url
            size = _content_length(answer.resp)
            accept = (answer.resp.getheader("Accept-Ranges") or "").strip().lower()
            validator = _validator(answer.resp)
            content_type = answer.resp.getheader("Content-Type") or ""
        finally:
            answer.close()
        if accept == "bytes":
            supports_range = True
        elif accept == "none":
            supports_range = False
        else:
            supports_range = self._probe_get().supports_range
        return SourceInfo(
            size=size,
            supports_range=supports_range,
            content_type=content_type,
            validator=validator,
            description=redact_url(self._final_url),
        )

    def _probe_get(self) -> SourceInfo:
        """``GET Range: bytes=0-0``: 206 tells size and Range support, 200 only the size."""
        answer = self._request("GET", [("Range", "bytes=0-0")], self.settings.idle_timeout)
        try:
            resp = answer.resp
            if resp.status == 206:
                m = _CONTENT_RANGE.match((resp.getheader("Content-Range") or "").strip())
                size = int(m.group(3)) if m and m.group(3) != "*" else None
                supports_range = True
            elif resp.status == 200:
                size = _content_length(resp)
                supports_range = False
            elif resp.status == 416:  # an empty file
                size, supports_range = 0, True
            else:
                raise status_error(
                    resp.status, resp.reason, redact_url(answer.url), sent_credentials=answer.sent_credentials
                )
            self._final_url = answer.url
            return SourceInfo(
                size=size,
                supports_range=supports_range,
                content_type=resp.getheader("Content-Type") or "",
                validator=_validator(resp),
                description=redact_url(answer.url),
            )
        finally:
            answer.close()  # without reading the body: closing is cheaper than draining

    def open(self, offset: int = 0) -> HTTPStream | EmptyStream:
        info = self.info() if offset > 0 else self._info
        validator = info.validator if info else ""
        extra: list[tuple[str, str]] = []
        if offset > 0:
            extra.append(("Range", f"bytes={offset}-"))
            if validator:
                extra.append(("If-Range", validator))
        idle = self.settings.idle_timeout
        answer = self._request("GET", extra, idle)
        resp = answer.resp
        where = redact_url(answer.url)
        try:
            if resp.status == 206:
                m = _CONTENT_RANGE.match((resp.getheader("Content-Range") or "").strip())
                if offset == 0 or not m or int(m.group(1)) != offset:
                    raise TemporaryError(
                        f"{where} answered a request for bytes {offset}- with range "
                        f"{resp.getheader('Content-Range')!r}; will retry",
                        reason=Reason.TRANSIENT,
                    )
                return HTTPStream(answer, _content_length(resp), idle)
            if resp.status == 200:
                stream = HTTPStream(answer, _content_length(resp), idle)
                if offset > 0:
                    self._skip(stream, offset, validator, _validator(resp), where)
                    stream._expected = None if stream._expected is None else stream._expected - offset
                    stream.bytes_read = 0
                return stream
            if resp.status == 416 and offset > 0 and info is not None and info.size == offset:
                answer.close()
                return EmptyStream()
            raise status_error(resp.status, resp.reason, where, sent_credentials=answer.sent_credentials)
        except BaseException:
            answer.close()
            raise

    def _skip(self, stream: HTTPStream, offset: int, old: str, new: str, where: str) -> None:
        """The server sent the whole file for a Range request: discard ``offset`` bytes.

        With If-Range, a 200 also means the file changed; then the bytes already written are
        stale and skipping would splice two files together, so the processor must start over.
        """
        if old and new and old != new:
            raise TemporaryError(
                f"{where} changed since the import started (validator {old} -> {new}); "
                "the import restarts from the beginning",
                reason=Reason.TRANSIENT,
            )
        log.warning("%s ignored the Range request; skipping %d bytes of the full answer", where, offset)
        buf = memoryview(bytearray(1 << 20))
        left = offset
        while left > 0:
            n = stream.readinto(buf[: min(left, len(buf))])
            if n == 0:
                raise TemporaryError(
                    f"{where} ended after {offset - left} bytes, before the resume offset {offset}",
                    reason=Reason.TRANSIENT,
                )
            left -= n

    def nbdkit_plan(self) -> NbdkitPlan | None:
        """nbdkit curl plugin arguments, or None without Range support.

        Every header we would send (basic auth, extra and secret headers) goes to nbdkit in a
        file read by ``header-script`` (nbdkit 1.32 has no ``header=+FILE``, and ``header-script``
        excludes ``header=``), so argv holds no secret, not even the user name. When such
        headers exist, nbdkit gets the URL *after* our redirects with ``followlocation=false``:
        curl sends custom headers to every host it is redirected to. Files are relative
        ``secret_files`` and ``@SECRETS@`` in the args stands for the directory the runner
        writes them to (``cdi.datapath.nbdkit.Nbdkit``).
        """
        info = self.info()
        if not info.supports_range:
            return None
        files: dict[str, bytes] = {}
        args: list[str] = []
        same = _same_origin(self.url, self._final_url)
        headers = self._private if same else []
        if headers:
            args.append(f"url={self._final_url}")
            args.append("followlocation=false")
            files["headers"] = "".join(f"{n}: {v}\n" for n, v in headers).encode()
            args.append(f"header-script=cat '{SECRETS}/headers'")
        elif self._private:
            # Redirected to another host: our credentials stay behind, as in our own requests.
            args.append(f"url={self._final_url}")
        else:
            # Nothing secret to send: let curl follow redirects itself (fresh presigned URLs).
            args.append(f"url={self.url}")
        args.append(f"user-agent={USER_AGENT}")
        args.append("protocols=http,https")
        if self.settings.insecure_tls:
            args.append("sslverify=false")
        elif self.settings.cert_dir and pem_files(self.settings.cert_dir):
            # cainfo replaces curl's store: the bundle is the system store plus the ConfigMap.
            bundle = b""
            system = system_ca_file()
            for pem in ([system] if system else []) + pem_files(self.settings.cert_dir):
                with open(pem, "rb") as f:
                    bundle += f.read().rstrip(b"\n") + b"\n"
            files["ca-bundle.pem"] = bundle
            args.append(f"cainfo={SECRETS}/ca-bundle.pem")
        return NbdkitPlan(plugin="curl", args=tuple(args), secret_files=files)

    def close(self) -> None:
        pass
