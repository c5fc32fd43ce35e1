"""VirtualMachines through the controller and the CLI: DataVolume import -> boot -> lifecycle.

The test guest is served by nginx, imported by a dataVolumeTemplate, and booted by the VM
controller under the real libvirtd; `cdi virt` drives the lifecycle as a user would.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdi.cli.main import main as cdi_main
from cdi.controller import daemon
from tests.peers.cluster import Cluster, make_cluster

from .conftest import BOOT_TIMEOUT, console_lines

pytestmark = [pytest.mark.libvirt, pytest.mark.root, pytest.mark.slow, pytest.mark.peers]


@pytest.fixture
def cluster(tmp_path: Path, libvirt_ready: None) -> Iterator[Cluster]:
    from vm_runtime import admission

    admission.register()  # what importing vm_runtime does; other tests may have undone it
    c = make_cluster(str(tmp_path / "cdi"))
    try:
        yield c
        c.delete_all()
    finally:
        daemon.stop(c.data_dir)


def cdi(c: Cluster, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = cdi_main(["--data-dir", c.data_dir, *args], out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def vm_manifest(name: str, url: str, *, user_data: str | None = None, run: dict[str, Any] | None = None) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [{"name": "root", "dataVolume": {"name": f"{name}-root"}}]
    disks: list[dict[str, Any]] = [{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1}]
    if user_data is not None:
        volumes.append({"name": "cloudinit", "cloudInitNoCloud": {"userData": user_data}})
        disks.append({"name": "cloudinit", "disk": {"bus": "virtio"}})
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
        "spec": {
            **(run or {"running": True}),
            "dataVolumeTemplates": [{
                "metadata": {"name": f"{name}-root"},
                "spec": {"source": {"http": {"url": url}}, "storage": {"resources": {"requests": {"storage": "64Mi"}}}},
            }],
            "template": {"spec": {
                "domain": {"devices": {"disks": disks}, "resources": {"requests": {"memory": "256Mi"}}},
                "volumes": volumes,
                "terminationGracePeriodSeconds": 20,
            }},
        },
    }


def vm_status(c: Cluster, name: str) -> dict[str, Any]:
    return (c.store.get("VirtualMachine", "default", name) or {}).get("status") or {}


def wait_printable(c: Cluster, name: str, wanted: str, timeout: float = BOOT_TIMEOUT) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = vm_status(c, name).get("printableStatus")
        if p and (not seen or seen[-1] != p):
            seen.append(p)
        if p == wanted:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"VM {name} never {wanted}: saw {seen}; status {vm_status(c, name)}; "
                         f"vmi {c.store.get('VirtualMachineInstance', 'default', name)}")


def wait_console(c: Cluster, name: str, prefix: str, timeout: float = BOOT_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        vmi = c.store.get("VirtualMachineInstance", "default", name) or {}
        log = (vmi.get("status") or {}).get("consoleLog")
        for line in console_lines(log) if log else []:
            if line.startswith(prefix):
                return line
        time.sleep(0.2)
    raise AssertionError(f"no {prefix!r} on the console of {name}")


def test_vm_boots_from_an_imported_datavolume_and_follows_virtctl(cluster, nginx, tmp_images, served_path, guest):
    image = tmp_images / "guest.qcow2"
    shutil.copyfile(guest.qcow2, image)
    url = f"{nginx.http_url}/{served_path(image)}"
    cluster.apply(vm_manifest("vm1", url, user_data="pycdi-marker: hello-from-user-data\npycdi-action: wait\n"))
    seen = wait_printable(cluster, "vm1", "Running")
    assert seen[-1] == "Running" and "Stopped" not in seen, seen
    dv = cluster.dv("vm1-root")
    assert dv["status"]["phase"] == "Succeeded"
    assert any(o["kind"] == "VirtualMachine" for o in dv["metadata"]["ownerReferences"])
    assert wait_console(cluster, "vm1", "PYCDI-ROOT ok").endswith(f"token={guest.token}")
    assert wait_console(cluster, "vm1", "PYCDI-CLOUDINIT") == "PYCDI-CLOUDINIT marker=hello-from-user-data"
    wait_console(cluster, "vm1", "PYCDI-GUEST-WAITING")
    vmi = cluster.store.get("VirtualMachineInstance", "default", "vm1")
    assert vmi["status"]["phase"] == "Running" and vmi["status"]["accelerator"] in ("TCG", "KVM")

    rc, out, _ = cdi(cluster, "virt", "vnc-info", "vm1")
    assert rc == 0 and "VNC display of vm1: 127.0.0.1:59" in out  # autoport: 5900 and up
    port = int(out.split("127.0.0.1:")[1].split()[0])
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.recv(12).startswith(b"RFB ")  # a real VNC server answers
    rc, out, _ = cdi(cluster, "virt", "console", "vm1", "--no-follow")
    assert rc == 0 and "PYCDI-CLOUDINIT marker=hello-from-user-data" in out
    rc, out, _ = cdi(cluster, "get", "vm")
    assert rc == 0 and "vm1" in out and "Running" in out

    rc, out, _ = cdi(cluster, "virt", "pause", "vm", "vm1")
    assert rc == 0 and "scheduled to pause" in out
    wait_printable(cluster, "vm1", "Paused", timeout=30)
    rc, _, _ = cdi(cluster, "virt", "unpause", "vm", "vm1")
    assert rc == 0
    wait_printable(cluster, "vm1", "Running", timeout=30)

    rc, out, err = cdi(cluster, "virt", "start", "vm1")
    assert rc != 0 and "already running" in (out + err)
    # `cdi virt console` follows the serial console until the VMI is gone.
    followed: list[tuple[int, str, str]] = []
    follower = threading.Thread(target=lambda: followed.append(cdi(cluster, "virt", "console", "vm1", "--timeout", "90")))
    follower.start()
    time.sleep(0.5)
    rc, _, _ = cdi(cluster, "virt", "stop", "vm1")
    assert rc == 0
    wait_printable(cluster, "vm1", "Stopped", timeout=60)
    assert cluster.store.get("VirtualMachineInstance", "default", "vm1") is None
    assert cluster.store.get("VirtualMachine", "default", "vm1")["spec"]["running"] is False
    follower.join(timeout=100)
    rc, out, _ = followed[0]
    # The guest saw the ACPI power button (a graceful stop), not a hard kill.
    assert rc == 0 and "PYCDI-GUEST-ACPI-POWEROFF" in out

    rc, _, _ = cdi(cluster, "virt", "start", "vm1")
    assert rc == 0
    wait_printable(cluster, "vm1", "Running")


def test_manual_vm_runs_once_and_a_failed_datavolume_shows(cluster, nginx, bad_http, tmp_images, served_path, guest):
    image = tmp_images / "guest.raw"
    shutil.copyfile(guest.raw, image)
    cluster.apply(vm_manifest("once", f"{nginx.http_url}/{served_path(image)}", run={"runStrategy": "Manual"}))
    cluster.apply(vm_manifest("broken", bad_http.url_for(f"404/{served_path(image)}")))
    seen = wait_printable(cluster, "once", "Stopped", timeout=60)  # Manual: imported, but not started
    assert cluster.dv("once-root")["status"]["phase"] == "Succeeded"
    assert seen[0] == "Provisioning", seen
    rc, _, _ = cdi(cluster, "virt", "start", "once")
    assert rc == 0
    line = wait_console(cluster, "once", "PYCDI-GUEST-OK")  # then the guest powers itself off
    assert "disks=vda" in line
    wait_printable(cluster, "once", "Stopped")
    assert cluster.store.get("VirtualMachineInstance", "default", "once")["status"]["phase"] == "Succeeded"

    seen = wait_printable(cluster, "broken", "DataVolumeError", timeout=60)
    assert "Running" not in seen
    cond = {c["type"]: c for c in vm_status(cluster, "broken")["conditions"]}["DataVolumesReady"]
    assert cond["reason"] == "DataVolumeError" and "NotFound" in cond["message"]
