"""Validation of VirtualMachine / VMI manifests (cdi.api.virtualmachine): every error, with its path."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from cdi.api.virtualmachine import (
    Bus,
    DiskDevice,
    Firmware,
    PrintableStatus,
    RunStrategy,
    VMIPhase,
    VolumeKind,
    effective_run_strategy,
    parse_vm,
    parse_vmi_spec,
    printable_status,
)
from cdi.common.errors import ValidationErrors

pytestmark = pytest.mark.timeout(5)

VM: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachine",
    "metadata": {"name": "vm1", "namespace": "default"},
    "spec": {
        "runStrategy": "RerunOnFailure",
        "dataVolumeTemplates": [
            {
                "metadata": {"name": "vm1-root"},
                "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}},
            }
        ],
        "template": {
            "metadata": {"labels": {"app": "vm1"}},
            "spec": {
                "domain": {
                    "cpu": {"cores": 2, "sockets": 1, "threads": 1},
                    "memory": {"guest": "256Mi"},
                    "machine": {"type": "q35"},
                    "firmware": {"bootloader": {"efi": {"secureBoot": False}}},
                    "devices": {
                        "autoattachSerialConsole": True,
                        "disks": [
                            {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1},
                            {"name": "cd", "cdrom": {"bus": "sata"}},
                            {"name": "ci", "disk": {"bus": "virtio"}},
                            {"name": "scratch", "disk": {"bus": "scsi"}},
                            {"name": "eph", "disk": {}},
                        ],
                        "interfaces": [{"name": "default", "masquerade": {}}],
                    },
                },
                "networks": [{"name": "default", "pod": {}}],
                "volumes": [
                    {"name": "root", "dataVolume": {"name": "vm1-root"}},
                    {"name": "cd", "containerDisk": {"image": "/images/tools.iso"}},
                    {
                        "name": "ci",
                        "cloudInitNoCloud": {"userDataBase64": base64.b64encode(b"#cloud-config\n").decode()},
                    },
                    {"name": "scratch", "emptyDisk": {"capacity": "1Gi"}},
                    {"name": "eph", "ephemeral": {"persistentVolumeClaim": {"claimName": "golden"}}},
                ],
            },
        },
    },
}


def errors_of(fn: Any, *args: Any) -> list[str]:
    with pytest.raises(ValidationErrors) as info:
        fn(*args)
    return [e.message for e in info.value.errors]


def test_full_vm_parses() -> None:
    vm = parse_vm(VM)
    assert vm.name == "vm1" and vm.run_strategy == RunStrategy.RERUN_ON_FAILURE
    d = vm.template.domain
    assert d.cpu.vcpus == 2 and d.memory == 256 << 20 and d.firmware == Firmware.EFI
    assert [(x.name, x.device, x.bus) for x in d.disks] == [
        ("root", DiskDevice.DISK, Bus.VIRTIO),
        ("cd", DiskDevice.CDROM, Bus.SATA),
        ("ci", DiskDevice.DISK, Bus.VIRTIO),
        ("scratch", DiskDevice.DISK, Bus.SCSI),
        ("eph", DiskDevice.DISK, Bus.VIRTIO),
    ]
    assert d.disks[1].readonly
    vols = {v.name: v for v in vm.template.volumes}
    assert vols["ci"].user_data == "#cloud-config\n"
    assert vols["scratch"].capacity == 1 << 30
    assert vols["eph"].kind == VolumeKind.EPHEMERAL and vols["eph"].claim_name == "golden"
    assert vm.template.networks == ("default",)


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(VM["spec"]["template"]["spec"])
    for k, v in changes.items():
        spec[k] = v
    return spec


def test_disk_without_volume_and_volume_without_disk() -> None:
    spec = spec_with()
    spec["domain"]["devices"]["disks"].append({"name": "orphan", "disk": {}})
    spec["volumes"].append({"name": "lonely", "emptyDisk": {"capacity": "1Mi"}})
    msgs = errors_of(parse_vmi_spec, spec)
    assert (
        "spec.domain.devices.disks[5].name: disk 'orphan' has no volume; add a volume named 'orphan' to spec.volumes"
        in msgs
    )
    assert "spec.volumes[5].name: volume 'lonely' is not used by any disk; add a disk named 'lonely'" in msgs


def test_unknown_bus_and_bus_not_allowed_for_device() -> None:
    spec = spec_with()
    spec["domain"]["devices"]["disks"][0]["disk"]["bus"] = "ide"
    spec["domain"]["devices"]["disks"][1]["cdrom"]["bus"] = "virtio"
    msgs = errors_of(parse_vmi_spec, spec)
    assert "spec.domain.devices.disks[0].disk.bus: unknown bus 'ide'; use one of virtio, sata, scsi" in msgs
    assert "spec.domain.devices.disks[1].cdrom.bus: a cdrom cannot use bus 'virtio'; use sata, scsi" in msgs


def test_boot_order_clash() -> None:
    spec = spec_with()
    spec["domain"]["devices"]["disks"][1]["bootOrder"] = 1
    msgs = errors_of(parse_vmi_spec, spec)
    assert msgs == [
        "spec.domain.devices.disks[1].bootOrder: bootOrder 1 of 'cd' is already used by 'root'; boot orders must be unique"
    ]


def test_all_errors_reported_at_once() -> None:
    spec = {
        "domain": {
            "devices": {"disks": [{"name": "a", "disk": {}, "cdrom": {}}], "interfaces": [{"name": "x"}]}
        },
        "volumes": [
            {"name": "a"},
            {"name": "b", "cloudInitNoCloud": {"userData": "x", "userDataBase64": "!!"}},
        ],
        "networks": [{"name": "n", "multus": {}}],
    }
    msgs = errors_of(parse_vmi_spec, spec)
    joined = "\n".join(msgs)
    assert "no guest memory; set memory.guest or resources.requests.memory" in joined
    assert "disk 'a' sets disk and cdrom; choose one of disk, cdrom, lun" in joined
    assert "interface 'x' needs exactly one binding" in joined
    assert "volume 'a' has no source; set one of dataVolume" in joined
    assert "set userData or userDataBase64, not both" in joined
    assert "userDataBase64: is not valid base64 of UTF-8 text" in joined
    assert "only the pod network is supported" in joined
    assert "volume 'b' is not used by any disk" in joined


def test_memory_from_resources_and_defaults() -> None:
    spec = parse_vmi_spec(
        {
            "domain": {"resources": {"requests": {"memory": "128Mi"}}, "devices": {"disks": [{"name": "r"}]}},
            "volumes": [{"name": "r", "persistentVolumeClaim": {"claimName": "c"}}],
        }
    )
    assert spec.domain.memory == 128 << 20
    assert spec.domain.machine_type == "q35" and spec.domain.firmware == Firmware.BIOS
    assert spec.domain.disks[0].bus == Bus.VIRTIO and spec.domain.autoattach_serial_console


def test_run_strategy() -> None:
    assert effective_run_strategy({"running": True}) == RunStrategy.ALWAYS
    assert effective_run_strategy({"running": False}) == RunStrategy.HALTED
    assert effective_run_strategy({"runStrategy": "Manual"}) == RunStrategy.MANUAL
    assert errors_of(effective_run_strategy, {"running": True, "runStrategy": "Always"}) == [
        "spec: set either running or runStrategy, not both"
    ]
    assert errors_of(effective_run_strategy, {"runStrategy": "Sometimes"}) == [
        "spec.runStrategy: unknown runStrategy 'Sometimes'; use one of Always, Halted, Manual, RerunOnFailure"
    ]


def test_vm_errors_carry_template_paths() -> None:
    vm = copy.deepcopy(VM)
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] = "usb3"
    msgs = errors_of(parse_vm, vm)
    assert msgs[0].startswith("spec.template.spec.domain.devices.disks[0].disk.bus: unknown bus 'usb3'")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"run_strategy": RunStrategy.HALTED}, PrintableStatus.STOPPED),
        ({"run_strategy": RunStrategy.ALWAYS, "data_volumes_ready": False}, PrintableStatus.PROVISIONING),
        ({"run_strategy": RunStrategy.ALWAYS, "data_volume_failed": True}, PrintableStatus.DATA_VOLUME_ERROR),
        ({"run_strategy": RunStrategy.ALWAYS, "vmi_phase": VMIPhase.SCHEDULED}, PrintableStatus.STARTING),
        ({"run_strategy": RunStrategy.ALWAYS, "vmi_phase": VMIPhase.RUNNING}, PrintableStatus.RUNNING),
        (
            {"run_strategy": RunStrategy.ALWAYS, "vmi_phase": VMIPhase.RUNNING, "paused": True},
            PrintableStatus.PAUSED,
        ),
        (
            {"run_strategy": RunStrategy.ALWAYS, "vmi_phase": VMIPhase.RUNNING, "vmi_deleting": True},
            PrintableStatus.STOPPING,
        ),
        (
            {"run_strategy": RunStrategy.ALWAYS, "vmi_phase": VMIPhase.PENDING, "unschedulable": True},
            PrintableStatus.ERROR_UNSCHEDULABLE,
        ),
        ({"run_strategy": RunStrategy.ALWAYS, "deleting": True}, PrintableStatus.TERMINATING),
        ({"run_strategy": RunStrategy.MANUAL, "vmi_phase": VMIPhase.SUCCEEDED}, PrintableStatus.STOPPED),
    ],
)
def test_printable_status(kwargs: dict[str, Any], expected: PrintableStatus) -> None:
    assert printable_status(**kwargs) == expected
