"""Golden-file tests of the domain XML builder (vm_runtime.domain).

Regenerate after an intended change: ``PYCDI_REGENERATE=1 .venv/bin/pytest tests/unit/vm_runtime``
and review the diff of tests/data/vm_runtime/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from cdi.api.virtualmachine import parse_vmi_spec
from vm_runtime.domain import DiskSource, HostOptions, Identity, SourceType, build_domain_xml, disk_targets
from vm_runtime.errors import DomainError

pytestmark = pytest.mark.timeout(30)
GOLDEN = Path(__file__).resolve().parents[2] / "data" / "vm_runtime"
ID = Identity("default", "vm1", "0f8fad5b-d9cb-469f-a165-70867728950e")


def check_golden(name: str, xml: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PYCDI_REGENERATE") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(xml)
    assert path.exists(), f"{path} is missing; run with PYCDI_REGENERATE=1 to create it"
    assert xml == path.read_text()
    ET.fromstring(xml)  # well-formed


def basic_spec() -> dict[str, Any]:
    return {
        "domain": {
            "memory": {"guest": "256Mi"},
            "devices": {
                "disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}, {"name": "data", "disk": {}}],
            },
        },
        "volumes": [
            {"name": "rootdisk", "dataVolume": {"name": "vm1-root"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        ],
    }


def test_filesystem_volumes_tcg_bios() -> None:
    spec = parse_vmi_spec(basic_spec())
    xml = build_domain_xml(
        ID,
        spec,
        {
            "rootdisk": DiskSource("/pool/fs/default/uid-root/disk.img"),
            "data": DiskSource("/pool/fs/default/uid-data/disk.img", shared=True),
        },
        HostOptions(accelerator="qemu", console_log="/run/vm1/console.log"),
    )
    check_golden("filesystem_tcg_bios.xml", xml)


def test_block_kvm_efi_everything() -> None:
    spec = parse_vmi_spec(
        {
            "domain": {
                "cpu": {"cores": 2, "sockets": 2, "threads": 1},
                "memory": {"guest": "1Gi"},
                "firmware": {"bootloader": {"efi": {"secureBoot": True}}},
                "devices": {
                    "disks": [
                        {"name": "rootdisk", "disk": {"bus": "virtio"}, "bootOrder": 2},
                        {"name": "tools", "cdrom": {"bus": "sata"}, "bootOrder": 1},
                        {"name": "shared", "lun": {"bus": "scsi"}},
                        {"name": "scratch", "disk": {"bus": "scsi"}, "serial": "SCRATCH1"},
                        {"name": "cloudinit", "disk": {"bus": "virtio"}},
                        {"name": "eph", "disk": {"bus": "sata"}},
                    ],
                    "interfaces": [
                        {"name": "default", "masquerade": {}, "macAddress": "52:54:00:12:34:56"},
                    ],
                },
            },
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [
                {"name": "rootdisk", "dataVolume": {"name": "vm1-root"}},
                {"name": "tools", "containerDisk": {"image": "/images/tools.iso"}},
                {"name": "shared", "persistentVolumeClaim": {"claimName": "lun"}},
                {"name": "scratch", "emptyDisk": {"capacity": "2Gi"}},
                {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
                {"name": "eph", "ephemeral": {"persistentVolumeClaim": {"claimName": "golden"}}},
            ],
        }
    )
    xml = build_domain_xml(
        ID,
        spec,
        {
            "rootdisk": DiskSource("/dev/loop3", SourceType.BLOCK),
            "tools": DiskSource("/run/vm1/tools.containerdisk.qcow2", format="qcow2"),
            "shared": DiskSource("/dev/loop4", SourceType.BLOCK, shared=True),
            "scratch": DiskSource("/run/vm1/scratch.empty.img", direct_io=False),
            "cloudinit": DiskSource("/run/vm1/cloudinit.cidata.iso", readonly=True, direct_io=False),
            "eph": DiskSource("/run/vm1/eph.ephemeral.qcow2", format="qcow2"),
        },
        HostOptions(
            accelerator="kvm",
            console_log="/run/vm1/console.log",
            nvram_path="/run/vm1/nvram.fd",
            qmp_socket="/run/vm1/qmp.sock",
        ),
    )
    check_golden("block_kvm_efi_all_devices.xml", xml)
    assert disk_targets(spec) == {
        "rootdisk": "vda",
        "tools": "sda",
        "shared": "sdb",
        "scratch": "sdc",
        "cloudinit": "vdb",
        "eph": "sdd",
    }


def test_no_serial_console_when_not_autoattached() -> None:
    raw = basic_spec()
    raw["domain"]["devices"]["autoattachSerialConsole"] = False
    xml = build_domain_xml(
        ID,
        parse_vmi_spec(raw),
        {"rootdisk": DiskSource("/a"), "data": DiskSource("/b")},
        HostOptions(console_log="/run/console.log"),
    )
    assert "<serial" not in xml


def test_same_inputs_same_bytes() -> None:
    spec = parse_vmi_spec(basic_spec())
    disks = {"rootdisk": DiskSource("/a"), "data": DiskSource("/b")}
    assert build_domain_xml(ID, spec, disks, HostOptions()) == build_domain_xml(
        ID, spec, disks, HostOptions()
    )


def test_errors() -> None:
    spec = parse_vmi_spec(basic_spec())
    with pytest.raises(DomainError, match="disk 'data' has no prepared source; resolve volume 'data' first"):
        build_domain_xml(ID, spec, {"rootdisk": DiskSource("/a")}, HostOptions())
    with pytest.raises(DomainError, match="unknown accelerator 'hvf'"):
        build_domain_xml(
            ID, spec, {"rootdisk": DiskSource("/a"), "data": DiskSource("/b")}, HostOptions("hvf")
        )
    raw = basic_spec()
    raw["domain"]["machine"] = {"type": "pc"}
    raw["domain"]["firmware"] = {"bootloader": {"efi": {"secureBoot": True}}}
    with pytest.raises(DomainError, match="secureBoot needs machine type q35"):
        build_domain_xml(
            ID, parse_vmi_spec(raw), {"rootdisk": DiskSource("/a"), "data": DiskSource("/b")}, HostOptions()
        )
    raw = basic_spec()
    raw["domain"]["devices"]["disks"][1] = {"name": "data", "lun": {}}
    with pytest.raises(DomainError, match="disk 'data' is a lun, which needs a Block volume"):
        build_domain_xml(
            ID, parse_vmi_spec(raw), {"rootdisk": DiskSource("/a"), "data": DiskSource("/b")}, HostOptions()
        )


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh is not installed")
@pytest.mark.parametrize("name", ["filesystem_tcg_bios.xml", "block_kvm_efi_all_devices.xml"])
def test_golden_files_pass_libvirt_schema(name: str) -> None:
    """libvirt's own RNG validation, through the in-memory test driver (no libvirtd needed)."""
    proc = subprocess.run(
        ["virsh", "-c", "test:///default", "define", "--validate", str(GOLDEN / name)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
