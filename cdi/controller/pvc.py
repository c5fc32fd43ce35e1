"""The claim reconciler: provisions bare PersistentVolumeClaims and releases deleted ones.

Claims created for a DataVolume are provisioned by the DataVolume reconciler; this one binds
claims a user applied directly, and for every claim being deleted releases its volume before
removing the protection finalizer.
"""

from __future__ import annotations

from cdi.api import annotations as ann
from cdi.controller.datavolume import PVC, Context, bind_claim, finalize_claim
from cdi.controller.storage import resolve
from cdi.store.sqlite import now_iso


class ClaimController:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def reconcile(self, namespace: str, name: str) -> float | None:
        store = self.ctx.store
        pvc = store.get(PVC, namespace, name)
        if pvc is None:
            return None
        md = pvc["metadata"]
        if md.get("deletionTimestamp"):
            finalize_claim(store, self.ctx.volumes, namespace, name)
            return None
        if md.get("ownerReferences"):
            return None  # the owner (a DataVolume) provisions it
        if (pvc.get("status") or {}).get("phase") == "Bound" and self.ctx.volumes.lookup(md["uid"]):
            return None
        if ann.PVC_FINALIZER not in (md.get("finalizers") or []):
            md.setdefault("finalizers", []).append(ann.PVC_FINALIZER)
            pvc = store.update(pvc)
        try:
            req = resolve({"pvc": pvc.get("spec") or {}}, self.ctx.volumes.default_storage_class(),
                          self.ctx.config.overhead_for)
            vol = self.ctx.volumes.lookup(pvc["metadata"]["uid"]) or self.ctx.volumes.provision(
                pvc["metadata"]["uid"], namespace, name, req.storage_class, req.volume_mode, req.capacity
            )
        except Exception as e:
            store.record_event(pvc, "Warning", "ProvisioningFailed", str(e))
            if (pvc.get("status") or {}).get("phase") != "Pending":
                pvc["status"] = {"phase": "Pending"}
                store.update(pvc, check_rv=False)
            return 5.0
        pvc = store.get(PVC, namespace, name) or pvc
        pvc.setdefault("metadata", {}).setdefault("annotations", {}).setdefault(
            "volume.kubernetes.io/bound-at", now_iso())
        bind_claim(store, pvc, vol)
        return None
