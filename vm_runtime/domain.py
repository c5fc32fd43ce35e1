"""The libvirt domain XML of a VMI: one pure function, golden-file tested.

:func:`build_domain_xml` takes the parsed VMI spec (:class:`cdi.api.virtualmachine.VMISpec`) and,
for every volume, the :class:`DiskSource` the launcher prepared (the DataVolume's ``disk.img`` or
block device, a qcow2 overlay for containerDisk/ephemeral, the cidata ISO, the emptyDisk file)
and returns the XML. It reads no files and probes nothing: the accelerator, the console log path
and whether O_DIRECT works on each disk are inputs, so the same inputs give the same bytes.

Choices (and why):

* ``<domain type='kvm'>`` only when the caller says the host has hardware KVM (see
  :func:`vm_runtime.host.detect_accelerator`); otherwise ``type='qemu'`` (TCG).
* Disks: ``type='file'`` for Filesystem volumes and files, ``type='block'`` for Block volumes.
  ``cache='none'`` (O_DIRECT, required for shared/RWX storage to be coherent between hosts) with
  ``io='native'`` where the storage supports O_DIRECT, else ``cache='writethrough'`` +
  ``io='threads'`` (tmpfs and some FUSE file systems refuse O_DIRECT). ``discard='unmap'`` keeps
  thin volumes thin. Each disk's alias is ``ua-<disk name>`` so stats map back to the spec.
* Boot order: the spec's ``bootOrder``; when no device sets one, disks boot in spec order.
* ``on_poweroff``/``on_crash`` = destroy (the runtime decides about restarts, see
  ``vm_runtime.policy``); ``on_reboot`` = restart (a guest reboot stays the same VMI). A pvpanic
  device lets a guest kernel panic show up as a crash instead of a silent reboot.
* Serial console: ``<serial type='file' append='on'>`` into a log the user can read.
* Interfaces (masquerade and bridge): user-mode networking (slirp), the one-machine stand-in for
  the pod network; no libvirt network or dnsmasq is needed.
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass

from cdi.api.virtualmachine import Bus, DiskDevice, Firmware, VMISpec
from vm_runtime.errors import DomainError

METADATA_NS = "https://pycdi.dev/vm-runtime/v1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("pycdi", METADATA_NS)
ET.register_namespace("qemu", QEMU_NS)


class SourceType(enum.StrEnum):
    FILE = "file"
    BLOCK = "block"


@dataclass(frozen=True)
class DiskSource:
    """Where one volume's bytes are, as the domain sees them."""

    path: str
    type: SourceType = SourceType.FILE
    format: str = "raw"  # raw | qcow2
    readonly: bool = False
    direct_io: bool = True  # the storage accepts O_DIRECT (cache='none')
    shared: bool = False  # RWX: may be opened by more than one host


@dataclass(frozen=True)
class Identity:
    namespace: str
    name: str
    uid: str = ""

    @property
    def domain_name(self) -> str:
        """KubeVirt's domain name: ``<namespace>_<name>``."""
        return f"{self.namespace}_{self.name}"


@dataclass(frozen=True)
class HostOptions:
    accelerator: str = "qemu"  # "kvm" | "qemu" (TCG)
    console_log: str | None = None  # serial console file; None: no serial device
    nvram_path: str | None = None  # EFI variables (firmware efi)
    qmp_socket: str | None = None  # an extra QMP monitor for vm_runtime.qmp
    emulator: str | None = None  # None: libvirt's default for the arch/machine
    vnc_listen: str | None = None  # a VNC display on this address (autoport); None: headless
    arch: str = "x86_64"


def _target_names(spec: VMISpec) -> dict[str, str]:
    """Guest device names per disk: vda, vdb... for virtio; sda, sdb... shared by sata and scsi."""
    counters = {"vd": 0, "sd": 0}
    out: dict[str, str] = {}
    for d in spec.domain.disks:
        prefix = "vd" if d.bus == Bus.VIRTIO else "sd"
        out[d.name] = prefix + _letters(counters[prefix])
        counters[prefix] += 1
    return out


def _letters(i: int) -> str:
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(ord("a") + r) + s
    return s


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    e = ET.SubElement(parent, tag, attrs)
    if text is not None:
        e.text = text
    return e


def build_domain_xml(
    identity: Identity,
    spec: VMISpec,
    disks: Mapping[str, DiskSource],
    options: HostOptions,
) -> str:
    """Return the libvirt domain XML for ``spec``.

    :param disks: volume name -> prepared source, one for every disk of the spec.
    :raises DomainError: a disk has no source, or a source cannot back its device (a lun needs a
        block device; a cdrom cannot be writable).
    """
    if options.accelerator not in ("kvm", "qemu"):
        raise DomainError(f"unknown accelerator {options.accelerator!r}; use kvm or qemu")
    if spec.domain.secure_boot and not spec.domain.machine_type.startswith(("q35", "pc-q35")):
        raise DomainError(
            f"secureBoot needs machine type q35 (SMM); this VMI asks for {spec.domain.machine_type!r}"
        )
    dom = ET.Element("domain", {"type": options.accelerator})
    _sub(dom, "name", identity.domain_name)
    if identity.uid:
        _sub(dom, "uuid", identity.uid)
    meta = _sub(dom, "metadata")
    ET.SubElement(
        meta,
        f"{{{METADATA_NS}}}vmi",
        {"namespace": identity.namespace, "name": identity.name, "uid": identity.uid},
    )
    _sub(dom, "memory", str(spec.domain.memory), unit="b")
    cpu = spec.domain.cpu
    _sub(dom, "vcpu", str(cpu.vcpus), placement="static")

    os_ = _sub(dom, "os")
    if spec.domain.firmware == Firmware.EFI:
        os_.set("firmware", "efi")
    _sub(os_, "type", "hvm", arch=options.arch, machine=spec.domain.machine_type)
    if spec.domain.firmware == Firmware.EFI:
        fw = _sub(os_, "firmware")
        _sub(fw, "feature", enabled="yes" if spec.domain.secure_boot else "no", name="secure-boot")
        if options.nvram_path:
            _sub(os_, "nvram", options.nvram_path)

    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.domain.secure_boot:
        _sub(features, "smm", state="on")
    cpu_el = _sub(dom, "cpu")
    _sub(
        cpu_el, "topology", sockets=str(cpu.sockets), dies="1", cores=str(cpu.cores), threads=str(cpu.threads)
    )
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    if options.emulator:
        _sub(devices, "emulator", options.emulator)
    targets = _target_names(spec)
    any_boot_order = any(d.boot_order for d in spec.domain.disks) or any(
        i.boot_order for i in spec.domain.interfaces
    )
    for index, d in enumerate(spec.domain.disks):
        src = disks.get(d.name)
        if src is None:
            raise DomainError(f"disk {d.name!r} has no prepared source; resolve volume {d.name!r} first")
        if d.device == DiskDevice.LUN and src.type != SourceType.BLOCK:
            raise DomainError(
                f"disk {d.name!r} is a lun, which needs a Block volume; use disk: instead of lun:"
            )
        el = _sub(devices, "disk", type=src.type.value, device=d.device.value)
        drv = {"name": "qemu", "type": src.format}
        if d.device != DiskDevice.CDROM:
            if src.direct_io:
                drv.update(cache="none", io="native")
            else:
                drv.update(cache="writethrough", io="threads")
            drv["discard"] = "unmap"
        _sub(el, "driver", **drv)
        if src.type == SourceType.BLOCK:
            _sub(el, "source", dev=src.path)
        else:
            _sub(el, "source", file=src.path)
        _sub(el, "target", dev=targets[d.name], bus=d.bus.value)
        order = d.boot_order if any_boot_order else index + 1
        if order:
            _sub(el, "boot", order=str(order))
        if d.readonly or src.readonly or d.device == DiskDevice.CDROM:
            _sub(el, "readonly")
        if src.shared:
            _sub(el, "shareable")
        if d.serial:
            _sub(el, "serial", d.serial)
        _sub(el, "alias", name=f"ua-{d.name}")

    if any(d.bus == Bus.SCSI for d in spec.domain.disks):
        _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    _sub(devices, "controller", type="usb", model="none")

    for itf in spec.domain.interfaces:
        el = _sub(devices, "interface", type="user")
        if itf.mac_address:
            _sub(el, "mac", address=itf.mac_address)
        _sub(el, "model", type=itf.model)
        if itf.boot_order:
            _sub(el, "boot", order=str(itf.boot_order))
        _sub(el, "alias", name=f"ua-{itf.name}")

    if spec.domain.autoattach_serial_console and options.console_log:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=options.console_log, append="on")
        _sub(serial, "target", port="0")
    if options.vnc_listen:
        graphics = _sub(devices, "graphics", type="vnc", autoport="yes", listen=options.vnc_listen)
        _sub(graphics, "listen", type="address", address=options.vnc_listen)
        video = _sub(devices, "video")
        _sub(video, "model", type="vga")
    _sub(devices, "memballoon", model="none")
    _sub(devices, "panic", model="isa")

    if options.qmp_socket:
        cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": "-qmp"})
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": f"unix:{options.qmp_socket},server=on,wait=off"})

    ET.indent(dom, "  ")
    return ET.tostring(dom, encoding="unicode") + "\n"


def disk_targets(spec: VMISpec) -> dict[str, str]:
    """Volume name -> guest target device (``vda``, ``sda``...), as in the XML."""
    return _target_names(spec)
