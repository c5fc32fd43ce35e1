"""A real controller daemon on a temporary data dir, driven through the store like the CLI."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cdi.api.validation import admit
from cdi.backends.embedded.config import open_store
from cdi.controller import daemon
from cdi.controller.datavolume import worker_name

MiB = 1 << 20


class Cluster:
    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.store = open_store(data_dir)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = admit(obj)
        created = self.store.create(obj)
        daemon.ensure_running(self.data_dir)
        return created

    def dv(self, name: str) -> dict[str, Any]:
        return self.store.must_get("DataVolume", "default", name)

    def pvc(self, name: str) -> dict[str, Any]:
        return self.store.must_get("PersistentVolumeClaim", "default", name)

    def wait_phase(self, name: str, phases: tuple[str, ...] = ("Succeeded", "Failed"), timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj = None
        while time.monotonic() < deadline:
            obj = self.store.get("DataVolume", "default", name)
            if obj is not None and (obj.get("status") or {}).get("phase") in phases:
                return obj
            time.sleep(0.05)
        raise AssertionError(f"DataVolume {name} not in {phases} after {timeout}s: {obj.get('status') if obj else None}\n"
                             + Path(self.data_dir, "controller.log").read_text()[-3000:])

    def events(self, name: str) -> list[tuple[str, str]]:
        return [(e["type"], e["reason"]) for e in self.store.events("DataVolume", "default", name)]

    def worker_pid(self, name: str) -> int | None:
        try:
            with open(os.path.join(self.data_dir, "workers", worker_name("default", name), "pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError):
            return None

    def delete_all(self, timeout: float = 60) -> None:
        kinds = ("VirtualMachine", "VirtualMachineInstance", "DataVolume", "PersistentVolumeClaim")
        for vm in self.store.list("VirtualMachine"):
            self.store.delete("VirtualMachine", vm["metadata"]["namespace"], vm["metadata"]["name"])
        for dv in self.store.list("DataVolume"):
            self.store.delete("DataVolume", dv["metadata"]["namespace"], dv["metadata"]["name"])
        daemon.ensure_running(self.data_dir)
        deadline = time.monotonic() + timeout
        while any(self.store.list(k) for k in kinds) and time.monotonic() < deadline:
            for dv in self.store.list("DataVolume"):  # those a VM owned and deleted meanwhile
                if not dv["metadata"].get("deletionTimestamp"):
                    self.store.delete("DataVolume", dv["metadata"]["namespace"], dv["metadata"]["name"])
            time.sleep(0.05)
        assert not self.store.list("VirtualMachine"), "VirtualMachines were not finalized"
        assert not self.store.list("DataVolume"), "DataVolumes were not finalized"
        assert not self.store.list("PersistentVolumeClaim"), "claims were not finalized"


def make_cluster(data_dir: str) -> Cluster:
    """A data dir with fast retries, and a Cluster on it (the daemon starts on the first apply)."""
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, "config.yaml"), "w") as f:
        f.write(
            f"storageClasses:\n  local: {{path: {data_dir}/pools/local, default: true}}\n"
            "retryLimit: 3\nretryBackoffSeconds: 0.2\nretryBackoffMaxSeconds: 1\n"
            "importerIdleTimeoutSeconds: 10\nimporterMaxResumes: 3\n"
        )
    return Cluster(data_dir)


def http_dv(name: str, url: str, size: str = "64Mi", *, api: str = "storage", mode: str | None = None,
            http_extra: dict[str, Any] | None = None, annotations: dict[str, str] | None = None,
            content_type: str | None = None) -> dict[str, Any]:
    storage: dict[str, Any] = {"resources": {"requests": {"storage": size}}}
    if api == "pvc":
        storage["accessModes"] = ["ReadWriteOnce"]
    if mode:
        storage["volumeMode"] = mode
    spec: dict[str, Any] = {"source": {"http": {"url": url, **(http_extra or {})}}, api: storage}
    if content_type:
        spec["contentType"] = content_type
    md: dict[str, Any] = {"name": name}
    if annotations:
        md["annotations"] = annotations
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": md, "spec": spec}

