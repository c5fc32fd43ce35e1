"""VirtualMachine and VirtualMachineInstance (``kubevirt.io/v1``): the subset pycdi runs.

Pure data, no I/O. Manifests are the dicts a user writes (the same YAML as for KubeVirt);
:func:`parse_vmi_spec` turns ``spec`` of a VMI (or ``spec.template.spec`` of a VM) into frozen
dataclasses, reporting *every* problem at once as :class:`~cdi.common.errors.ValidationErrors`
with the JSON path of each field. :func:`parse_vm` does the same for a whole VirtualMachine.

Supported: ``running`` / ``runStrategy`` (Always, Halted, Manual, RerunOnFailure),
``dataVolumeTemplates``, ``domain`` (cpu cores/sockets/threads, memory.guest, resources,
machine.type, firmware bios/efi, disks as disk/cdrom/lun on virtio/sata/scsi with bootOrder,
interfaces masquerade/bridge, autoattachSerialConsole), volumes (dataVolume,
persistentVolumeClaim, containerDisk, cloudInitNoCloud, emptyDisk, ephemeral) and the pod
network. Status vocabulary (VMI phases, condition types, the VM's printableStatus) lives here
too so that the controller and the runtime spell them the same way.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cdi.common.errors import ValidationError, ValidationErrors
from cdi.common.units import parse_quantity

API_VERSION = "kubevirt.io/v1"
KIND_VM = "VirtualMachine"
KIND_VMI = "VirtualMachineInstance"


class RunStrategy(enum.StrEnum):
    ALWAYS = "Always"
    HALTED = "Halted"
    MANUAL = "Manual"
    RERUN_ON_FAILURE = "RerunOnFailure"


class VMIPhase(enum.StrEnum):
    PENDING = "Pending"
    SCHEDULING = "Scheduling"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"


VMI_FINAL_PHASES = frozenset({VMIPhase.SUCCEEDED, VMIPhase.FAILED})


class PrintableStatus(enum.StrEnum):
    STOPPED = "Stopped"
    PROVISIONING = "Provisioning"
    STARTING = "Starting"
    RUNNING = "Running"
    PAUSED = "Paused"
    STOPPING = "Stopping"
    TERMINATING = "Terminating"
    CRASH_LOOP_BACKOFF = "CrashLoopBackOff"
    MIGRATING = "Migrating"
    UNKNOWN = "Unknown"
    ERROR_UNSCHEDULABLE = "ErrorUnschedulable"
    ERR_IMAGE_PULL = "ErrImagePull"
    IMAGE_PULL_BACKOFF = "ImagePullBackOff"
    ERROR_PVC_NOT_FOUND = "ErrorPvcNotFound"
    DATA_VOLUME_ERROR = "DataVolumeError"
    WAITING_FOR_VOLUME_BINDING = "WaitingForVolumeBinding"


# VMI condition types (KubeVirt's names) and reasons.
COND_READY = "Ready"
COND_PAUSED = "Paused"
COND_LIVE_MIGRATABLE = "LiveMigratable"
COND_PROVISIONING = "Provisioning"
COND_FAILURE = "Failure"
REASON_GUEST_NOT_RUNNING = "GuestNotRunning"
REASON_PAUSED_BY_USER = "PausedByUser"
REASON_PAUSED_IO_ERROR = "PausedIOError"
REASON_PAUSED_BY_ERROR = "PausedByError"
REASON_CRASHED = "GuestCrashed"


class DiskDevice(enum.StrEnum):
    DISK = "disk"
    CDROM = "cdrom"
    LUN = "lun"


class Bus(enum.StrEnum):
    VIRTIO = "virtio"
    SATA = "sata"
    SCSI = "scsi"


class Firmware(enum.StrEnum):
    BIOS = "bios"
    EFI = "efi"


class Binding(enum.StrEnum):
    MASQUERADE = "masquerade"
    BRIDGE = "bridge"


class VolumeKind(enum.StrEnum):
    DATA_VOLUME = "dataVolume"
    PVC = "persistentVolumeClaim"
    CONTAINER_DISK = "containerDisk"
    CLOUD_INIT_NOCLOUD = "cloudInitNoCloud"
    EMPTY_DISK = "emptyDisk"
    EPHEMERAL = "ephemeral"


_DEFAULT_BUS = {DiskDevice.DISK: Bus.VIRTIO, DiskDevice.CDROM: Bus.SATA, DiskDevice.LUN: Bus.SCSI}
_ALLOWED_BUS = {
    DiskDevice.DISK: frozenset(Bus),
    DiskDevice.CDROM: frozenset({Bus.SATA, Bus.SCSI}),
    DiskDevice.LUN: frozenset({Bus.VIRTIO, Bus.SCSI}),
}
DEFAULT_MACHINE_TYPE = "q35"


@dataclass(frozen=True)
class CPU:
    cores: int = 1
    sockets: int = 1
    threads: int = 1

    @property
    def vcpus(self) -> int:
        return self.cores * self.sockets * self.threads


@dataclass(frozen=True)
class Disk:
    name: str
    device: DiskDevice = DiskDevice.DISK
    bus: Bus = Bus.VIRTIO
    boot_order: int | None = None
    readonly: bool = False
    serial: str | None = None


@dataclass(frozen=True)
class Interface:
    name: str
    binding: Binding
    model: str = "virtio"
    mac_address: str | None = None
    boot_order: int | None = None


@dataclass(frozen=True)
class Volume:
    """One volume. ``source`` holds the volume's own fields, decoded where the API encodes them
    (``userDataBase64`` arrives as ``user_data``; ``capacity`` of an emptyDisk as bytes)."""

    name: str
    kind: VolumeKind
    claim_name: str | None = None  # dataVolume name / PVC claimName / ephemeral's claimName
    image: str | None = None  # containerDisk
    user_data: str | None = None  # cloudInitNoCloud
    network_data: str | None = None
    capacity: int | None = None  # emptyDisk, bytes
    readonly: bool = False


@dataclass(frozen=True)
class DomainSpec:
    cpu: CPU
    memory: int  # guest memory, bytes
    machine_type: str
    firmware: Firmware
    secure_boot: bool
    disks: tuple[Disk, ...]
    interfaces: tuple[Interface, ...]
    autoattach_serial_console: bool = True


@dataclass(frozen=True)
class VMISpec:
    domain: DomainSpec
    volumes: tuple[Volume, ...]
    networks: tuple[str, ...]  # names of pod networks (the only kind supported)
    termination_grace_period: int = 30

    def volume(self, name: str) -> Volume:
        for v in self.volumes:
            if v.name == name:
                return v
        raise KeyError(name)


@dataclass(frozen=True)
class VirtualMachine:
    name: str
    namespace: str
    run_strategy: RunStrategy
    data_volume_templates: tuple[dict[str, Any], ...]
    template: VMISpec
    template_metadata: dict[str, Any] = field(default_factory=dict)


# --- parsing ------------------------------------------------------------------------------------


class _Errors:
    def __init__(self) -> None:
        self.items: list[ValidationError] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(ValidationError(path, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationErrors(self.items)


def _map(value: Any, path: str, errs: _Errors) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errs.add(path, f"must be an object, not {type(value).__name__}")
        return {}
    return value


def _list(value: Any, path: str, errs: _Errors) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        errs.add(path, f"must be a list, not {type(value).__name__}")
        return []
    return value


def _pos_int(value: Any, path: str, errs: _Errors, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        errs.add(path, f"must be a positive integer, not {value!r}")
        return default
    return value


def _quantity(value: Any, path: str, errs: _Errors) -> int | None:
    try:
        return parse_quantity(value)
    except ValueError as e:
        errs.add(path, str(e))
        return None


def _enum(cls: type[enum.StrEnum], value: Any, path: str, errs: _Errors, what: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        errs.add(path, f"unknown {what} {value!r}; use one of {allowed}")
        return None


def _memory(domain: Mapping[str, Any], path: str, errs: _Errors) -> int:
    guest = _map(domain.get("memory"), f"{path}.memory", errs).get("guest")
    if guest is not None:
        return _quantity(guest, f"{path}.memory.guest", errs) or 0
    res = _map(domain.get("resources"), f"{path}.resources", errs)
    for key in ("requests", "limits"):
        mem = _map(res.get(key), f"{path}.resources.{key}", errs).get("memory")
        if mem is not None:
            return _quantity(mem, f"{path}.resources.{key}.memory", errs) or 0
    errs.add(
        f"{path}.memory.guest", "no guest memory; set memory.guest or resources.requests.memory (e.g. 256Mi)"
    )
    return 0


def _firmware(domain: Mapping[str, Any], path: str, errs: _Errors) -> tuple[Firmware, bool]:
    boot = _map(
        _map(domain.get("firmware"), f"{path}.firmware", errs).get("bootloader"),
        f"{path}.firmware.bootloader",
        errs,
    )
    if "bios" in boot and "efi" in boot:
        errs.add(f"{path}.firmware.bootloader", "choose one of bios and efi, not both")
    if "efi" in boot:
        efi = _map(boot.get("efi"), f"{path}.firmware.bootloader.efi", errs)
        return Firmware.EFI, bool(efi.get("secureBoot", False))
    return Firmware.BIOS, False


def _disks(domain: Mapping[str, Any], path: str, errs: _Errors) -> list[Disk]:
    devices = _map(domain.get("devices"), f"{path}.devices", errs)
    out: list[Disk] = []
    for i, raw in enumerate(_list(devices.get("disks"), f"{path}.devices.disks", errs)):
        p = f"{path}.devices.disks[{i}]"
        d = _map(raw, p, errs)
        name = d.get("name")
        if not isinstance(name, str) or not name:
            errs.add(f"{p}.name", "a disk needs a name (the name of its volume)")
            continue
        kinds = [k for k in DiskDevice if k.value in d]
        if len(kinds) > 1:
            errs.add(p, f"disk {name!r} sets {' and '.join(kinds)}; choose one of disk, cdrom, lun")
        device = kinds[0] if kinds else DiskDevice.DISK
        target = _map(d.get(device.value), f"{p}.{device.value}", errs)
        bus = _DEFAULT_BUS[device]
        if "bus" in target:
            parsed = _enum(Bus, target["bus"], f"{p}.{device.value}.bus", errs, "bus")
            if parsed is not None:
                if parsed not in _ALLOWED_BUS[device]:
                    allowed = ", ".join(sorted(b.value for b in _ALLOWED_BUS[device]))
                    errs.add(
                        f"{p}.{device.value}.bus",
                        f"a {device.value} cannot use bus {parsed.value!r}; use {allowed}",
                    )
                else:
                    bus = parsed
        boot_order = d.get("bootOrder")
        if boot_order is not None:
            boot_order = _pos_int(boot_order, f"{p}.bootOrder", errs, 0) or None
        readonly = bool(target.get("readonly", device == DiskDevice.CDROM))
        out.append(Disk(name, device, bus, boot_order, readonly, d.get("serial")))
    return out


def _interfaces(domain: Mapping[str, Any], path: str, errs: _Errors) -> list[Interface]:
    devices = _map(domain.get("devices"), f"{path}.devices", errs)
    out: list[Interface] = []
    for i, raw in enumerate(_list(devices.get("interfaces"), f"{path}.devices.interfaces", errs)):
        p = f"{path}.devices.interfaces[{i}]"
        d = _map(raw, p, errs)
        name = d.get("name")
        if not isinstance(name, str) or not name:
            errs.add(f"{p}.name", "an interface needs a name (the name of its network)")
            continue
        bindings = [b for b in Binding if b.value in d]
        if len(bindings) != 1:
            errs.add(p, f"interface {name!r} needs exactly one binding: masquerade: {{}} or bridge: {{}}")
            continue
        boot_order = d.get("bootOrder")
        if boot_order is not None:
            boot_order = _pos_int(boot_order, f"{p}.bootOrder", errs, 0) or None
        out.append(
            Interface(name, bindings[0], str(d.get("model", "virtio")), d.get("macAddress"), boot_order)
        )
    return out


def _b64(value: Any, path: str, errs: _Errors) -> str | None:
    try:
        return base64.b64decode(str(value), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        errs.add(path, "is not valid base64 of UTF-8 text")
        return None


def _volume(raw: Any, p: str, errs: _Errors) -> Volume | None:
    d = _map(raw, p, errs)
    name = d.get("name")
    if not isinstance(name, str) or not name:
        errs.add(f"{p}.name", "a volume needs a name")
        return None
    kinds = [k for k in VolumeKind if k.value in d]
    if len(kinds) != 1:
        allowed = ", ".join(k.value for k in VolumeKind)
        if kinds:
            errs.add(p, f"volume {name!r} sets {' and '.join(kinds)}; choose exactly one source")
        else:
            errs.add(p, f"volume {name!r} has no source; set one of {allowed}")
        return None
    kind = kinds[0]
    sp = f"{p}.{kind.value}"
    src = _map(d[kind.value], sp, errs)
    if kind == VolumeKind.DATA_VOLUME:
        if not src.get("name"):
            errs.add(f"{sp}.name", "name the DataVolume")
        return Volume(name, kind, claim_name=src.get("name"))
    if kind in (VolumeKind.PVC, VolumeKind.EPHEMERAL):
        pvc = (
            src
            if kind == VolumeKind.PVC
            else _map(src.get("persistentVolumeClaim"), f"{sp}.persistentVolumeClaim", errs)
        )
        claim = pvc.get("claimName")
        if not claim:
            where = f"{sp}.claimName" if kind == VolumeKind.PVC else f"{sp}.persistentVolumeClaim.claimName"
            errs.add(where, "name the PersistentVolumeClaim")
        return Volume(name, kind, claim_name=claim, readonly=bool(pvc.get("readOnly", False)))
    if kind == VolumeKind.CONTAINER_DISK:
        if not src.get("image"):
            errs.add(f"{sp}.image", "name the image (a containerDisk image reference or a local disk file)")
        return Volume(name, kind, image=src.get("image"))
    if kind == VolumeKind.EMPTY_DISK:
        if "capacity" not in src:
            errs.add(f"{sp}.capacity", "an emptyDisk needs a capacity (e.g. 1Gi)")
            return Volume(name, kind)
        return Volume(name, kind, capacity=_quantity(src["capacity"], f"{sp}.capacity", errs))
    # cloudInitNoCloud
    if "userData" in src and "userDataBase64" in src:
        errs.add(sp, "set userData or userDataBase64, not both")
    user_data = src.get("userData")
    if "userDataBase64" in src:
        user_data = _b64(src["userDataBase64"], f"{sp}.userDataBase64", errs)
    if user_data is None and "userData" not in src and "userDataBase64" not in src:
        errs.add(sp, "cloudInitNoCloud needs userData or userDataBase64 (secretRef is not supported)")
    network_data = src.get("networkData")
    if "networkDataBase64" in src:
        network_data = _b64(src["networkDataBase64"], f"{sp}.networkDataBase64", errs)
    return Volume(name, kind, user_data=user_data, network_data=network_data, readonly=True)


def parse_vmi_spec(spec: Any, path: str = "spec") -> VMISpec:
    """Parse and validate a VMI spec.

    :raises ValidationErrors: listing every problem with its field path.
    """
    errs = _Errors()
    s = _map(spec, path, errs)
    dp = f"{path}.domain"
    domain = _map(s.get("domain"), dp, errs)
    if "domain" not in s:
        errs.add(dp, "a VMI needs a domain (cpu, memory, devices)")
    cpu_raw = _map(domain.get("cpu"), f"{dp}.cpu", errs)
    cpu = CPU(
        cores=_pos_int(cpu_raw.get("cores"), f"{dp}.cpu.cores", errs, 1),
        sockets=_pos_int(cpu_raw.get("sockets"), f"{dp}.cpu.sockets", errs, 1),
        threads=_pos_int(cpu_raw.get("threads"), f"{dp}.cpu.threads", errs, 1),
    )
    memory = _memory(domain, dp, errs)
    machine = _map(domain.get("machine"), f"{dp}.machine", errs).get("type") or DEFAULT_MACHINE_TYPE
    firmware, secure_boot = _firmware(domain, dp, errs)
    disks = _disks(domain, dp, errs)
    interfaces = _interfaces(domain, dp, errs)
    devices = _map(domain.get("devices"), f"{dp}.devices", errs)

    volumes: list[Volume] = []
    for i, raw in enumerate(_list(s.get("volumes"), f"{path}.volumes", errs)):
        v = _volume(raw, f"{path}.volumes[{i}]", errs)
        if v is not None:
            volumes.append(v)

    networks: list[str] = []
    for i, raw in enumerate(_list(s.get("networks"), f"{path}.networks", errs)):
        p = f"{path}.networks[{i}]"
        n = _map(raw, p, errs)
        if not n.get("name"):
            errs.add(f"{p}.name", "a network needs a name")
        elif "pod" not in n:
            errs.add(p, f"network {n['name']!r}: only the pod network is supported (pod: {{}})")
        else:
            networks.append(str(n["name"]))
    if len(networks) > 1:
        errs.add(f"{path}.networks", "at most one pod network is supported")

    _cross_check(disks, volumes, interfaces, networks, path, errs)
    grace = s.get("terminationGracePeriodSeconds", 30)
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
        errs.add(f"{path}.terminationGracePeriodSeconds", f"must be a non-negative integer, not {grace!r}")
        grace = 30
    errs.raise_if_any()
    return VMISpec(
        domain=DomainSpec(
            cpu=cpu,
            memory=memory,
            machine_type=str(machine),
            firmware=firmware,
            secure_boot=secure_boot,
            disks=tuple(disks),
            interfaces=tuple(interfaces),
            autoattach_serial_console=bool(devices.get("autoattachSerialConsole", True)),
        ),
        volumes=tuple(volumes),
        networks=tuple(networks),
        termination_grace_period=grace,
    )


def _cross_check(
    disks: list[Disk],
    volumes: list[Volume],
    interfaces: list[Interface],
    networks: list[str],
    path: str,
    errs: _Errors,
) -> None:
    dp = f"{path}.domain.devices"
    seen: set[str] = set()
    for i, d in enumerate(disks):
        if d.name in seen:
            errs.add(f"{dp}.disks[{i}].name", f"disk name {d.name!r} is used twice")
        seen.add(d.name)
    vnames: set[str] = set()
    for i, v in enumerate(volumes):
        if v.name in vnames:
            errs.add(f"{path}.volumes[{i}].name", f"volume name {v.name!r} is used twice")
        vnames.add(v.name)
    for i, d in enumerate(disks):
        if d.name not in vnames:
            errs.add(
                f"{dp}.disks[{i}].name",
                f"disk {d.name!r} has no volume; add a volume named {d.name!r} to {path}.volumes",
            )
    for i, v in enumerate(volumes):
        if v.name not in seen:
            errs.add(
                f"{path}.volumes[{i}].name",
                f"volume {v.name!r} is not used by any disk; add a disk named {v.name!r}",
            )
    if sum(v.kind == VolumeKind.CLOUD_INIT_NOCLOUD for v in volumes) > 1:
        errs.add(f"{path}.volumes", "at most one cloudInitNoCloud volume is allowed")
    by_name = {v.name: v for v in volumes}
    for i, d in enumerate(disks):
        vol = by_name.get(d.name)
        if vol and vol.kind == VolumeKind.CLOUD_INIT_NOCLOUD and d.device == DiskDevice.LUN:
            errs.add(
                f"{dp}.disks[{i}]", f"cloudInitNoCloud volume {d.name!r} must be a disk or cdrom, not a lun"
            )
    for i, itf in enumerate(interfaces):
        if itf.name not in networks:
            errs.add(
                f"{dp}.interfaces[{i}].name",
                f"interface {itf.name!r} has no network; add a network named {itf.name!r}",
            )
    orders: dict[int, str] = {}
    items: list[tuple[str, int, Disk | Interface]] = [("disks", i, d) for i, d in enumerate(disks)]
    items += [("interfaces", i, itf) for i, itf in enumerate(interfaces)]
    for kind, i, item in items:
        bo = item.boot_order
        if bo is None:
            continue
        if bo in orders:
            errs.add(
                f"{dp}.{kind}[{i}].bootOrder",
                f"bootOrder {bo} of {item.name!r} is already used by {orders[bo]!r}; boot orders must be unique",
            )
        else:
            orders[bo] = item.name


def effective_run_strategy(spec: Mapping[str, Any], path: str = "spec") -> RunStrategy:
    """``runStrategy``, or ``running`` translated (true: Always, false: Halted).

    :raises ValidationErrors: both or neither set, or an unknown strategy.
    """
    errs = _Errors()
    has_running, has_strategy = "running" in spec, "runStrategy" in spec
    result = RunStrategy.HALTED
    if has_running and has_strategy:
        errs.add(path, "set either running or runStrategy, not both")
    elif has_strategy:
        result = _enum(RunStrategy, spec["runStrategy"], f"{path}.runStrategy", errs, "runStrategy") or result
    elif has_running:
        if not isinstance(spec["running"], bool):
            errs.add(f"{path}.running", "must be true or false")
        result = RunStrategy.ALWAYS if spec["running"] is True else RunStrategy.HALTED
    else:
        errs.add(path, "set runStrategy (Always, Halted, Manual, RerunOnFailure) or running")
    errs.raise_if_any()
    return result


def parse_vm(obj: Mapping[str, Any]) -> VirtualMachine:
    """Parse and validate a whole ``VirtualMachine`` manifest.

    :raises ValidationErrors: listing every problem with its field path.
    """
    errors: list[ValidationError] = []
    errs = _Errors()
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND_VM:
        errs.add("apiVersion", f"expected apiVersion {API_VERSION} and kind {KIND_VM}")
    meta = _map(obj.get("metadata"), "metadata", errs)
    if not meta.get("name"):
        errs.add("metadata.name", "a VirtualMachine needs a name")
    spec = _map(obj.get("spec"), "spec", errs)
    errors.extend(errs.items)
    strategy = RunStrategy.HALTED
    try:
        strategy = effective_run_strategy(spec)
    except ValidationErrors as e:
        errors.extend(e.errors)
    dvts: list[dict[str, Any]] = []
    for i, t in enumerate(_list(spec.get("dataVolumeTemplates"), "spec.dataVolumeTemplates", errs)):
        if not isinstance(t, Mapping) or not _map(t.get("metadata"), "", _Errors()).get("name"):
            errors.append(
                ValidationError(
                    f"spec.dataVolumeTemplates[{i}].metadata.name", "a dataVolumeTemplate needs a name"
                )
            )
            continue
        dvts.append(dict(t))
    template = _map(spec.get("template"), "spec.template", errs)
    vmi: VMISpec | None = None
    try:
        vmi = parse_vmi_spec(template.get("spec"), "spec.template.spec")
    except ValidationErrors as e:
        errors.extend(e.errors)
    if errors or vmi is None:
        raise ValidationErrors(errors)
    return VirtualMachine(
        name=str(meta["name"]),
        namespace=str(meta.get("namespace", "default")),
        run_strategy=strategy,
        data_volume_templates=tuple(dvts),
        template=vmi,
        template_metadata=dict(_map(template.get("metadata"), "spec.template.metadata", _Errors())),
    )


def printable_status(
    *,
    run_strategy: RunStrategy,
    deleting: bool = False,
    vmi_phase: VMIPhase | None = None,
    vmi_deleting: bool = False,
    paused: bool = False,
    data_volumes_ready: bool = True,
    data_volume_failed: bool = False,
    unschedulable: bool = False,
) -> PrintableStatus:
    """The VM's ``status.printableStatus`` from what the controller knows (KubeVirt's order)."""
    if deleting:
        return PrintableStatus.TERMINATING
    if vmi_phase is None or vmi_phase in VMI_FINAL_PHASES:
        # As KubeVirt: volumes being provisioned or failed show whatever the run strategy.
        if data_volume_failed:
            return PrintableStatus.DATA_VOLUME_ERROR
        if not data_volumes_ready:
            return PrintableStatus.PROVISIONING
        if run_strategy in (RunStrategy.HALTED, RunStrategy.MANUAL) or vmi_phase == VMIPhase.SUCCEEDED:
            return PrintableStatus.STOPPED
        if vmi_phase == VMIPhase.FAILED and run_strategy == RunStrategy.RERUN_ON_FAILURE:
            return PrintableStatus.STARTING
        return PrintableStatus.STOPPED if vmi_phase is not None else PrintableStatus.STARTING
    if vmi_deleting:
        return PrintableStatus.STOPPING
    if unschedulable:
        return PrintableStatus.ERROR_UNSCHEDULABLE
    if data_volume_failed:
        return PrintableStatus.DATA_VOLUME_ERROR
    if vmi_phase == VMIPhase.RUNNING:
        return PrintableStatus.PAUSED if paused else PrintableStatus.RUNNING
    if vmi_phase in (VMIPhase.PENDING, VMIPhase.SCHEDULING, VMIPhase.SCHEDULED):
        return PrintableStatus.STARTING if data_volumes_ready else PrintableStatus.PROVISIONING
    return PrintableStatus.UNKNOWN
