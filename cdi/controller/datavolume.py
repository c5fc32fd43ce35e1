"""The DataVolume reconciler: DataVolume -> PersistentVolumeClaim + volume -> importer worker.

Level-based and idempotent: each call reads the DataVolume, its claim, its volume and its
worker, computes the status on a copy and writes only what changed. Children have
deterministic names (claim = DataVolume name, worker = ``importer-<namespace>.<name>``, see
``cdi.api.naming``).

State machine of an import (``status.phase``)::

    Pending --(claim bound)--> ImportScheduled --(worker runs)--> ImportInProgress
    ImportInProgress --(result Succeeded)--> Succeeded
    ImportInProgress --(permanent failure)--> Failed
    ImportInProgress --(temporary failure / worker killed)--> ImportInProgress (restartCount+1,
                        backoff, new worker) ... --(retry limit exceeded)--> Failed

Unlike CDI, a failing import does not restart forever: temporary failures are retried with
exponential backoff up to a limit (annotation ``cdi.kubevirt.io/storage.import.retryLimit`` or
``retryLimit`` in config.yaml), permanent ones fail at once with the worker's reason.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from typing import Any, Protocol

from cdi.api import annotations as ann
from cdi.api import conditions as cond
from cdi.api import naming
from cdi.api.contract import BLOCK, ENV_SCRATCH_DIR, ImportSettings, Outcome, Reason, WorkerResult
from cdi.api.phases import TERMINAL_PHASES, DataVolumePhase
from cdi.api.redact import redact_url
from cdi.backends.base import VolumeInfo, VolumeProvisioner, WorkerRunner, WorkerStatus
from cdi.backends.embedded.config import Config
from cdi.common import confinement
from cdi.common.confinement import Grant
from cdi.common.errors import CDIError, ConflictError, NotFoundError, PermanentError
from cdi.common.units import format_quantity
from cdi.controller import secrets as secret_files
from cdi.controller.storage import StorageRequest, resolve, too_small_message
from cdi.store.sqlite import Obj, Store, now_iso

log = logging.getLogger(__name__)

DV = "DataVolume"
PVC = "PersistentVolumeClaim"
IMPORT_SOURCES = ("http", "blank")
COMPONENT = "datavolume-controller"

# Controller-owned claim annotations for retries (persisted so that a restart keeps them).
RETRY_AFTER = "cdi.kubevirt.io/storage.import.retryAfter"
LAST_ERROR = "cdi.kubevirt.io/storage.import.lastError"
RESUMES = "cdi.kubevirt.io/storage.import.resumes"


def worker_name(namespace: str, name: str) -> str:
    return naming.worker_name("importer", namespace, name)


@dataclass
class Context:
    store: Store
    volumes: VolumeProvisioner
    workers: WorkerRunner
    config: Config


class SourceHandler(Protocol):
    """Populates a bound claim for one kind of source (import, upload, ...)."""

    def sync(
        self, dv: Obj, status: dict[str, Any], pvc: Obj, vol: VolumeInfo, req: StorageRequest, kind: str
    ) -> float | None:
        """Drive the population; update ``status`` in place; return seconds to requeue."""
        ...

    def finalize(self, dv: Obj) -> None:
        """The DataVolume is being deleted: stop and remove what this handler started."""
        ...


class DataVolumeController:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.handlers: dict[str, SourceHandler] = {}
        importer = ImportHandler(self)
        for kind in IMPORT_SOURCES:
            self.handlers[kind] = importer

    # -- entry point -----------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str) -> float | None:
        """Reconcile one DataVolume; returns seconds until it should be looked at again."""
        store = self.ctx.store
        dv = store.get(DV, namespace, name)
        if dv is None:
            return None
        if dv["metadata"].get("deletionTimestamp"):
            self._finalize(dv)
            return None
        if ann.DV_FINALIZER not in (dv["metadata"].get("finalizers") or []):
            dv["metadata"].setdefault("finalizers", []).append(ann.DV_FINALIZER)
            dv = store.update(dv)
        status: dict[str, Any] = copy.deepcopy(dv.get("status") or {})
        if status.get("phase") in TERMINAL_PHASES:
            return None
        try:
            requeue = self._sync(dv, status)
        except CDIError as e:
            # A problem the user must fix (or a transient one): shown on the Bound condition.
            requeue = 2.0
            self._show_error(dv, status, e.reason, e.message)
        except Exception as e:
            # A bug or a machine problem (a full disk, a path the OS refuses): the user sees it on
            # the DataVolume; the manager logs it once and backs off.
            self._show_error(dv, status, str(Reason.INTERNAL),
                             f"internal error: {type(e).__name__}: {e}; see the controller log "
                             f"({os.path.join(self.ctx.config.data_dir, 'controller.log')})")
            self._write_status(dv, status)
            raise
        self._write_status(dv, status)
        return requeue

    def _show_error(self, dv: Obj, status: dict[str, Any], reason: str, message: str) -> None:
        """Keep the phase (Pending if none yet) and show the error on the Bound condition."""
        if not status.get("phase"):
            self._set_phase(dv, status, DataVolumePhase.PENDING)
        now = now_iso()
        status["conditions"] = cond.set_condition(
            status.get("conditions", []), cond.BOUND, cond.FALSE, reason, message, now
        )
        status["conditions"] = cond.set_condition(status["conditions"], cond.READY, cond.FALSE, "", "", now)

    # -- the import ------------------------------------------------------------------------

    def _sync(self, dv: Obj, status: dict[str, Any]) -> float | None:
        md, spec = dv["metadata"], dv.get("spec") or {}
        _ns, name = md["namespace"], md["name"]
        now = now_iso()
        status.setdefault("conditions", [])
        status.setdefault("restartCount", 0)
        status.setdefault("progress", "N/A")
        if not status.get("phase"):
            self._set_phase(dv, status, DataVolumePhase.PENDING)
            self._event(dv, "Normal", "Pending", f"DataVolume {name} is pending")

        source = spec.get("source") or {}
        kind = next(iter(source), None) if source else ("sourceRef" if spec.get("sourceRef") else None)
        handler = self.handlers.get(kind or "")
        if handler is None:
            self._fail(
                dv, status, cond.REASON_NOT_SUPPORTED,
                f"source {kind} is not supported yet by this controller (supported: "
                f"{', '.join(sorted(self.handlers))}); use spec.source.http with a URL to the image instead",
            )
            return None

        req = resolve(spec, self.ctx.volumes.default_storage_class(), self.ctx.config.overhead_for)
        pvc = self._ensure_claim(dv, req)
        vol = self._ensure_volume(pvc, req)
        status["claimName"] = name
        status["conditions"] = cond.set_condition(
            status["conditions"], cond.BOUND, cond.TRUE, cond.REASON_BOUND, f"PVC {name} Bound", now
        )
        return handler.sync(dv, status, pvc, vol, req, str(kind))

    def _sync_worker(
        self, dv: Obj, status: dict[str, Any], pvc: Obj, vol: VolumeInfo, req: StorageRequest, kind: str
    ) -> float | None:
        md = dv["metadata"]
        ns, name = md["namespace"], md["name"]
        wname = worker_name(ns, name)
        workers = self.ctx.workers
        ws = workers.status(wname)
        pann = pvc["metadata"].setdefault("annotations", {})
        restarts = int(pann.get(ann.POD_RESTARTS, "0"))
        resumes_before = int(pann.get(RESUMES, "0"))
        now = now_iso()

        if ws is None:
            retry_after = float(pann.get(RETRY_AFTER, "0") or 0)
            wait = retry_after - time.time()
            if wait > 0:
                return min(wait, 5.0)
            try:
                env = self._worker_env(dv, vol, req, kind, wname)
            except PermanentError as e:
                # e.g. a missing Secret or ConfigMap: wait for the user to create it.
                self._set_phase(dv, status, DataVolumePhase.IMPORT_SCHEDULED)
                status["conditions"] = cond.set_condition(
                    status["conditions"], cond.RUNNING, cond.FALSE, e.reason, e.message, now
                )
                status["conditions"] = cond.set_condition(
                    status["conditions"], cond.READY, cond.FALSE, "", "", now
                )
                return 2.0
            if restarts > 0:
                self.ctx.volumes.reset(vol.claim_uid)
            workers.start(wname, "importer", env, worker_grants(vol, env[ENV_SCRATCH_DIR]))
            self._set_phase(dv, status, DataVolumePhase.IMPORT_SCHEDULED)
            self._event(dv, "Normal", "ImportScheduled", f"Import into {name} scheduled")
            status["conditions"] = cond.set_condition(
                status["conditions"], cond.RUNNING, cond.FALSE, cond.REASON_SCHEDULED, "Importer started", now
            )
            status["conditions"] = cond.set_condition(
                status["conditions"], cond.READY, cond.FALSE, cond.REASON_TRANSFER_RUNNING, "", now
            )
            status["workerLog"] = os.path.join(self.ctx.config.data_dir, "workers", wname, "log")
            self._update_claim(pvc, {ann.POD_PHASE: "Pending", ann.IMPORT_POD_NAME: wname})
            return 0.2

        resumes_now = (ws.result.resumes if ws.result else (ws.progress.resumes if ws.progress else 0))
        status["restartCount"] = restarts + resumes_before + resumes_now
        status["workerLog"] = ws.log_path

        if ws.running:
            self._set_phase(dv, status, DataVolumePhase.IMPORT_IN_PROGRESS)
            if status.get("phase") == DataVolumePhase.IMPORT_IN_PROGRESS and pann.get(ann.POD_PHASE) != "Running":
                self._event(dv, "Normal", "ImportInProgress", f"Import into {name} in progress")
                self._update_claim(pvc, {ann.POD_PHASE: "Running"})
            status["conditions"] = cond.set_condition(
                status["conditions"], cond.RUNNING, cond.TRUE, cond.REASON_POD_RUNNING, "", now
            )
            status["conditions"] = cond.set_condition(
                status["conditions"], cond.READY, cond.FALSE, cond.REASON_TRANSFER_RUNNING, "", now
            )
            self._set_progress(status, ws, running=True)
            return 0.5

        return self._finished(dv, status, pvc, req, vol, ws, restarts, resumes_before)

    def _finished(
        self, dv: Obj, status: dict[str, Any], pvc: Obj, req: StorageRequest, vol: VolumeInfo, ws: WorkerStatus,
        restarts: int, resumes_before: int,
    ) -> float | None:
        name = dv["metadata"]["name"]
        now = now_iso()
        result = checked_result(ws.result, vol, (dv.get("spec") or {}).get("contentType") or "kubevirt")
        if result is not None and result.outcome == Outcome.SUCCEEDED:
            self._set_progress(status, ws, running=False)
            status["progress"] = "100.0%"
            self._set_phase(dv, status, DataVolumePhase.SUCCEEDED)
            status["conditions"] = cond.set_condition(
                status["conditions"], cond.RUNNING, cond.FALSE, cond.REASON_COMPLETED, "Import Complete", now
            )
            status["conditions"] = cond.set_condition(
                status["conditions"], cond.READY, cond.TRUE, "", "", now
            )
            extra = {ann.POD_PHASE: "Succeeded"}
            if result.preallocation_applied:
                extra[ann.PREALLOCATION_APPLIED] = "true"
            self._update_claim(pvc, extra)
            note = f" (scratch space used: {result.scratch_reason})" if result.scratch_used else ""
            self._event(dv, "Normal", "ImportSucceeded", f"Successfully imported into PVC {name}{note}")
            self._cleanup_scratch(ws.name)
            return None

        if result is not None and result.outcome == Outcome.PERMANENT:
            message = result.message
            if result.reason == Reason.TOO_SMALL and result.required_capacity is not None:
                # worded for this DataVolume's API form; without a capacity known to fit, the
                # worker's message (how to learn the image's size) stands
                message = too_small_message(req, result.virtual_size, result.usable_size)
            self._update_claim(pvc, {ann.POD_PHASE: "Failed"})
            self._fail(dv, status, result.reason, message)
            self._cleanup_scratch(ws.name)
            return None

        # Temporary failure, or killed without a result.
        if result is None:
            how = f"signal {ws.signal}" if ws.signal else (
                f"exit code {ws.exit_code}" if ws.exit_code is not None else "killed")
            reason = str(Reason.KILLED)
            message = f"importer ended without a result ({how}); see `cdi logs dv {name}`"
        else:
            reason, message = result.reason, result.message
        limit = self._retry_limit(dv)
        restarts += 1
        resumes = resumes_before + (result.resumes if result else (ws.progress.resumes if ws.progress else 0))
        self.ctx.workers.clear(ws.name)
        status["restartCount"] = restarts + resumes
        if restarts > limit:
            self._update_claim(pvc, {ann.POD_RESTARTS: str(restarts), RESUMES: str(resumes), ann.POD_PHASE: "Failed"})
            self._fail(
                dv, status, cond.REASON_RETRY_LIMIT,
                f"import failed {restarts} times, more than the retry limit of {limit}; last error: "
                f"{reason}: {message}. Fix the source, or raise the limit with annotation {ann.RETRY_LIMIT}",
            )
            return None
        delay = float(min(self.ctx.config.retry_backoff * (2 ** (restarts - 1)), self.ctx.config.retry_backoff_max))
        self._update_claim(pvc, {
            ann.POD_RESTARTS: str(restarts), RESUMES: str(resumes), ann.POD_PHASE: "Pending",
            RETRY_AFTER: f"{time.time() + delay:.3f}", LAST_ERROR: f"{reason}: {message}"[:1024],
        })
        self._set_phase(dv, status, DataVolumePhase.IMPORT_IN_PROGRESS)
        text = f"{message}; retrying in {delay:.3g}s (attempt {restarts + 1} of {limit + 1})"
        status["conditions"] = cond.set_condition(status["conditions"], cond.RUNNING, cond.FALSE, reason, text, now_iso())
        self._event(dv, "Warning", "ImportRetry", f"Import into {name} failed: {reason}: {text}")
        return delay

    # -- claim and volume ------------------------------------------------------------------

    def _ensure_claim(self, dv: Obj, req: StorageRequest) -> Obj:
        md = dv["metadata"]
        ns, name, uid = md["namespace"], md["name"], md["uid"]
        pvc = self.ctx.store.get(PVC, ns, name)
        if pvc is not None:
            owners = pvc["metadata"].get("ownerReferences") or []
            if not any(o.get("uid") == uid for o in owners):
                raise ConflictError(
                    f"PersistentVolumeClaim {name} already exists and does not belong to this DataVolume; "
                    "delete it or give the DataVolume another name",
                    reason="ErrResourceExists",
                )
            return pvc
        content_type = (dv.get("spec") or {}).get("contentType") or "kubevirt"
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": PVC,
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {ann.LABEL_APP: ann.LABEL_APP_VALUE},
                "annotations": {
                    ann.CREATED_FOR_DATAVOLUME: uid,
                    ann.CONTENT_TYPE: content_type,
                    ann.POD_RESTARTS: "0",
                },
                "finalizers": [ann.PVC_FINALIZER],
                "ownerReferences": [{
                    "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": DV, "name": name, "uid": uid,
                    "controller": True, "blockOwnerDeletion": True,
                }],
            },
            "spec": {
                "accessModes": list(req.access_modes),
                "volumeMode": req.volume_mode,
                "storageClassName": req.storage_class,
                "resources": {"requests": {"storage": format_quantity(req.capacity)}},
            },
            "status": {"phase": "Pending"},
        }
        source = (dv.get("spec") or {}).get("source") or {}
        if "http" in source:
            body["metadata"]["annotations"][ann.IMPORT_ENDPOINT] = redact_url(source["http"].get("url", ""))
            body["metadata"]["annotations"][ann.IMPORT_SOURCE] = "http"
        elif "blank" in source:
            body["metadata"]["annotations"][ann.IMPORT_SOURCE] = "none"
        pvc = self.ctx.store.create(body)
        self._event(pvc, "Normal", "Provisioning", f"Creating volume for claim {name}")
        return pvc

    def _ensure_volume(self, pvc: Obj, req: StorageRequest) -> VolumeInfo:
        md = pvc["metadata"]
        vol = self.ctx.volumes.lookup(md["uid"]) or self.ctx.volumes.provision(
            md["uid"], md["namespace"], md["name"], req.storage_class, req.volume_mode, req.capacity
        )
        bind_claim(self.ctx.store, pvc, vol)
        return vol

    def _update_claim(self, pvc: Obj, annotations: dict[str, str]) -> None:
        for _ in range(5):
            cur = self.ctx.store.get(PVC, pvc["metadata"]["namespace"], pvc["metadata"]["name"])
            if cur is None:
                return
            a = cur["metadata"].setdefault("annotations", {})
            if all(a.get(k) == v for k, v in annotations.items()):
                pvc["metadata"]["annotations"] = a
                return
            a.update(annotations)
            try:
                new = self.ctx.store.update(cur)
                pvc["metadata"] = new["metadata"]
                return
            except ConflictError:
                continue

    # -- worker settings -------------------------------------------------------------------

    def _worker_env(self, dv: Obj, vol: VolumeInfo, req: StorageRequest, kind: str, wname: str) -> dict[str, str]:
        md, spec = dv["metadata"], dv.get("spec") or {}
        ns = md["namespace"]
        cfg = self.ctx.config
        src = (spec.get("source") or {}).get(kind) or {}
        secrets_dir = self.ctx.workers.secrets_dir(wname)
        access_key = secret_key = cert_dir = headers_dir = None
        if kind == "http":
            if src.get("secretRef"):
                values = secret_files.secret_values(self.ctx.store, ns, src["secretRef"], "spec.source.http.secretRef")
                for key in ("accessKeyId", "secretKey"):
                    if key not in values:
                        raise PermanentError(
                            f'Secret {src["secretRef"]} has no key {key}; it needs accessKeyId (user) and secretKey '
                            "(password)", reason="SecretInvalid",
                        )
                access_key = values["accessKeyId"].decode()
                secret_key = values["secretKey"].decode()
            if src.get("certConfigMap"):
                cert_dir = secret_files.write_configmap(
                    self.ctx.store, ns, src["certConfigMap"], os.path.join(secrets_dir, "certs"),
                    "spec.source.http.certConfigMap",
                )
            if src.get("secretExtraHeaders"):
                headers_dir = secret_files.write_secret_headers(
                    self.ctx.store, ns, src["secretExtraHeaders"], os.path.join(secrets_dir, "headers"),
                )
        scratch = scratch_dir(cfg.data_dir, wname)
        preallocation = spec.get("preallocation")
        settings = ImportSettings(
            source=kind,
            endpoint=src.get("url", "") if kind == "http" else "",
            content_type=spec.get("contentType") or "kubevirt",
            image_size=vol.capacity,
            volume_mode=vol.volume_mode,
            data_dir=vol.path if vol.volume_mode != BLOCK else None,
            block_device=vol.path if vol.volume_mode == BLOCK else None,
            scratch_dir=scratch,
            filesystem_overhead=req.overhead,
            preallocation=bool(preallocation),
            access_key_id=access_key,
            secret_key=secret_key,
            cert_dir=cert_dir,
            insecure_tls=bool(src.get("insecureSkipVerify", False)),
            extra_headers=tuple(src.get("extraHeaders") or ()),
            secret_headers_dir=headers_dir,
            checksum=src.get("checksum"),
            max_resumes=cfg.importer_max_resumes,
            idle_timeout=cfg.importer_idle_timeout,
            owner_uid=md["uid"],
        )
        return settings.to_env()

    def _cleanup_scratch(self, wname: str) -> None:
        shutil.rmtree(os.path.join(self.ctx.config.data_dir, "scratch", wname), ignore_errors=True)

    def _retry_limit(self, dv: Obj) -> int:
        raw = (dv["metadata"].get("annotations") or {}).get(ann.RETRY_LIMIT)
        if raw is not None:
            try:
                return max(0, int(raw))
            except ValueError:
                log.warning("ignoring %s=%r: not a whole number", ann.RETRY_LIMIT, raw)
        return self.ctx.config.retry_limit

    # -- status helpers --------------------------------------------------------------------

    def _set_phase(self, dv: Obj, status: dict[str, Any], phase: str) -> None:
        status["phase"] = str(phase)

    def _set_progress(self, status: dict[str, Any], ws: WorkerStatus, *, running: bool) -> None:
        p = ws.progress
        if p is None:
            return
        pct = p.percent
        if pct is not None:
            # Like CDI, 100% is held back until the worker has finished (convert, resize, sync).
            status["progress"] = f"{min(pct, 99.99) if running else pct:.2f}%"
        detail = {"bytesDone": p.bytes_done, "bytesTotal": p.bytes_total, "stage": p.stage}
        if p.note:
            detail["note"] = p.note
        status["progressDetail"] = detail

    def _fail(self, dv: Obj, status: dict[str, Any], reason: str, message: str) -> None:
        now = now_iso()
        status["phase"] = str(DataVolumePhase.FAILED)
        status.setdefault("conditions", [])
        status["conditions"] = cond.set_condition(status["conditions"], cond.RUNNING, cond.FALSE, reason, message, now)
        status["conditions"] = cond.set_condition(status["conditions"], cond.READY, cond.FALSE, reason, message, now)
        self._event(dv, "Warning", "ImportFailed", f"{reason}: {message}")

    def _write_status(self, dv: Obj, status: dict[str, Any]) -> None:
        store = self.ctx.store
        for _ in range(5):
            if dv.get("status") == status:
                return
            cur = store.get(DV, dv["metadata"]["namespace"], dv["metadata"]["name"])
            if cur is None:
                return
            old_phase = (cur.get("status") or {}).get("phase")
            cur["status"] = status
            try:
                store.update(cur)
                if old_phase != status.get("phase"):
                    log.info("DataVolume %s/%s: %s -> %s", cur["metadata"]["namespace"],
                             cur["metadata"]["name"], old_phase or "(new)", status.get("phase"))
                return
            except ConflictError:
                continue

    def _event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        self.ctx.store.record_event(obj, type_, reason, message)

    # -- deletion --------------------------------------------------------------------------

    def _finalize(self, dv: Obj) -> None:
        md = dv["metadata"]
        ns, name = md["namespace"], md["name"]
        for handler in {id(h): h for h in self.handlers.values()}.values():
            handler.finalize(dv)
        pvc = self.ctx.store.get(PVC, ns, name)
        if pvc is not None and any(o.get("uid") == md["uid"] for o in pvc["metadata"].get("ownerReferences") or []):
            with contextlib.suppress(NotFoundError):
                self.ctx.store.delete(PVC, ns, name)
            finalize_claim(self.ctx.store, self.ctx.volumes, ns, name)
        cur = self.ctx.store.get(DV, ns, name)
        if cur is not None:
            cur["metadata"]["finalizers"] = [f for f in cur["metadata"].get("finalizers") or [] if f != ann.DV_FINALIZER]
            self.ctx.store.update(cur, check_rv=False)


class ImportHandler:
    """Sources read by an importer worker (http, blank; registry, s3, ... later)."""

    def __init__(self, controller: DataVolumeController) -> None:
        self.controller = controller

    def sync(
        self, dv: Obj, status: dict[str, Any], pvc: Obj, vol: VolumeInfo, req: StorageRequest, kind: str
    ) -> float | None:
        return self.controller._sync_worker(dv, status, pvc, vol, req, kind)

    def finalize(self, dv: Obj) -> None:
        md = dv["metadata"]
        wname = worker_name(md["namespace"], md["name"])
        self.controller.ctx.workers.delete(wname)
        self.controller._cleanup_scratch(wname)


def bind_claim(store: Store, pvc: Obj, vol: VolumeInfo) -> Obj:
    """Mark the claim Bound to ``vol`` and record where its disk lives (documented annotations)."""
    md = pvc["metadata"]
    a = md.setdefault("annotations", {})
    want = {ann.DISK_PATH: vol.disk_path, ann.VOLUME_PATH: vol.path}
    if vol.backing_file:
        want[ann.BACKING_FILE] = vol.backing_file
    status = {
        "phase": "Bound",
        "accessModes": (pvc.get("spec") or {}).get("accessModes") or ["ReadWriteOnce"],
        "capacity": {"storage": format_quantity(vol.capacity)},
    }
    spec = pvc.setdefault("spec", {})
    was_bound = (pvc.get("status") or {}).get("phase") == "Bound"
    volume_name = f"pvc-{md['uid']}"
    if all(a.get(k) == v for k, v in want.items()) and pvc.get("status") == status and spec.get("volumeName") == volume_name:
        return pvc
    a.update(want)
    pvc["status"] = status
    spec["volumeName"] = volume_name
    new = store.update(pvc, check_rv=False)
    if not was_bound:
        store.record_event(new, "Normal", "Bound", f"Bound to {vol.volume_mode} volume {vol.disk_path}")
    pvc.update(new)
    return new


def finalize_claim(store: Store, volumes: VolumeProvisioner, namespace: str, name: str) -> None:
    """Release the volume of a claim being deleted, then let the claim go."""
    pvc = store.get(PVC, namespace, name)
    if pvc is None or not pvc["metadata"].get("deletionTimestamp"):
        return
    volumes.release(pvc["metadata"]["uid"])
    pvc["metadata"]["finalizers"] = [f for f in pvc["metadata"].get("finalizers") or [] if f != ann.PVC_FINALIZER]
    store.update(pvc, check_rv=False)


def checked_result(result: WorkerResult | None, vol: VolumeInfo, content_type: str) -> WorkerResult | None:
    """A worker's word that it succeeded, held against the volume: a Filesystem disk must be a
    regular file (a subverted worker could leave ``disk.img`` as a link to a host file or device,
    which a VM would then open as root)."""
    if result is None or result.outcome != Outcome.SUCCEEDED or vol.volume_mode == BLOCK or content_type == "archive":
        return result
    try:
        st = os.lstat(vol.disk_path)
    except OSError as e:
        problem = f"there is no {vol.disk_path} ({e.strerror})"
    else:
        problem = "" if stat.S_ISREG(st.st_mode) else f"{vol.disk_path} is not a regular file"
    if not problem:
        return result
    return WorkerResult(Outcome.PERMANENT, str(Reason.UNSAFE_IMAGE),
                        f"the worker reported success, but {problem}; the volume is not used: delete the "
                        "DataVolume and import again")


def scratch_dir(data_dir: str, wname: str) -> str:
    """The worker's scratch directory (created 0700)."""
    path = os.path.join(data_dir, "scratch", wname)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def worker_grants(vol: VolumeInfo, scratch: str) -> tuple[Grant, ...]:
    """What a worker that fills ``vol`` may use of the machine: the volume and its scratch space."""
    kind = confinement.DEVICE if vol.volume_mode == BLOCK else confinement.DIR
    return (Grant("volume", vol.path, kind), Grant("scratch", scratch))
