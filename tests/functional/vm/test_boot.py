"""Boot the test guest (images/guest) under the real libvirtd through vm_runtime.Launcher.

The guest prints PYCDI-* lines on its serial console (images/guest/init): the token of its root
fs, the sha256 of each data disk, the `pycdi-marker:` of its cloud-init user-data, then does its
`pycdi-action:` (poweroff by default, wait, panic).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cdi.api.virtualmachine import RunStrategy, VMIPhase
from tests.functional.vm.conftest import BOOT_TIMEOUT, Guest, copy_disk, fields, wait_console
from vm_runtime import ResolvedVolume, VolumeMode  # imported at collection (registers admitters once)

pytestmark = [pytest.mark.libvirt, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]


def spec(disks: list[tuple[str, dict[str, Any]]], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "domain": {
            "memory": {"guest": "256Mi"},
            "devices": {"disks": [{"name": n, "disk": d} for n, d in disks]},
        },
        "volumes": volumes,
        "terminationGracePeriodSeconds": 60,
    }


def cloud_init(action: str = "poweroff", marker: str = "") -> dict[str, Any]:
    user_data = f"#cloud-config\npycdi-marker: {marker}\npycdi-action: {action}\n"
    return {
        "name": "cloudinit",
        "cloudInitNoCloud": {"userDataBase64": base64.b64encode(user_data.encode()).decode()},
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fs_volume(tmp_path: Path, name: str, src: Path) -> Any:
    vol = tmp_path / "pool" / name
    vol.mkdir(parents=True)
    copy_disk(src, vol / "disk.img")
    return ResolvedVolume(VolumeMode.FILESYSTEM, str(vol))


def test_raw_filesystem_volume_data_disk_and_poweroff(
    guest: Guest, make_launcher: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data.img"
    data.write_bytes(os.urandom(1 << 20))
    launcher = make_launcher(
        spec(
            [("rootdisk", {"bus": "virtio"}), ("data", {"bus": "virtio"})],
            [
                {"name": "rootdisk", "dataVolume": {"name": "vm-root"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
            ],
        ),
        {
            "rootdisk": fs_volume(tmp_path, "root", guest.raw),
            "data": ResolvedVolume(VolumeMode.FILESYSTEM, str(data)),
        },
    )
    t0 = time.monotonic()
    launcher.start()
    # The guest powers itself off: the status must say so (events, then the state loop).
    st = launcher.wait_for_phase(VMIPhase.SUCCEEDED, VMIPhase.FAILED, timeout=BOOT_TIMEOUT)
    elapsed = time.monotonic() - t0
    assert st["phase"] == "Succeeded", st
    assert st["domainState"] == "shutoff/shutdown" and st["message"] == "guest powered off"
    assert st["accelerator"] == ("KVM" if launcher.accelerator == "kvm" else "TCG")
    assert [(v["name"], v["target"]) for v in st["volumeStatus"]] == [("rootdisk", "vda"), ("data", "vdb")]
    assert [p["phase"] for p in st["phaseTransitionTimestamps"]] == ["Scheduled", "Running", "Succeeded"]
    (root,) = wait_console(launcher, "PYCDI-ROOT ", timeout=5)
    assert fields(root)["token"] == guest.token
    (disk,) = wait_console(launcher, "PYCDI-DISK ", timeout=5)
    assert fields(disk) == {"name": "vdb", "bytes": str(1 << 20), "sha256": sha256(data)}
    (ok,) = wait_console(launcher, "PYCDI-GUEST-OK ", timeout=5)
    assert fields(ok)["disks"] == "vda,vdb,"
    assert 'type="file"' in (launcher.run_dir / "domain.xml").read_text()
    print(f"raw boot to poweroff: {elapsed:.1f}s")


def test_block_volume_on_loop_device(
    guest: Guest, make_launcher: Any, tmp_path: Path, loop_device: Any
) -> None:
    backing = copy_disk(guest.raw, tmp_path / "root-block.img")
    dev = loop_device(backing)
    launcher = make_launcher(
        spec([("rootdisk", {"bus": "virtio"})], [{"name": "rootdisk", "dataVolume": {"name": "vm-root"}}]),
        {"rootdisk": ResolvedVolume(VolumeMode.BLOCK, dev)},
    )
    launcher.start()
    xml = (launcher.run_dir / "domain.xml").read_text()
    assert f'<source dev="{dev}" />' in xml and '<disk type="block" device="disk">' in xml
    st = launcher.wait_for_phase(VMIPhase.SUCCEEDED, VMIPhase.FAILED, timeout=BOOT_TIMEOUT)
    assert st["phase"] == "Succeeded", st
    (root,) = wait_console(launcher, "PYCDI-ROOT ", timeout=5)
    assert fields(root)["token"] == guest.token
    wait_console(launcher, "PYCDI-GUEST-OK ", timeout=5)


def test_container_disk_qcow2_overlay(guest: Guest, make_launcher: Any, tmp_path: Path) -> None:
    base = copy_disk(guest.qcow2, tmp_path / "containerdisk.qcow2")
    before = sha256(base)
    launcher = make_launcher(
        spec(
            [("rootdisk", {"bus": "virtio"})], [{"name": "rootdisk", "containerDisk": {"image": str(base)}}]
        ),
        {},
    )
    launcher.start()
    xml = (launcher.run_dir / "domain.xml").read_text()
    assert 'type="qcow2"' in xml and "rootdisk.containerdisk.qcow2" in xml
    st = launcher.wait_for_phase(VMIPhase.SUCCEEDED, VMIPhase.FAILED, timeout=BOOT_TIMEOUT)
    assert st["phase"] == "Succeeded", st
    wait_console(launcher, "PYCDI-GUEST-OK ", timeout=5)
    assert sha256(base) == before  # the image is only ever a backing file


def test_cloud_init_user_data_reaches_the_guest(guest: Guest, make_launcher: Any, tmp_path: Path) -> None:
    marker = f"value-{os.getpid()}-{time.monotonic_ns() % 100000}"
    launcher = make_launcher(
        spec(
            [("rootdisk", {"bus": "virtio"}), ("cloudinit", {"bus": "virtio"})],
            [{"name": "rootdisk", "dataVolume": {"name": "vm-root"}}, cloud_init(marker=marker)],
        ),
        {"rootdisk": fs_volume(tmp_path, "root", guest.raw)},
    )
    launcher.start()
    (line,) = wait_console(launcher, "PYCDI-CLOUDINIT ")
    assert fields(line)["marker"] == marker
    st = launcher.wait_for_phase(VMIPhase.SUCCEEDED, VMIPhase.FAILED, timeout=BOOT_TIMEOUT)
    assert st["phase"] == "Succeeded", st
    # The cidata disk is not a data disk: no PYCDI-DISK line for it.
    assert not [ln for ln in wait_console(launcher, "PYCDI-") if ln.startswith("PYCDI-DISK")]


def test_pause_unpause_stop_start_round_trip(guest: Guest, make_launcher: Any, tmp_path: Path) -> None:
    from vm_runtime import qmp

    launcher = make_launcher(
        spec(
            [("rootdisk", {"bus": "virtio"}), ("cloudinit", {"bus": "virtio"})],
            [{"name": "rootdisk", "dataVolume": {"name": "vm-root"}}, cloud_init(action="wait")],
        ),
        {"rootdisk": fs_volume(tmp_path, "root", guest.raw)},
    )
    launcher.start()
    wait_console(launcher, "PYCDI-GUEST-WAITING")
    st = launcher.wait_for(lambda s: s["phase"] == "Running", timeout=10)
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"

    # QMP: what libvirt does not report.
    sock = str(launcher.qmp_socket)
    assert qmp.run_state(sock) == "running"
    stats = {s.device: s for s in qmp.block_stats(sock)}
    assert stats["ua-rootdisk"].rd_bytes > 0, stats

    launcher.pause()
    st = launcher.wait_for(
        lambda s: any(c["type"] == "Paused" and c["status"] == "True" for c in s["conditions"]), timeout=10
    )
    assert st["phase"] == "Running" and st["domainState"] == "paused/user"
    paused = next(c for c in st["conditions"] if c["type"] == "Paused")
    assert paused["reason"] == "PausedByUser"
    assert qmp.run_state(sock) == "paused"

    launcher.unpause()
    st = launcher.wait_for(lambda s: not any(c["type"] == "Paused" for c in s["conditions"]), timeout=10)
    assert st["domainState"] == "running"
    assert qmp.run_state(sock) == "running"

    # Graceful stop: the guest sees the ACPI power button and powers off within the grace period.
    t0 = time.monotonic()
    launcher.stop(grace=60)
    assert time.monotonic() - t0 < 60
    wait_console(launcher, "PYCDI-GUEST-ACPI-POWEROFF", timeout=5)
    st = launcher.status()
    assert st["phase"] == "Succeeded" and st["domainState"] == "shutoff/shutdown", st

    # Start again (a fresh run), then a hard stop.
    launcher.start()
    wait_console(launcher, "PYCDI-GUEST-WAITING", count=2)
    launcher.wait_for(lambda s: s["phase"] == "Running", timeout=10)
    launcher.stop(grace=0)
    st = launcher.status()
    assert st["phase"] == "Succeeded" and st["domainState"] == "shutoff/destroyed", st
    assert st["restartCount"] == 0


def test_a_new_launcher_adopts_a_running_guest(guest: Guest, make_launcher: Any, tmp_path: Path) -> None:
    """A controller restart: the next launcher for the same VMI finds the domain and reports it."""
    from vm_runtime.lifecycle import Launcher

    s, volumes, first = _running_guest(guest, make_launcher, tmp_path)
    first.close()  # the controller went away; the guest keeps running
    try:
        second = Launcher(first.identity, s, volumes, run_dir=first.run_dir)
    except BaseException:
        _destroy_domain(first.identity.domain_name)
        raise
    try:
        st = second.wait_for(lambda st: st["phase"] == "Running", timeout=10)
        assert st["domainState"] == "running"
    finally:
        second.delete(grace=0, keep_run_dir=True)


def _running_guest(guest: Guest, make_launcher: Any, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(spec, volumes, launcher) of a guest that boots and waits."""
    s = spec(
        [("rootdisk", {"bus": "virtio"}), ("cloudinit", {"bus": "virtio"})],
        [{"name": "rootdisk", "dataVolume": {"name": "vm-root"}}, cloud_init(action="wait")],
    )
    volumes = {"rootdisk": fs_volume(tmp_path, "root", guest.raw)}
    launcher = make_launcher(s, volumes)
    launcher.start()
    wait_console(launcher, "PYCDI-GUEST-WAITING")
    launcher.wait_for(lambda st: st["phase"] == "Running", timeout=10)
    return s, volumes, launcher


def _destroy_domain(name: str) -> None:
    for action in ("destroy", "undefine"):
        subprocess.run(["virsh", "-c", "qemu:///system", action, name], capture_output=True, timeout=30)


def test_the_stopped_domain_of_an_earlier_vmi_is_not_adopted(guest: Guest, make_launcher: Any, tmp_path: Path) -> None:
    """A VM deleted and created again under the same name: the new VMI (new uid) starts afresh."""
    from vm_runtime.domain import Identity
    from vm_runtime.lifecycle import Launcher

    s, volumes, first = _running_guest(guest, make_launcher, tmp_path)
    first.stop(grace=0)  # the domain stays defined, shut off
    first.close()
    ident = Identity(first.identity.namespace, first.identity.name, str(uuid.uuid4()))
    second = Launcher(ident, s, volumes, run_dir=tmp_path / "second")
    try:
        assert second.status()["phase"] == "Pending", second.status()
        second.start()
        wait_console(second, "PYCDI-GUEST-WAITING")
        assert second.wait_for(lambda st: st["phase"] == "Running", timeout=10)["domainState"] == "running"
    finally:
        second.delete(grace=0, keep_run_dir=True)


def test_stop_falls_back_to_destroy_after_grace(guest: Guest, make_launcher: Any, tmp_path: Path) -> None:
    # Without the ACPI button handler (action=poweroff races it), use a paused guest: it cannot
    # react to ACPI at all, so stop() must destroy it.
    launcher = make_launcher(
        spec(
            [("rootdisk", {"bus": "virtio"}), ("cloudinit", {"bus": "virtio"})],
            [{"name": "rootdisk", "dataVolume": {"name": "vm-root"}}, cloud_init(action="wait")],
        ),
        {"rootdisk": fs_volume(tmp_path, "root", guest.raw)},
    )
    launcher.start()
    wait_console(launcher, "PYCDI-GUEST-WAITING")
    launcher.pause()
    t0 = time.monotonic()
    launcher.stop(grace=5)
    assert time.monotonic() - t0 < 10
    st = launcher.status()
    assert st["phase"] == "Succeeded" and st["domainState"] == "shutoff/destroyed", st


def test_panic_with_rerun_on_failure_restarts(guest: Guest, make_launcher: Any, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    launcher = make_launcher(
        spec(
            [("rootdisk", {"bus": "virtio"}), ("cloudinit", {"bus": "virtio"})],
            [{"name": "rootdisk", "dataVolume": {"name": "vm-root"}}, cloud_init(action="panic")],
        ),
        {"rootdisk": fs_volume(tmp_path, "root", guest.raw)},
        run_strategy=RunStrategy.RERUN_ON_FAILURE,
        on_status=seen.append,
    )
    launcher.start()
    wait_console(launcher, "PYCDI-GUEST-OK ", allow_failed=True)
    st = launcher.wait_for(lambda s: s["restartCount"] >= 1, timeout=BOOT_TIMEOUT)
    failed = [s for s in seen if s["phase"] == "Failed"]
    assert failed, seen
    assert failed[0]["reason"] == "GuestCrashed"
    assert failed[0]["domainState"] in ("crashed", "shutoff/crashed"), failed[0]
    failure = next(c for c in failed[0]["conditions"] if c["type"] == "Failure")
    assert failure["status"] == "True" and failure["reason"] == "GuestCrashed"
    # The second run boots too (and crashes again: the guest always panics).
    wait_console(launcher, "PYCDI-GUEST-OK ", count=2, allow_failed=True)
    assert st["runStrategy"] == "RerunOnFailure"


def test_panic_with_manual_stays_failed(guest: Guest, make_launcher: Any, tmp_path: Path) -> None:
    launcher = make_launcher(
        spec(
            [("rootdisk", {"bus": "virtio"}), ("cloudinit", {"bus": "virtio"})],
            [{"name": "rootdisk", "dataVolume": {"name": "vm-root"}}, cloud_init(action="panic")],
        ),
        {"rootdisk": fs_volume(tmp_path, "root", guest.raw)},
        run_strategy=RunStrategy.MANUAL,
    )
    launcher.start()
    st = launcher.wait_for_phase(VMIPhase.FAILED, VMIPhase.SUCCEEDED, timeout=BOOT_TIMEOUT)
    assert st["phase"] == "Failed" and st["reason"] == "GuestCrashed", st
    time.sleep(3)
    assert launcher.status()["restartCount"] == 0 and launcher.status()["phase"] == "Failed"


def test_always_restarts_after_guest_poweroff(guest: Guest, make_launcher: Any, tmp_path: Path) -> None:
    launcher = make_launcher(
        spec([("rootdisk", {"bus": "virtio"})], [{"name": "rootdisk", "dataVolume": {"name": "vm-root"}}]),
        {"rootdisk": fs_volume(tmp_path, "root", guest.raw)},
        run_strategy=RunStrategy.ALWAYS,
    )
    launcher.start()
    wait_console(launcher, "PYCDI-GUEST-OK ", count=2)
    st = launcher.wait_for(lambda s: s["restartCount"] >= 1, timeout=10)
    assert st["runStrategy"] == "Always"
    # A stop on request is final, even under Always.
    launcher.stop(grace=0)
    restarts = launcher.status()["restartCount"]
    time.sleep(3)
    st = launcher.status()
    assert st["phase"] == "Succeeded" and st["restartCount"] == restarts, st
