"""Small helpers shared by the CLI tests."""

from __future__ import annotations

from typing import Any

from cdi.store.sqlite import Store


def set_status(
    store: Store, kind: str, name: str, status: dict[str, Any], ns: str = "default"
) -> dict[str, Any]:
    o = store.must_get(kind, ns, name)
    o["status"] = status
    return store.update(o)


def patch_meta(store: Store, kind: str, name: str, ns: str = "default", **meta: Any) -> dict[str, Any]:
    o = store.must_get(kind, ns, name)
    o["metadata"].update(meta)
    return store.update(o)


def cond(
    type_: str, status: str, reason: str = "", message: str = "", t: str = "2026-01-01T00:00:00Z"
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": t,
        "lastHeartbeatTime": t,
    }


def pvc(name: str, *, mode: str = "Filesystem", disk: str = "", bound: bool = True) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": "default"}
    if disk:
        md["annotations"] = {
            "embedded.cdi.kubevirt.io/disk-path": disk,
            "embedded.cdi.kubevirt.io/volume-path": disk.rsplit("/", 1)[0],
        }
        if mode == "Block":
            md["annotations"]["embedded.cdi.kubevirt.io/backing-file"] = "/pool/block/default/x.img"
    o: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": md,
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": mode,
            "storageClassName": "local",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    if bound:
        o["spec"]["volumeName"] = f"pvc-{name}"
        o["status"] = {
            "phase": "Bound",
            "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
            "capacity": {"storage": "1Gi"},
        }
    return o
