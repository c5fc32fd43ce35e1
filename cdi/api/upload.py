"""Upload API: the UploadTokenRequest type, the token claims, and the names shared by the upload
proxy, the upload server worker, the controller and ``cdi image-upload`` (pure data, no I/O).

UploadTokenRequest (``upload.cdi.kubevirt.io/v1beta1``), as CDI::

    apiVersion: upload.cdi.kubevirt.io/v1beta1
    kind: UploadTokenRequest
    metadata: {name: token-for-cdi-xxxxx, namespace: default}
    spec: {pvcName: my-dv}
    status: {token: <JWT>}

The token is a JWT (RFC 7519) signed with Ed25519 (``alg: EdDSA``, the key id in ``kid``) with
CDI's claims: ``iss: cdi-apiserver``, ``iat``, ``nbf``, ``exp`` (now + 5 minutes by default),
``operation: Upload``, ``name``, ``namespace`` and ``resource`` (persistentvolumeclaims).

Protocol extensions beyond CDI (all optional, a plain CDI client never sees them):

- Checksum: header ``X-Checksum: sha256:<hex>`` or query ``?checksum=sha256:<hex>`` on the upload
  request (the DataVolume's ``spec.source.upload.checksum`` applies when the request has none).
  Verified over the bytes as sent; a mismatch fails the upload with 400 ``ChecksumError`` and
  nothing is left in the volume.
- Resume: ``HEAD`` on an upload path answers ``Upload-Offset`` (bytes received so far of an
  interrupted upload, 0 when none) and ``Upload-Length``. The client then sends the rest with
  ``Content-Range: bytes <offset>-<last>/<length>``; the server feeds it to the same data path
  run. A wrong offset gets 416 with the right ``Upload-Offset``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cdi.api import naming

GROUP = "upload.cdi.kubevirt.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "UploadTokenRequest"

ISSUER = "cdi-apiserver"
OPERATION_UPLOAD = "Upload"
PVC_RESOURCE = {"group": "", "version": "v1", "resource": "persistentvolumeclaims"}
DEFAULT_TOKEN_TTL = 300.0  # seconds, as CDI
MAX_TOKEN_TTL = 3600.0  # upload tokens are short-lived; a client gets a new one when one expires
TOKEN_LEEWAY = 10.0  # seconds of clock skew accepted, as CDI

# Endpoints (CDI's), on the proxy and on the upload server.
SYNC_PATHS = ("/v1beta1/upload", "/v1alpha1/upload")
ASYNC_PATHS = ("/v1beta1/upload-async", "/v1alpha1/upload-async")
FORM_SYNC_PATHS = ("/v1beta1/upload-form", "/v1alpha1/upload-form")
FORM_ASYNC_PATHS = ("/v1beta1/upload-form-async", "/v1alpha1/upload-form-async")
ARCHIVE_PATHS = ("/v1beta1/upload-archive", "/v1alpha1/upload-archive")
UPLOAD_PATHS = SYNC_PATHS + ASYNC_PATHS + FORM_SYNC_PATHS + FORM_ASYNC_PATHS + ARCHIVE_PATHS
HEALTH_PATH = "/healthz"

# Headers
HDR_CHECKSUM = "X-Checksum"
HDR_OFFSET = "Upload-Offset"
HDR_LENGTH = "Upload-Length"
HDR_UPLOAD_ID = "X-Upload-Id"  # the client's name for its upload (e.g. a hash of path/size/mtime)
HDR_ATTEMPT = "X-Upload-Attempt"  # the upload server's number for the run a request fed (attempts/lastError)
HDR_REASON = "X-Cdi-Reason"  # the machine-readable reason of an error response
HDR_PROXY_AUTH = "X-Cdi-Proxy-Auth"  # proxy -> upload server shared secret (embedded)

# Annotations (PVC). CDI's pod ready key, and where the embedded upload server listens.
POD_READY = "cdi.kubevirt.io/storage.pod.ready"
UPLOAD_SERVER = "embedded.cdi.kubevirt.io/upload-server"  # "unix:/path/to/upload.sock"
UPLOAD_WORKER = "embedded.cdi.kubevirt.io/upload-worker"  # worker name
UPLOAD_CHECKSUM = "embedded.cdi.kubevirt.io/upload-checksum"  # spec.source.upload.checksum, if any

# Upload server environment (in addition to ImportSettings with IMPORTER_SOURCE=upload).
ENV_LISTEN = "UPLOAD_LISTEN"  # unix:/path or 127.0.0.1:port
ENV_AUTH_FILE = "UPLOAD_PROXY_AUTH_FILE"  # file holding the shared secret (0600)
ENV_STATE_FILE = "UPLOAD_STATE_FILE"  # JSON state for the controller (see UploadState)
ENV_RESUME_TIMEOUT = "UPLOAD_RESUME_TIMEOUT"  # seconds an interrupted upload waits to resume
ENV_DEADLINE = "UPLOAD_DEADLINE"  # unix time after which an idle server exits (0 = never)

STATE_FILE = "upload-state.json"
SOCKET_FILE = "upload.sock"
AUTH_FILE = "proxy-auth"  # the shared secret: the server's copy and the proxy's (naming.worker_held_secret)

# Server states (upload-state.json "state").
ST_STARTING = "Starting"
ST_READY = "Ready"  # waiting for an upload
ST_RECEIVING = "Receiving"
ST_SUSPENDED = "Suspended"  # interrupted; waiting for the rest (resume)
ST_PROCESSING = "Processing"  # all bytes received; converting/syncing
ST_DONE = "Done"

DEFAULT_PROXY_PORT = 18443
DEFAULT_RESUME_TIMEOUT = 300.0
DEFAULT_READY_WAIT = 10.0  # proxy waits this long for the upload server (CDI: 10 s)


@dataclass(frozen=True)
class UploadTokenRequest:
    namespace: str
    pvc_name: str
    name: str = ""
    token: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"pvcName": self.pvc_name},
        }
        if self.token:
            d["status"] = {"token": self.token}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UploadTokenRequest:
        """:raises ValueError: naming the field that is wrong."""
        if d.get("apiVersion") != API_VERSION or d.get("kind") != KIND:
            raise ValueError(f"expected apiVersion {API_VERSION} kind {KIND}")
        md = d.get("metadata") or {}
        pvc = (d.get("spec") or {}).get("pvcName") or ""
        if not is_name(pvc):
            raise ValueError(f"spec.pvcName {pvc!r} is not a valid name (lower case letters, digits, '-', '.')")
        ns = md.get("namespace") or "default"
        if not is_name(ns):
            raise ValueError(f"metadata.namespace {ns!r} is not a valid name")
        return cls(namespace=ns, pvc_name=pvc, name=md.get("name") or "",
                   token=(d.get("status") or {}).get("token") or "")


_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def is_name(s: str) -> bool:
    return bool(_NAME.match(s or ""))


@dataclass(frozen=True)
class UploadConfig:
    """The ``upload:`` section of the embedded ``config.yaml`` (all optional)::

        upload:
          proxyAddress: 127.0.0.1
          proxyPort: 18443
          proxyCertFile: /path/tls.crt   # with proxyKeyFile; else one is generated
          proxyKeyFile: /path/tls.key
          tokenTTLSeconds: 300       # (0, 3600]
          resumeTimeoutSeconds: 300
          readyWaitSeconds: 10
    """

    proxy_address: str = "127.0.0.1"
    proxy_port: int = DEFAULT_PROXY_PORT
    proxy_cert_file: str | None = None
    proxy_key_file: str | None = None
    token_ttl: float = DEFAULT_TOKEN_TTL
    resume_timeout: float = DEFAULT_RESUME_TIMEOUT
    ready_wait: float = DEFAULT_READY_WAIT
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, raw: Any) -> UploadConfig:
        """:raises ValueError: naming the key that is wrong."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValueError("upload: expected a mapping of settings")

        def num(key: str, default: float, zero_ok: bool = False) -> float:
            v = raw.get(key, default)
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"upload.{key} must be a number, got {v!r}") from None
            if f < 0 or (f == 0 and not zero_ok):
                raise ValueError(f"upload.{key} must be positive, got {v!r}")
            return f

        ttl = num("tokenTTLSeconds", DEFAULT_TOKEN_TTL)
        if ttl > MAX_TOKEN_TTL:
            raise ValueError(
                f"upload.tokenTTLSeconds is {raw.get('tokenTTLSeconds')!r}, but upload tokens live at most "
                f"{MAX_TOKEN_TTL:.0f} seconds; set it to a value in (0, {MAX_TOKEN_TTL:.0f}] (default "
                f"{DEFAULT_TOKEN_TTL:.0f}); cdi image-upload gets a new token when one expires during a long upload")
        cert, key = raw.get("proxyCertFile"), raw.get("proxyKeyFile")
        if bool(cert) != bool(key):
            raise ValueError("upload.proxyCertFile and upload.proxyKeyFile go together; set both or neither")
        return cls(
            proxy_address=str(raw.get("proxyAddress", "127.0.0.1")),
            proxy_port=int(num("proxyPort", DEFAULT_PROXY_PORT, zero_ok=True)),  # 0: any free port
            proxy_cert_file=cert or None,
            proxy_key_file=key or None,
            token_ttl=ttl,
            resume_timeout=num("resumeTimeoutSeconds", DEFAULT_RESUME_TIMEOUT),
            ready_wait=num("readyWaitSeconds", DEFAULT_READY_WAIT),
        )


def upload_dir(data_dir: str) -> str:
    """``<data dir>/upload``: keys/, tls/, proxy.pid, proxy.log, proxy.lock."""
    import os.path

    return os.path.join(data_dir, "upload")


def worker_name(namespace: str, name: str) -> str:
    return naming.worker_name("upload", namespace, name)

UPLOAD_TARGET_KEY = "cdi.kubevirt.io/storage.upload.target"  # CDI's annotation marking upload targets
