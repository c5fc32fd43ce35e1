"""Upload population: ``source: {upload: {}}`` DataVolumes and bare PVCs annotated
``cdi.kubevirt.io/storage.upload.target``, served by one upload server worker per volume.

Phases of an upload DataVolume (CDI's)::

    Pending -> UploadScheduled (worker started) -> UploadReady (server listening; stays so while
    bytes arrive, with progress in % and bytes) -> Succeeded
                                              \\-> Failed (worker config error, or it died more
                                                  often than the retry limit)

A failed or truncated upload never fails the DataVolume: the server reports it (``lastError``
in its state file; condition Running message, ``UploadFailed`` event) and waits for another
upload; the data path leaves nothing half-written behind. The worker is restarted with backoff
if it dies (the volume is reset first).

The controller only reads worker files (``upload-state.json``, ``progress.json``,
``termination-log``); it never imports ``uploadproxy``. It publishes the server's address on
the PVC (``embedded.cdi.kubevirt.io/upload-server`` and CDI's ``storage.pod.ready``), which
is what the proxy reads. It also keeps the upload proxy process running (``ensure_proxy``).

Checksum (beyond CDI): ``spec.source.upload.checksum: sha256:<hex>`` (or the request's
``X-Checksum`` header / ``?checksum=`` query, which win) is verified by the data path.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from cdi.api import annotations as ann
from cdi.api import conditions as cond
from cdi.api import upload as api
from cdi.api.contract import BLOCK, ENV_SCRATCH_DIR, ImportSettings, Outcome, Reason, read_worker_json
from cdi.api.phases import DataVolumePhase
from cdi.backends.base import VolumeInfo, WorkerStatus
from cdi.common.errors import NotFoundError
from cdi.common.locks import lock_held
from cdi.common.units import human_bytes
from cdi.controller.datavolume import PVC, DataVolumeController, checked_result, scratch_dir, worker_grants
from cdi.controller.secrets import write_private
from cdi.controller.storage import StorageRequest, resolve, too_small_message
from cdi.store.sqlite import Obj, now_iso

RETRY_AFTER = "cdi.kubevirt.io/storage.upload.retryAfter"
LAST_ERROR_SEEN = "embedded.cdi.kubevirt.io/upload-last-error"
MAX_UNIX_PATH = 100


@dataclass
class Observed:
    """What the upload worker is doing, as seen from its files."""

    phase: str  # Scheduled | Ready | Succeeded | Failed | Retrying
    message: str = ""
    reason: str = ""
    state: str = ""
    received: int = 0
    total: int | None = None
    stage: str = ""
    address: str = ""
    last_error: dict[str, Any] | None = None
    requeue: float | None = 0.2
    result_note: str = ""


def _read_state(path: str) -> dict[str, Any]:
    return read_worker_json(path) or {}


def _server_address(listen: str, workdir: str) -> str:
    """Where the proxy reaches the upload server that says it listens on ``listen``.

    The server may see its directory elsewhere (confined workers see it under /tmp/cdi), and it
    reads untrusted data: its word is taken only for the kind of address. A unix socket is the
    one in its work directory; a TCP address must be on 127.0.0.1.
    """
    if listen.startswith("unix:"):
        return f"unix:{os.path.join(workdir, api.SOCKET_FILE)}"
    host, _, port = listen.rpartition(":")
    if host == "127.0.0.1" and port.isdigit() and 0 < int(port) < 65536:
        return listen
    return ""


def upload_config(data_dir: str, strict: bool = False) -> api.UploadConfig:
    """The ``upload:`` settings of ``config.yaml``; the defaults when they are invalid, or with
    ``strict`` a ValueError naming the file, the key and what to write."""
    from cdi.common import documents

    path = os.path.join(data_dir, "config.yaml")
    try:
        raw = documents.load_one(documents.read_file(path)) or {}
    except (OSError, documents.DocumentError):  # bounded like manifests (aliases, size, nesting)
        raw = {}
    try:
        return api.UploadConfig.from_mapping(raw.get("upload") if isinstance(raw, dict) else None)
    except ValueError as e:
        if strict:
            raise ValueError(f"{path}: {e}") from None
        return api.UploadConfig()


# --- the upload proxy process ---------------------------------------------------------------


def proxy_running(data_dir: str) -> bool:
    return lock_held(os.path.join(api.upload_dir(data_dir), "proxy.lock"))


def ensure_proxy(data_dir: str, wait: float = 0.0) -> dict[str, Any] | None:
    """Start the upload proxy for ``data_dir`` unless one runs; with ``wait`` > 0 return its
    ``proxy.json`` (url, ca) once it listens, or None on timeout."""
    d = api.upload_dir(data_dir)
    state_path = os.path.join(d, "proxy.json")
    if not proxy_running(data_dir):
        os.makedirs(d, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_path)
        with open(os.path.join(d, "proxy.log"), "ab") as logf:
            subprocess.Popen(
                [sys.executable, "-m", "uploadproxy.proxy", "--data-dir", data_dir],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
            )
    if wait <= 0:
        return None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        st = _read_state(state_path)
        if st.get("url") and proxy_running(data_dir):
            return st
        time.sleep(0.05)
    return None


def stop_proxy(data_dir: str, timeout: float = 10.0) -> bool:
    """Stop the upload proxy of ``data_dir``; False if none was running. Uploads through it are
    cut off; their clients can resume them once a proxy runs again."""
    import signal

    if not proxy_running(data_dir):
        return False  # a pid file left behind names no proxy (or another process by now)
    d = api.upload_dir(data_dir)
    try:
        with open(os.path.join(d, "proxy.pid")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proxy_running(data_dir):
        time.sleep(0.05)
    if proxy_running(data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


# --- the worker driver (shared by DataVolumes and bare PVCs) -----------------------------------


class UploadDriver:
    def __init__(self, controller: DataVolumeController) -> None:
        self.controller = controller
        self.ctx = controller.ctx
        self._proxy_checked = 0.0

    def keep_proxy(self) -> None:
        now = time.monotonic()
        if now - self._proxy_checked < 2.0:
            return
        self._proxy_checked = now
        with contextlib.suppress(OSError):
            ensure_proxy(self.ctx.config.data_dir)

    def worker_env(self, ns: str, name: str, uid: str, vol: VolumeInfo, overhead: float, content_type: str,
                   checksum: str | None, preallocation: bool, wname: str) -> dict[str, str]:
        cfg = self.ctx.config
        workdir = self.ctx.workers.workdir(wname)
        secret = secrets.token_urlsafe(32).encode()
        auth = os.path.join(self.ctx.workers.secrets_dir(wname), api.AUTH_FILE)
        write_private(auth, secret)
        write_private(self.ctx.workers.held_secret(wname, api.AUTH_FILE), secret)  # the proxy's
        scratch = scratch_dir(cfg.data_dir, wname)
        settings = ImportSettings(
            source="upload",
            content_type=content_type or "kubevirt",
            image_size=vol.capacity,
            volume_mode=vol.volume_mode,
            data_dir=vol.path if vol.volume_mode != BLOCK else None,
            block_device=vol.path if vol.volume_mode == BLOCK else None,
            scratch_dir=scratch,
            filesystem_overhead=overhead,
            preallocation=preallocation,
            checksum=checksum or None,
            max_resumes=0,
            idle_timeout=cfg.importer_idle_timeout,
            owner_uid=uid,
        )
        env = settings.to_env()
        sock = os.path.join(workdir, api.SOCKET_FILE)
        ucfg = upload_config(cfg.data_dir)
        env.update({
            api.ENV_LISTEN: f"unix:{sock}" if len(sock) <= MAX_UNIX_PATH else "127.0.0.1:0",
            api.ENV_AUTH_FILE: auth,
            api.ENV_STATE_FILE: os.path.join(workdir, api.STATE_FILE),
            api.ENV_RESUME_TIMEOUT: repr(ucfg.resume_timeout),
            "UPLOAD_TARGET": f"{ns}/{name}",
        })
        return env

    def drive(self, event_obj: Obj, pvc: Obj, vol: VolumeInfo, overhead: float, content_type: str,
              checksum: str | None, preallocation: bool, retry_limit: int) -> Observed:
        md = pvc["metadata"]
        ns, name = md["namespace"], md["name"]
        wname = api.worker_name(ns, name)
        workers = self.ctx.workers
        pann = md.setdefault("annotations", {})
        self.keep_proxy()
        ws = workers.status(wname)
        if ws is None:
            wait = float(pann.get(RETRY_AFTER, "0") or 0) - time.time()
            if wait > 0:
                return Observed("Retrying", f"restarting the upload server in {wait:.0f}s",
                                requeue=min(wait, 5.0))
            env = self.worker_env(ns, name, event_obj["metadata"]["uid"], vol, overhead, content_type, checksum,
                                  preallocation, wname)
            if int(pann.get(ann.POD_RESTARTS, "0")) > 0:
                self.ctx.volumes.reset(vol.claim_uid)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(env[api.ENV_STATE_FILE])
            workers.start(wname, "upload-server", env, worker_grants(vol, env[ENV_SCRATCH_DIR]))
            self._event(event_obj, "Normal", "UploadScheduled", f"Upload into {name} scheduled")
            self._claim(pvc, {ann.POD_PHASE: "Pending", api.POD_READY: "false", api.UPLOAD_WORKER: wname,
                              api.UPLOAD_SERVER: ""})
            return Observed("Scheduled", "upload server starting", requeue=0.2)

        run = workers.workdir(wname)
        st = _read_state(os.path.join(run, api.STATE_FILE))
        if ws.running:
            state = st.get("state") or api.ST_STARTING
            obs = Observed("Scheduled" if state == api.ST_STARTING else "Ready", state=state,
                           received=int(st.get("received") or 0), total=st.get("total"),
                           address=_server_address(str(st.get("listen") or ""), run),
                           last_error=st.get("lastError"))
            if obs.phase == "Ready":
                if pann.get(api.POD_READY) != "true" or pann.get(api.UPLOAD_SERVER) != obs.address:
                    self._event(event_obj, "Normal", "UploadReady", f"Upload into {name} ready")
                    self._claim(pvc, {ann.POD_PHASE: "Running", api.POD_READY: "true",
                                      api.UPLOAD_SERVER: obs.address})
                err = obs.last_error
                if err and pann.get(LAST_ERROR_SEEN) != str(err.get("time")):
                    msg = err.get("message", "")
                    if err.get("reason") == Reason.TOO_SMALL:
                        msg = f"{msg}"
                    self._event(event_obj, "Warning", "UploadFailed",
                                f"Upload into {name} failed: {err.get('reason')}: {msg}; the volume is ready "
                                "for another upload")
                    self._claim(pvc, {LAST_ERROR_SEEN: str(err.get("time"))})
                if ws.progress is not None and state == api.ST_PROCESSING:
                    obs.stage = ws.progress.stage
                obs.message = self._describe(obs)
            return obs

        # The worker ended.
        result = checked_result(ws.result, vol, content_type)
        self._claim(pvc, {api.POD_READY: "false", api.UPLOAD_SERVER: ""})
        if result is not None and result.outcome == Outcome.SUCCEEDED:
            extra = {ann.POD_PHASE: "Succeeded"}
            if result.preallocation_applied:
                extra[ann.PREALLOCATION_APPLIED] = "true"
            self._claim(pvc, extra)
            if pann.get("embedded.cdi.kubevirt.io/upload-succeeded") != "true":
                note = f" ({result.details.get('format', '')})" if result.details.get("format") else ""
                self._event(event_obj, "Normal", "UploadSucceeded", f"Upload Successful into {name}{note}")
                self._claim(pvc, {"embedded.cdi.kubevirt.io/upload-succeeded": "true"})
            self._cleanup(wname, keep_worker=True)
            total = int(st.get("total") or result.bytes_transferred or 0)
            return Observed("Succeeded", "Upload Complete", received=total, total=total, requeue=None)
        if result is not None and result.outcome == Outcome.PERMANENT:
            self._claim(pvc, {ann.POD_PHASE: "Failed"})
            self._cleanup(wname, keep_worker=True)
            return Observed("Failed", result.message, result.reason, requeue=None)
        # Died or stopped: restart with backoff, up to the retry limit.
        restarts = int(pann.get(ann.POD_RESTARTS, "0")) + 1
        how = f"{result.reason}: {result.message}" if result is not None else self._how(ws)
        workers.clear(wname)
        if restarts > retry_limit:
            self._claim(pvc, {ann.POD_RESTARTS: str(restarts), ann.POD_PHASE: "Failed"})
            return Observed("Failed", f"the upload server failed {restarts} times, more than the retry limit of "
                            f"{retry_limit}; last error: {how}", cond.REASON_RETRY_LIMIT, requeue=None)
        cfg = self.ctx.config
        delay = min(cfg.retry_backoff * (2 ** (restarts - 1)), cfg.retry_backoff_max)
        self._claim(pvc, {ann.POD_RESTARTS: str(restarts), ann.POD_PHASE: "Pending",
                          RETRY_AFTER: f"{time.time() + delay:.3f}"})
        self._event(event_obj, "Warning", "UploadServerRestart",
                    f"upload server for {name} ended ({how}); restarting in {delay:.3g}s")
        return Observed("Retrying", f"upload server ended ({how}); restarting", requeue=delay)

    @staticmethod
    def _how(ws: WorkerStatus) -> str:
        if ws.signal:
            return f"killed by signal {ws.signal}"
        if ws.exit_code is not None:
            return f"exit code {ws.exit_code} without a result"
        return "ended without a result"

    @staticmethod
    def _describe(obs: Observed) -> str:
        total = f" of {human_bytes(obs.total)}" if obs.total else ""
        if obs.state == api.ST_RECEIVING:
            return f"receiving: {human_bytes(obs.received)}{total}"
        if obs.state == api.ST_SUSPENDED:
            return (f"upload interrupted at {human_bytes(obs.received)}{total}; waiting for the client to resume "
                    "(HEAD for Upload-Offset, then send the rest with Content-Range)")
        if obs.state == api.ST_PROCESSING:
            return f"all {human_bytes(obs.received)} received; {(obs.stage or 'processing').lower()}"
        if obs.state == api.ST_DONE:  # an earlier upload's lastError is history now
            return "upload complete; the upload server is finishing"
        if obs.last_error:
            return (f"ready for another upload; the last one failed: {obs.last_error.get('reason')}: "
                    f"{obs.last_error.get('message')}")
        return "upload server ready"

    def _claim(self, pvc: Obj, annotations: dict[str, str]) -> None:
        self.controller._update_claim(pvc, annotations)

    def _event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        self.ctx.store.record_event(obj, type_, reason, message)

    def _cleanup(self, wname: str, keep_worker: bool) -> None:
        import shutil

        shutil.rmtree(os.path.join(self.ctx.config.data_dir, "scratch", wname), ignore_errors=True)
        if not keep_worker:
            self.ctx.workers.delete(wname)

    def finalize(self, namespace: str, name: str) -> None:
        wname = api.worker_name(namespace, name)
        self.ctx.workers.delete(wname)
        self._cleanup(wname, keep_worker=False)


# --- DataVolumes --------------------------------------------------------------------------------


class UploadHandler:
    """The ``upload`` source of DataVolumes (``SourceHandler``)."""

    def __init__(self, controller: DataVolumeController) -> None:
        self.controller = controller
        self.driver = UploadDriver(controller)

    def sync(
        self, dv: Obj, status: dict[str, Any], pvc: Obj, vol: VolumeInfo, req: StorageRequest, kind: str
    ) -> float | None:
        c = self.controller
        spec = dv.get("spec") or {}
        src = (spec.get("source") or {}).get("upload") or {}
        content_type = spec.get("contentType") or "kubevirt"
        want = {api.UPLOAD_TARGET_KEY: "", ann.CONTENT_TYPE: content_type}
        if src.get("checksum"):
            want[api.UPLOAD_CHECKSUM] = str(src["checksum"])
        pann = pvc["metadata"].get("annotations") or {}
        if any(pann.get(k) != v for k, v in want.items()):
            c._update_claim(pvc, want)
        obs = self.driver.drive(dv, pvc, vol, req.overhead, content_type, src.get("checksum"),
                                bool(spec.get("preallocation")), c._retry_limit(dv))
        now = now_iso()
        status["restartCount"] = int((pvc["metadata"].get("annotations") or {}).get(ann.POD_RESTARTS, "0"))
        status["workerLog"] = os.path.join(c.ctx.config.data_dir, "workers",
                                           api.worker_name(dv["metadata"]["namespace"], dv["metadata"]["name"]),
                                           "log")
        if obs.phase in ("Scheduled", "Retrying"):
            c._set_phase(dv, status, DataVolumePhase.UPLOAD_SCHEDULED)
            status["conditions"] = cond.set_condition(status["conditions"], cond.RUNNING, cond.FALSE,
                                                      cond.REASON_SCHEDULED, obs.message, now)
            status["conditions"] = cond.set_condition(status["conditions"], cond.READY, cond.FALSE, "", "", now)
            return obs.requeue
        if obs.phase == "Ready":
            if status.get("phase") != DataVolumePhase.UPLOAD_READY:
                c._event(dv, "Normal", "UploadReady", f"Upload into {dv['metadata']['name']} ready")
            c._set_phase(dv, status, DataVolumePhase.UPLOAD_READY)
            reason = cond.REASON_POD_RUNNING
            if obs.last_error and obs.state == api.ST_READY:
                reason = str(obs.last_error.get("reason") or reason)
            status["conditions"] = cond.set_condition(status["conditions"], cond.RUNNING, cond.TRUE, reason,
                                                      obs.message, now)
            status["conditions"] = cond.set_condition(status["conditions"], cond.READY, cond.FALSE,
                                                      "UploadReady" if obs.state == api.ST_READY
                                                      else cond.REASON_TRANSFER_RUNNING, obs.message, now)
            if obs.total and obs.state in (api.ST_RECEIVING, api.ST_SUSPENDED, api.ST_PROCESSING):
                status["progress"] = f"{min(99.99, 100.0 * obs.received / obs.total):.2f}%"
                status["progressDetail"] = {"bytesDone": obs.received, "bytesTotal": obs.total,
                                            "stage": obs.stage or obs.state}
            elif obs.state in (api.ST_RECEIVING, api.ST_SUSPENDED, api.ST_PROCESSING):
                status["progress"] = "N/A"
                status["progressDetail"] = {"bytesDone": obs.received, "bytesTotal": 0,
                                            "stage": obs.stage or obs.state}
            else:
                status["progress"] = "N/A"
                status.pop("progressDetail", None)
            return obs.requeue
        if obs.phase == "Succeeded":
            c._set_phase(dv, status, DataVolumePhase.SUCCEEDED)
            status["progress"] = "100.0%"
            if obs.total:
                status["progressDetail"] = {"bytesDone": obs.total, "bytesTotal": obs.total, "stage": "Done"}
            status["conditions"] = cond.set_condition(status["conditions"], cond.RUNNING, cond.FALSE,
                                                      cond.REASON_COMPLETED, "Upload Complete", now)
            status["conditions"] = cond.set_condition(status["conditions"], cond.READY, cond.TRUE, "", "", now)
            return None
        # Failed
        message = obs.message
        if obs.reason == Reason.TOO_SMALL:
            message = too_small_message(req, None, None)
        c._fail(dv, status, obs.reason or cond.REASON_ERROR, message)
        with contextlib.suppress(Exception):
            self.controller.ctx.store.record_event(dv, "Warning", "UploadFailed", f"{obs.reason}: {message}")
        return None

    def finalize(self, dv: Obj) -> None:
        md = dv["metadata"]
        self.driver.finalize(md["namespace"], md["name"])


# --- bare PVCs ----------------------------------------------------------------------------------


class UploadClaims:
    """Bare PVCs with ``cdi.kubevirt.io/storage.upload.target`` (bound by ClaimController)."""

    def __init__(self, driver: UploadDriver) -> None:
        self.driver = driver
        self.ctx = driver.ctx

    def reconcile(self, namespace: str, name: str) -> float | None:
        store = self.ctx.store
        pvc = store.get(PVC, namespace, name)
        if pvc is None:
            return None
        md = pvc["metadata"]
        a = md.get("annotations") or {}
        if api.UPLOAD_TARGET_KEY not in a or md.get("ownerReferences"):
            return None
        if md.get("deletionTimestamp"):
            self.driver.finalize(namespace, name)
            return None
        if a.get(ann.POD_PHASE) in ("Succeeded", "Failed"):
            return None
        vol = self.ctx.volumes.lookup(md["uid"])
        if vol is None or (pvc.get("status") or {}).get("phase") != "Bound":
            return 1.0
        try:
            req = resolve({"pvc": pvc.get("spec") or {}}, self.ctx.volumes.default_storage_class(),
                          self.ctx.config.overhead_for)
            overhead = req.overhead
        except Exception:
            overhead = self.ctx.config.filesystem_overhead
        obs = self.driver.drive(pvc, pvc, vol, overhead, a.get(ann.CONTENT_TYPE) or "kubevirt",
                                a.get(api.UPLOAD_CHECKSUM), False, self.ctx.config.retry_limit)
        if obs.phase == "Failed":
            store.record_event(pvc, "Warning", "UploadFailed", f"{obs.reason}: {obs.message}")
        return obs.requeue


def register(manager: Any) -> None:
    """Daemon extension: the upload source, bare upload PVCs, and the upload proxy process."""
    handler = UploadHandler(manager.datavolumes)
    manager.datavolumes.handlers["upload"] = handler
    claims = UploadClaims(handler.driver)
    original = manager.reconcilers.get(PVC)

    def reconcile_claim(namespace: str, name: str) -> float | None:
        pvc = manager.ctx.store.get(PVC, namespace, name)
        upload = pvc is not None and api.UPLOAD_TARGET_KEY in (pvc["metadata"].get("annotations") or {})
        if upload and pvc is not None and pvc["metadata"].get("deletionTimestamp"):
            claims.reconcile(namespace, name)  # stop the server before the volume goes
        after = original(namespace, name) if original is not None else None
        if not upload:
            return after
        try:
            mine = claims.reconcile(namespace, name)
        except NotFoundError:
            mine = None
        waits = [t for t in (after, mine) if t is not None]
        return min(waits) if waits else None

    manager.register(PVC, reconcile_claim)
    # The proxy is started when the first upload target is reconciled (UploadDriver.keep_proxy).
