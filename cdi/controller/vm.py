"""VirtualMachine and VirtualMachineInstance reconcilers (KubeVirt's virt-controller/virt-handler).

VirtualMachine: creates the DataVolumes of ``spec.dataVolumeTemplates`` (owned by the VM),
decides from the run strategy (and ``status.stateChangeRequests`` for Manual) whether a VMI
should exist, creates it once every DataVolume it uses has Succeeded, deletes it to stop, and
reports ``printableStatus`` (Stopped, Provisioning, Starting, Running, Paused, Stopping,
Terminating, DataVolumeError, ...).

VirtualMachineInstance: resolves its volumes to disks on this machine (the claims' disk paths)
and runs it with a ``vm_runtime.Launcher`` (libvirt); the launcher's status is written back to
the VMI. Pause/unpause requests arrive as the annotation ``pycdi.kubevirt.io/paused``.
Domains live in libvirtd, so a controller restart adopts the running ones.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from pathlib import Path
from typing import Any

# The VM runtime registers VirtualMachine/VirtualMachineInstance admission when imported; the
# launcher itself (libvirt) is imported only when a VMI runs.
import vm_runtime  # noqa: F401
from cdi.api import annotations as ann
from cdi.api import conditions as cond
from cdi.api.validation import admit
from cdi.api.virtualmachine import (
    RunStrategy,
    VMIPhase,
    VolumeKind,
    effective_run_strategy,
    parse_vmi_spec,
    printable_status,
)
from cdi.common.errors import CDIError, ConflictError, NotFoundError
from cdi.controller.datavolume import DV, PVC, Context
from cdi.store.sqlite import Obj, now_iso

log = logging.getLogger(__name__)

VM = "VirtualMachine"
VMI = "VirtualMachineInstance"
VM_FINALIZER = "kubevirt.io/virtualMachineControllerFinalize"
VMI_FINALIZER = "kubevirt.io/virtualMachineInstanceFinalize"
PAUSED = "pycdi.kubevirt.io/paused"  # "true" / "false": the user's pause request on a VMI
FINAL = {VMIPhase.SUCCEEDED.value, VMIPhase.FAILED.value}


def _owned_by(obj: Obj, owner: Obj) -> bool:
    return any(o.get("uid") == owner["metadata"]["uid"] for o in obj["metadata"].get("ownerReferences") or [])


def _owner_ref(owner: Obj) -> dict[str, Any]:
    return {"apiVersion": owner.get("apiVersion", "kubevirt.io/v1"), "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


class VirtualMachineController:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def reconcile(self, namespace: str, name: str) -> float | None:
        store = self.ctx.store
        vm = store.get(VM, namespace, name)
        if vm is None:
            return None
        md, spec = vm["metadata"], vm.get("spec") or {}
        vmi = store.get(VMI, namespace, name)
        if md.get("deletionTimestamp"):
            return self._finalize(vm, vmi)
        if VM_FINALIZER not in (md.get("finalizers") or []):
            md.setdefault("finalizers", []).append(VM_FINALIZER)
            vm = store.update(vm)
        status: dict[str, Any] = copy.deepcopy(vm.get("status") or {})
        strategy = effective_run_strategy(spec)
        self._ensure_data_volumes(vm)
        dv_ready, dv_failed, dv_message = self._data_volumes(vm)

        requests = list(status.get("stateChangeRequests") or [])
        if requests:
            # virtctl start/stop/restart: each request stays queued until it is fulfilled.
            if self._fulfil(vm, vmi, requests[0], strategy, dv_ready):
                requests.pop(0)
            if requests:
                status["stateChangeRequests"] = requests
            else:
                status.pop("stateChangeRequests", None)
        elif strategy != RunStrategy.MANUAL:
            want = strategy in (RunStrategy.ALWAYS, RunStrategy.RERUN_ON_FAILURE)
            if want and vmi is None and dv_ready:
                self._create_vmi(vm, strategy)
            elif not want and vmi is not None and not vmi["metadata"].get("deletionTimestamp"):
                store.delete(VMI, namespace, name)
        vmi = store.get(VMI, namespace, name)

        vmi_status = (vmi or {}).get("status") or {}
        phase = VMIPhase(vmi_status["phase"]) if vmi_status.get("phase") else (VMIPhase.PENDING if vmi else None)
        paused = any(c.get("type") == "Paused" and c.get("status") == "True" for c in vmi_status.get("conditions") or [])
        printable = printable_status(
            run_strategy=strategy, vmi_phase=phase, paused=paused,
            vmi_deleting=bool(vmi and vmi["metadata"].get("deletionTimestamp")),
            data_volumes_ready=dv_ready, data_volume_failed=dv_failed,
        )
        now = now_iso()
        status["printableStatus"] = printable.value
        status["created"] = vmi is not None
        status["ready"] = phase == VMIPhase.RUNNING and not paused
        status["runStrategy"] = strategy.value
        conds = status.get("conditions") or []
        conds = cond.set_condition(conds, cond.READY, cond.TRUE if status["ready"] else cond.FALSE,
                                   "" if status["ready"] else "VMINotRunning" if vmi else "VMINotExists", "", now)
        if dv_failed:
            conds = cond.set_condition(conds, "DataVolumesReady", cond.FALSE, "DataVolumeError", dv_message, now)
        elif not dv_ready:
            conds = cond.set_condition(conds, "DataVolumesReady", cond.FALSE, "NotAllDataVolumesReady", dv_message, now)
        else:
            conds = cond.set_condition(conds, "DataVolumesReady", cond.TRUE, "AllDataVolumesReady", "", now)
        status["conditions"] = conds
        if vm.get("status") != status:
            if (vm.get("status") or {}).get("printableStatus") != status["printableStatus"]:
                store.record_event(vm, "Normal" if not dv_failed else "Warning", status["printableStatus"],
                                   f"VirtualMachine {name} is {status['printableStatus']}"
                                   + (f": {dv_message}" if dv_failed else ""))
            vm["status"] = status
            try:
                store.update(vm)
            except ConflictError:
                return 0.2
        return 1.0

    def _fulfil(self, vm: Obj, vmi: Obj | None, request: dict[str, Any], strategy: RunStrategy,
                dv_ready: bool) -> bool:
        """Act on one state change request; True once it is done."""
        store = self.ctx.store
        ns, name = vm["metadata"]["namespace"], vm["metadata"]["name"]
        deleting = vmi is not None and bool(vmi["metadata"].get("deletionTimestamp"))
        if request.get("action") == "Stop":
            if vmi is not None and not deleting:
                store.delete(VMI, ns, name)
            return vmi is None
        # Start: replace a VMI that has ended, wait for one being deleted, create one if none.
        if vmi is not None:
            if deleting:
                return False
            if ((vmi.get("status") or {}).get("phase")) in FINAL:
                store.delete(VMI, ns, name)
                return False
            return True
        if not dv_ready:
            return False
        self._create_vmi(vm, strategy)
        return True

    def _ensure_data_volumes(self, vm: Obj) -> None:
        store = self.ctx.store
        ns = vm["metadata"]["namespace"]
        for t in (vm.get("spec") or {}).get("dataVolumeTemplates") or []:
            tmd = t.get("metadata") or {}
            name = tmd["name"]
            existing = store.get(DV, ns, name)
            if existing is not None:
                continue
            obj = {
                "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": DV,
                "metadata": {**copy.deepcopy(tmd), "namespace": ns, "ownerReferences": [_owner_ref(vm)]},
                "spec": copy.deepcopy(t.get("spec") or {}),
            }
            store.create(admit(obj))
            store.record_event(vm, "Normal", "SuccessfulDataVolumeCreate", f"Created DataVolume {name}")

    def _data_volumes(self, vm: Obj) -> tuple[bool, bool, str]:
        """(all ready, one failed, message) for the dataVolume and PVC volumes of the template."""
        store = self.ctx.store
        ns = vm["metadata"]["namespace"]
        volumes = (((vm.get("spec") or {}).get("template") or {}).get("spec") or {}).get("volumes") or []
        ready, failed, messages = True, False, []
        for v in volumes:
            claim = (v.get("dataVolume") or {}).get("name") or (v.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim:
                continue
            dv = store.get(DV, ns, claim)
            if dv is None:
                if "dataVolume" in v or store.get(PVC, ns, claim) is None:
                    ready = False
                    messages.append(f"{'DataVolume' if 'dataVolume' in v else 'PersistentVolumeClaim'} {claim} not found")
                continue
            st = dv.get("status") or {}
            phase = st.get("phase")
            if phase == "Failed":
                failed = True
                running = cond.find(st.get("conditions") or [], cond.RUNNING) or {}
                messages.append(f"DataVolume {claim} failed: {running.get('reason', '')}: {running.get('message', '')}")
            elif phase != "Succeeded":
                ready = False
                messages.append(f"DataVolume {claim} is {phase or 'Pending'} ({st.get('progress', 'N/A')})")
        return ready and not failed, failed, "; ".join(messages)

    def _create_vmi(self, vm: Obj, strategy: RunStrategy) -> None:
        tmpl = (vm.get("spec") or {}).get("template") or {}
        tmd = copy.deepcopy(tmpl.get("metadata") or {})
        md = vm["metadata"]
        obj = {
            "apiVersion": "kubevirt.io/v1", "kind": VMI,
            "metadata": {"name": md["name"], "namespace": md["namespace"], "labels": tmd.get("labels") or {},
                         "annotations": {**(tmd.get("annotations") or {}), "pycdi.kubevirt.io/runStrategy": strategy.value},
                         "ownerReferences": [_owner_ref(vm)], "finalizers": [VMI_FINALIZER]},
            "spec": copy.deepcopy(tmpl.get("spec") or {}),
        }
        self.ctx.store.create(admit(obj))
        self.ctx.store.record_event(vm, "Normal", "SuccessfulCreate", f"Created virtual machine instance {md['name']}")

    def _finalize(self, vm: Obj, vmi: Obj | None) -> float | None:
        store = self.ctx.store
        md = vm["metadata"]
        if vmi is not None:
            if not vmi["metadata"].get("deletionTimestamp"):
                store.delete(VMI, md["namespace"], md["name"])
            return 0.5
        for dv in store.list(DV, md["namespace"]):
            if _owned_by(dv, vm) and not dv["metadata"].get("deletionTimestamp"):
                store.delete(DV, md["namespace"], dv["metadata"]["name"])
        cur = store.get(VM, md["namespace"], md["name"])
        if cur is not None:
            cur["metadata"]["finalizers"] = [f for f in cur["metadata"].get("finalizers") or [] if f != VM_FINALIZER]
            store.update(cur, check_rv=False)
        return None


class VirtualMachineInstanceController:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.launchers: dict[tuple[str, str], Any] = {}
        self.stopping: dict[tuple[str, str], threading.Thread] = {}

    def close(self) -> None:
        """Stop watching the domains; they keep running in libvirtd."""
        for launcher in self.launchers.values():
            launcher.close()
        self.launchers.clear()

    def reconcile(self, namespace: str, name: str) -> float | None:
        store = self.ctx.store
        vmi = store.get(VMI, namespace, name)
        if vmi is None:
            return None
        md = vmi["metadata"]
        key = (namespace, name)
        if md.get("deletionTimestamp"):
            # A graceful stop takes up to the grace period: do it off the reconcile loop.
            launcher = self.launchers.pop(key, None)
            if launcher is not None:
                grace = float((vmi.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
                stopper = threading.Thread(target=launcher.delete, kwargs={"grace": grace}, daemon=True,
                                           name=f"stop-{namespace}-{name}")
                stopper.start()
                self.stopping[key] = stopper
            t = self.stopping.get(key)
            if t is not None and t.is_alive():
                return 0.5
            self.stopping.pop(key, None)
            cur = store.get(VMI, namespace, name)
            if cur is not None:
                cur["metadata"]["finalizers"] = [f for f in cur["metadata"].get("finalizers") or [] if f != VMI_FINALIZER]
                store.update(cur, check_rv=False)
            return None
        if VMI_FINALIZER not in (md.get("finalizers") or []):
            md.setdefault("finalizers", []).append(VMI_FINALIZER)
            vmi = store.update(vmi)
        launcher = self.launchers.get(key)
        if launcher is None:
            try:
                launcher = self._launch(vmi)
            except CDIError as e:
                self._write_status(namespace, name, {"phase": VMIPhase.PENDING.value, "reason": e.reason,
                                                     "message": e.message})
                return 2.0
            except Exception as e:
                from vm_runtime.errors import VolumeNotReady

                if isinstance(e, VolumeNotReady):
                    self._write_status(namespace, name, {"phase": VMIPhase.PENDING.value,
                                                         "reason": "VolumeNotReady", "message": str(e)})
                    return 2.0
                log.exception("VMI %s/%s failed to start", namespace, name)
                self._write_status(namespace, name, {"phase": VMIPhase.FAILED.value, "reason": type(e).__name__,
                                                     "message": str(e)})
                return None
        want_paused = (md.get("annotations") or {}).get(PAUSED)
        st = launcher.status()
        is_paused = any(c.get("type") == "Paused" and c.get("status") == "True" for c in st.get("conditions") or [])
        try:
            if want_paused == "true" and not is_paused and st.get("phase") == VMIPhase.RUNNING.value:
                launcher.pause()
            elif want_paused == "false" and is_paused:
                launcher.unpause()
        except Exception as e:
            store.record_event(vmi, "Warning", "PauseFailed", str(e))
        self._write_status(namespace, name, launcher.status())
        return 1.0

    def _launch(self, vmi: Obj) -> Any:
        from vm_runtime import Identity, ResolvedVolume, VolumeMode
        from vm_runtime.lifecycle import Launcher

        md = vmi["metadata"]
        ns, name = md["namespace"], md["name"]
        spec = parse_vmi_spec(vmi.get("spec") or {})
        volumes: dict[str, ResolvedVolume] = {}
        for v in spec.volumes:
            if v.kind in (VolumeKind.DATA_VOLUME, VolumeKind.PVC, VolumeKind.EPHEMERAL):
                pvc = self.ctx.store.get(PVC, ns, v.claim_name or "")
                if pvc is None or (pvc.get("status") or {}).get("phase") != "Bound":
                    raise NotFoundError(f"volume {v.name}: claim {v.claim_name} is not bound yet", reason="VolumeNotReady")
                dv = self.ctx.store.get(DV, ns, v.claim_name or "")
                if dv is not None and (dv.get("status") or {}).get("phase") != "Succeeded":
                    raise NotFoundError(f"volume {v.name}: DataVolume {v.claim_name} has not succeeded yet",
                                        reason="VolumeNotReady")
                a = pvc["metadata"].get("annotations") or {}
                mode = VolumeMode.BLOCK if (pvc.get("spec") or {}).get("volumeMode") == "Block" else VolumeMode.FILESYSTEM
                shared = "ReadWriteMany" in ((pvc.get("spec") or {}).get("accessModes") or [])
                volumes[v.name] = ResolvedVolume(mode, a[ann.DISK_PATH], shared=shared, readonly=v.readonly)
            elif v.kind == VolumeKind.CONTAINER_DISK:
                image = v.image or ""
                if not os.path.isabs(image):
                    raise NotFoundError(
                        f"volume {v.name}: containerDisk image {image!r} must be an absolute path to a local "
                        "qcow2 or raw file on the embedded backend", reason="ContainerDiskNotFound")
                volumes[v.name] = ResolvedVolume(VolumeMode.FILESYSTEM, image, readonly=True)
        strategy = RunStrategy((md.get("annotations") or {}).get("pycdi.kubevirt.io/runStrategy", RunStrategy.MANUAL.value))

        def on_status(st: dict[str, Any]) -> None:
            try:
                self._write_status(ns, name, st)
            except Exception:
                log.exception("VMI %s/%s: status update failed", ns, name)

        launcher = Launcher(Identity(ns, name, md["uid"]), spec, volumes,
                            run_dir=Path(self.ctx.config.data_dir) / "vms" / ns / name,
                            run_strategy=strategy, on_status=on_status)
        if launcher.status()["phase"] not in (VMIPhase.RUNNING.value,):
            try:
                launcher.start()
            except BaseException:
                launcher.close()  # its watcher thread and libvirt connection, or they pile up per retry
                raise
            self.ctx.store.record_event(vmi, "Normal", "Started", f"VirtualMachineInstance {name} started "
                                        f"({launcher.status().get('accelerator', '')})")
        self.launchers[(ns, name)] = launcher
        return launcher

    def _write_status(self, namespace: str, name: str, st: dict[str, Any]) -> None:
        store = self.ctx.store
        for _ in range(5):
            cur = store.get(VMI, namespace, name)
            if cur is None or cur.get("status") == st:
                return
            old_phase = (cur.get("status") or {}).get("phase")
            cur["status"] = st
            try:
                store.update(cur)
            except ConflictError:
                continue
            if old_phase != st.get("phase"):
                store.record_event(cur, "Warning" if st.get("phase") == "Failed" else "Normal", st.get("phase", ""),
                                   f"VirtualMachineInstance {name} is {st.get('phase')}"
                                   + (f": {st.get('message')}" if st.get("message") else ""))
            return


def register(manager: Any) -> None:
    """Daemon extension: reconcile VirtualMachines and VirtualMachineInstances."""
    ctx = manager.ctx
    vms = VirtualMachineController(ctx)
    vmis = VirtualMachineInstanceController(ctx)
    manager.register(VM, vms.reconcile)
    manager.register(VMI, vmis.reconcile)
    manager.on_shutdown.append(vmis.close)
