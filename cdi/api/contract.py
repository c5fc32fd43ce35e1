"""The versioned contract between the controller and its workers (importer, upload server).

A worker is started with its settings in the environment (the same variable names an importer
pod gets, after CDI's), reports progress by atomically replacing a small JSON file, and ends by
writing exactly one JSON *termination message* (at most 4 KiB) and exiting with the code of its
outcome. The controller reads only these three things; workers never import the controller.

Exit codes: 0 succeeded, 1 temporary failure (the controller retries), 2 permanent failure
(the DataVolume fails with ``reason``). A worker that dies without a termination message (SIGKILL,
OOM) counts as a temporary failure.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

CONTRACT_VERSION = "cdi.worker/v1"
TERMINATION_MESSAGE_LIMIT = 4096


class Outcome(enum.StrEnum):
    SUCCEEDED = "Succeeded"
    TEMPORARY = "TemporaryFailure"
    PERMANENT = "PermanentFailure"


EXIT_CODES: dict[Outcome, int] = {Outcome.SUCCEEDED: 0, Outcome.TEMPORARY: 1, Outcome.PERMANENT: 2}


class Reason(enum.StrEnum):
    """Reasons a worker may report; they become condition reasons and event reasons."""

    IMPORT_COMPLETE = "Completed"
    UPLOAD_COMPLETE = "UploadCompleted"
    CHECKSUM_ERROR = "ChecksumError"
    TOO_SMALL = "DataVolumeTooSmall"
    INVALID_IMAGE = "InvalidImage"
    UNSAFE_IMAGE = "UnsafeImage"
    NOT_FOUND = "NotFound"
    UNAUTHORIZED = "Unauthorized"
    NOT_AN_IMAGE = "NotAnImage"  # e.g. an HTML page served with 200
    HTTP_ERROR = "HTTPError"
    TRANSIENT = "TransientError"
    TLS_ERROR = "TLSError"
    CONFIG_ERROR = "ConfigError"
    NOT_SUPPORTED = "NotSupported"
    KILLED = "WorkerKilled"
    INTERNAL = "InternalError"


# --- settings -------------------------------------------------------------------------------

ENV_SOURCE = "IMPORTER_SOURCE"
ENV_ENDPOINT = "IMPORTER_ENDPOINT"
ENV_CONTENT_TYPE = "IMPORTER_CONTENTTYPE"
ENV_IMAGE_SIZE = "IMPORTER_IMAGE_SIZE"
ENV_VOLUME_MODE = "IMPORTER_VOLUME_MODE"
ENV_DATA_DIR = "IMPORTER_DATA_DIR"
ENV_BLOCK_DEVICE = "IMPORTER_BLOCK_DEVICE"
ENV_SCRATCH_DIR = "IMPORTER_SCRATCH_DIR"
ENV_OVERHEAD = "FILESYSTEM_OVERHEAD"
ENV_PREALLOCATION = "PREALLOCATION"
ENV_ACCESS_KEY_ID = "IMPORTER_ACCESS_KEY_ID"
ENV_SECRET_KEY = "IMPORTER_SECRET_KEY"
ENV_CERT_DIR = "IMPORTER_CERT_DIR"
ENV_INSECURE_TLS = "INSECURE_TLS"
ENV_EXTRA_HEADER_PREFIX = "IMPORTER_EXTRA_HEADER_"
ENV_SECRET_HEADERS_DIR = "IMPORTER_SECRET_EXTRA_HEADERS_DIR"
ENV_CHECKSUM = "IMPORTER_CHECKSUM"
ENV_PROGRESS_FILE = "CDI_PROGRESS_FILE"
ENV_TERMINATION_LOG = "CDI_TERMINATION_LOG"
ENV_MAX_RESUMES = "IMPORTER_MAX_RESUMES"
ENV_IDLE_TIMEOUT = "IMPORTER_IDLE_TIMEOUT"
ENV_OWNER_UID = "OWNER_UID"

FILESYSTEM = "Filesystem"
BLOCK = "Block"
DISK_IMAGE_NAME = "disk.img"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ImportSettings:
    """Everything an importer worker needs, parsed once from its environment.

    ``image_size`` is the capacity of the target volume in bytes. For Filesystem volumes the
    image is written to ``data_dir/disk.img`` (archives are extracted into ``data_dir``); for
    Block volumes to ``block_device``. Secrets (``secret_key``, secret header files) must never
    be logged: ``redacted()`` is what may be printed.
    """

    source: str
    endpoint: str = ""
    content_type: str = "kubevirt"
    image_size: int = 0
    volume_mode: str = FILESYSTEM
    data_dir: str | None = None
    block_device: str | None = None
    scratch_dir: str | None = None
    filesystem_overhead: float = 0.06
    preallocation: bool = False
    access_key_id: str | None = None
    secret_key: str | None = None
    cert_dir: str | None = None
    insecure_tls: bool = False
    extra_headers: tuple[str, ...] = ()
    secret_headers_dir: str | None = None
    checksum: str | None = None
    progress_file: str | None = None
    termination_log: str = "/dev/termination-log"
    max_resumes: int = 5
    idle_timeout: float = 600.0
    owner_uid: str = ""

    @property
    def target_path(self) -> str:
        """The file or device the disk image is written to."""
        if self.volume_mode == BLOCK:
            assert self.block_device
            return self.block_device
        assert self.data_dir
        return os.path.join(self.data_dir, DISK_IMAGE_NAME)

    def to_env(self) -> dict[str, str]:
        env = {
            ENV_SOURCE: self.source,
            ENV_ENDPOINT: self.endpoint,
            ENV_CONTENT_TYPE: self.content_type,
            ENV_IMAGE_SIZE: str(self.image_size),
            ENV_VOLUME_MODE: self.volume_mode,
            ENV_OVERHEAD: repr(self.filesystem_overhead),
            ENV_PREALLOCATION: "true" if self.preallocation else "false",
            ENV_INSECURE_TLS: "true" if self.insecure_tls else "false",
            ENV_TERMINATION_LOG: self.termination_log,
            ENV_MAX_RESUMES: str(self.max_resumes),
            ENV_IDLE_TIMEOUT: repr(self.idle_timeout),
            ENV_OWNER_UID: self.owner_uid,
        }
        optional = {
            ENV_DATA_DIR: self.data_dir,
            ENV_BLOCK_DEVICE: self.block_device,
            ENV_SCRATCH_DIR: self.scratch_dir,
            ENV_ACCESS_KEY_ID: self.access_key_id,
            ENV_SECRET_KEY: self.secret_key,
            ENV_CERT_DIR: self.cert_dir,
            ENV_SECRET_HEADERS_DIR: self.secret_headers_dir,
            ENV_CHECKSUM: self.checksum,
            ENV_PROGRESS_FILE: self.progress_file,
        }
        env.update({k: v for k, v in optional.items() if v is not None})
        for i, header in enumerate(self.extra_headers):
            env[f"{ENV_EXTRA_HEADER_PREFIX}{i}"] = header
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ImportSettings:
        """Parse the environment; raises ValueError naming the variable that is wrong."""

        def num(name: str, default: str, conv: Any) -> Any:
            raw = env.get(name, default)
            try:
                return conv(raw)
            except ValueError as e:
                raise ValueError(f"{name}={raw!r} is not a valid number") from e

        if ENV_SOURCE not in env:
            raise ValueError(f"{ENV_SOURCE} is not set; set it to http, blank, ...")
        prealloc = env.get(ENV_PREALLOCATION, "false").strip().lower()
        if prealloc not in ("true", "false"):
            raise ValueError(f"{ENV_PREALLOCATION}={prealloc!r}: write true or false")
        headers = []
        i = 0
        while f"{ENV_EXTRA_HEADER_PREFIX}{i}" in env:
            headers.append(env[f"{ENV_EXTRA_HEADER_PREFIX}{i}"])
            i += 1
        return cls(
            source=env[ENV_SOURCE],
            endpoint=env.get(ENV_ENDPOINT, ""),
            content_type=env.get(ENV_CONTENT_TYPE, "kubevirt") or "kubevirt",
            image_size=num(ENV_IMAGE_SIZE, "0", int),
            volume_mode=env.get(ENV_VOLUME_MODE, FILESYSTEM) or FILESYSTEM,
            data_dir=env.get(ENV_DATA_DIR),
            block_device=env.get(ENV_BLOCK_DEVICE),
            scratch_dir=env.get(ENV_SCRATCH_DIR),
            filesystem_overhead=num(ENV_OVERHEAD, "0.06", float),
            preallocation=prealloc == "true",
            access_key_id=env.get(ENV_ACCESS_KEY_ID),
            secret_key=env.get(ENV_SECRET_KEY),
            cert_dir=env.get(ENV_CERT_DIR),
            insecure_tls=_truthy(env.get(ENV_INSECURE_TLS)),
            extra_headers=tuple(headers),
            secret_headers_dir=env.get(ENV_SECRET_HEADERS_DIR),
            checksum=env.get(ENV_CHECKSUM) or None,
            progress_file=env.get(ENV_PROGRESS_FILE),
            termination_log=env.get(ENV_TERMINATION_LOG, "/dev/termination-log"),
            max_resumes=num(ENV_MAX_RESUMES, "5", int),
            idle_timeout=num(ENV_IDLE_TIMEOUT, "600", float),
            owner_uid=env.get(ENV_OWNER_UID, ""),
        )

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict that is safe to log."""
        d = asdict(self)
        if d["secret_key"] is not None:
            d["secret_key"] = "<redacted>"
        d["extra_headers"] = [h.split(":", 1)[0] + ": <redacted>" for h in self.extra_headers]
        return d


# --- result ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerResult:
    """The one termination message a worker writes on every exit path."""

    outcome: Outcome
    reason: str
    message: str
    virtual_size: int | None = None  # the image's virtual (decoded) size
    usable_size: int | None = None  # what the volume can hold after filesystem overhead
    # the smallest volume capacity that would fit; None when none is known (e.g. a stream counted
    # only up to a bound: virtual_size is then a lower bound and the message says how to measure)
    required_capacity: int | None = None
    bytes_transferred: int = 0  # bytes read from the source (as served)
    bytes_written: int = 0  # data bytes written to the target (holes excluded)
    preallocation_applied: bool = False
    scratch_used: bool = False
    scratch_reason: str = ""
    resumes: int = 0  # transient errors the worker recovered from itself
    details: dict[str, Any] = field(default_factory=dict)
    version: str = CONTRACT_VERSION

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[Outcome(self.outcome)]

    def to_json(self) -> str:
        """JSON of at most TERMINATION_MESSAGE_LIMIT bytes (the message is cut first)."""
        d = asdict(self)
        d["outcome"] = str(self.outcome)
        text = json.dumps(d, sort_keys=True)
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
            d["details"] = {}
            text = json.dumps(d, sort_keys=True)
        while len(text.encode()) > TERMINATION_MESSAGE_LIMIT and d["message"]:
            d["message"] = d["message"][: max(0, len(d["message"]) - 256)] + "..."
            text = json.dumps(d, sort_keys=True)
        return text

    @classmethod
    def from_json(cls, text: str) -> WorkerResult:
        """Parse a termination message; raises ValueError for anything that is not one."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"termination message is not JSON: {text[:200]!r}") from e
        if not isinstance(d, dict) or d.get("version") != CONTRACT_VERSION:
            raise ValueError(f"termination message has no supported version: {text[:200]!r}")
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        try:
            d["outcome"] = Outcome(d["outcome"])
            for key in ("reason", "message", "scratch_reason"):
                _typed(d, key, str, "")
            for key in ("bytes_transferred", "bytes_written", "resumes"):
                _typed(d, key, int, 0)
            for key in ("virtual_size", "usable_size", "required_capacity"):
                _typed(d, key, (int, type(None)), None)
            for key in ("preallocation_applied", "scratch_used"):
                _typed(d, key, bool, False)
            _typed(d, "details", dict, {})
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"termination message is malformed: {e}") from None
        return cls(**d)

    def write(self, path: str) -> None:
        _atomic_write(path, self.to_json())


# --- progress -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """A progress snapshot; ``bytes_total`` is 0 when unknown."""

    bytes_done: int
    bytes_total: int
    stage: str = "Transferring"  # Transferring, Converting, Resizing, Extracting, Syncing
    resumes: int = 0
    note: str = ""  # e.g. "scratch space used: server does not support Range"
    updated: float = 0.0

    @property
    def percent(self) -> float | None:
        if self.bytes_total <= 0:
            return None
        return min(100.0, 100.0 * self.bytes_done / self.bytes_total)

    def write(self, path: str) -> None:
        d = asdict(self)
        d["updated"] = time.time()
        _atomic_write(path, json.dumps(d))

    @classmethod
    def read(cls, path: str) -> Progress | None:
        d = read_worker_json(path)
        if d is None:
            return None
        try:
            return cls(
                bytes_done=_typed(d, "bytes_done", int, 0), bytes_total=_typed(d, "bytes_total", int, 0),
                stage=_typed(d, "stage", str, "Transferring")[:64], resumes=_typed(d, "resumes", int, 0),
                note=_typed(d, "note", str, "")[:1024], updated=float(_typed(d, "updated", (int, float), 0.0)),
            )
        except TypeError:
            return None


def _typed(d: dict[str, Any], key: str, kind: Any, default: Any) -> Any:
    value = d.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key} has the wrong type")
    return value


WORKER_FILE_LIMIT = 64 * 1024


def read_worker_file(path: str, limit: int = WORKER_FILE_LIMIT) -> str | None:
    """The text of a small file a worker wrote, or None (missing, not a regular file, too large).

    A worker runs with less privilege than the controller and owns the directory these files are
    in: it could leave a symlink, a FIFO or a huge file there. The controller reads them without
    following links, without blocking and only up to ``limit`` bytes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        data = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > limit:
        return None
    return data.decode("utf-8", "replace")


def read_worker_json(path: str, limit: int = WORKER_FILE_LIMIT) -> dict[str, Any] | None:
    """``read_worker_file`` parsed as a JSON object, or None."""
    text = read_worker_file(path, limit)
    if text is None:
        return None
    try:
        d = json.loads(text)
    except ValueError:
        return None
    return d if isinstance(d, dict) else None


def _atomic_write(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
