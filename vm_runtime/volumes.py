"""From the volumes the controller resolved to the disk sources a domain uses.

The controller hands the runtime, for each volume name, a :class:`ResolvedVolume`: the volume
mode (Filesystem or Block) and the path of the disk (a ``disk.img`` file, the volume directory,
or a block device), as recorded on the PVC (``embedded.cdi.kubevirt.io/disk-path``). For a
containerDisk the path is the image file (raw or qcow2).

:func:`prepare_volumes` then makes what each volume kind needs inside the VMI's run directory,
fresh at every start (these are per-VMI, as in KubeVirt):

=================  =========================================================================
dataVolume, PVC    the disk itself (raw file, or ``type='block'`` device), no copy
ephemeral          qcow2 overlay over the PVC's disk (writes are thrown away at stop)
containerDisk      qcow2 overlay over the image (the image is never written)
cloudInitNoCloud   NoCloud ISO (label cidata) built from userData/networkData
emptyDisk          sparse raw file of the requested capacity
=================  =========================================================================
"""

from __future__ import annotations

import enum
import json
import os
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cdi.api.virtualmachine import VMISpec, Volume, VolumeKind
from vm_runtime import cloudinit
from vm_runtime.domain import DiskSource, SourceType
from vm_runtime.errors import DomainError, VolumeNotReady
from vm_runtime.host import supports_direct_io

QEMU_IMG = os.environ.get("QEMU_IMG", "qemu-img")


class VolumeMode(enum.StrEnum):
    FILESYSTEM = "Filesystem"
    BLOCK = "Block"


@dataclass(frozen=True)
class ResolvedVolume:
    """A volume as the controller found it. ``path``: the disk file (or the volume directory,
    which holds ``disk.img``) for Filesystem; the device for Block."""

    mode: VolumeMode
    path: str
    shared: bool = False  # ReadWriteMany
    readonly: bool = False

    @property
    def disk_path(self) -> str:
        if self.mode == VolumeMode.FILESYSTEM and os.path.isdir(self.path):
            return os.path.join(self.path, "disk.img")
        return self.path


def _image_format(path: str) -> str:
    proc = subprocess.run(
        [QEMU_IMG, "info", "--output=json", "-U", path], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise VolumeNotReady(f"cannot read image {path}: {proc.stderr.strip()[-300:]}")
    fmt = str(json.loads(proc.stdout).get("format", "raw"))
    if fmt not in ("raw", "qcow2"):
        raise DomainError(f"image {path} is {fmt}; a containerDisk must be raw or qcow2")
    return fmt


def _overlay(base: str, base_format: str, out: Path) -> None:
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", base, "-F", base_format, str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise DomainError(f"creating the overlay {out} over {base} failed: {proc.stderr.strip()[-300:]}")


def _require(resolved: Mapping[str, ResolvedVolume], v: Volume) -> ResolvedVolume:
    r = resolved.get(v.name)
    if r is None:
        raise VolumeNotReady(
            f"volume {v.name!r} ({v.kind.value} {v.claim_name or v.image}) is not resolved yet"
        )
    path = r.disk_path
    if not os.path.exists(path):
        raise VolumeNotReady(f"volume {v.name!r}: disk {path} does not exist (is the DataVolume complete?)")
    if r.mode == VolumeMode.BLOCK and not stat.S_ISBLK(os.stat(path).st_mode):
        raise DomainError(f"volume {v.name!r} is a Block volume but {path} is not a block device")
    if r.mode == VolumeMode.FILESYSTEM and not stat.S_ISREG(os.lstat(path).st_mode):
        raise DomainError(f"volume {v.name!r}: disk {path} is not a regular file (a link or a device); a "
                          "Filesystem volume's disk must be the image itself: import the DataVolume again")
    return r


def prepare_volumes(
    spec: VMISpec,
    resolved: Mapping[str, ResolvedVolume],
    run_dir: Path,
    *,
    instance_id: str,
    hostname: str,
) -> dict[str, DiskSource]:
    """Create overlays, the cidata ISO and emptyDisk files in ``run_dir``; return the sources.

    :raises VolumeNotReady: a volume is not resolved or its disk is missing (retry later).
    :raises DomainError: a volume cannot be used as declared.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, DiskSource] = {}
    for v in spec.volumes:
        if v.kind in (VolumeKind.DATA_VOLUME, VolumeKind.PVC):
            r = _require(resolved, v)
            path = r.disk_path
            kind = SourceType.BLOCK if r.mode == VolumeMode.BLOCK else SourceType.FILE
            out[v.name] = DiskSource(
                path,
                kind,
                "raw",
                readonly=v.readonly or r.readonly,
                direct_io=supports_direct_io(path),
                shared=r.shared,
            )
        elif v.kind == VolumeKind.EPHEMERAL:
            r = _require(resolved, v)
            ov = run_dir / f"{v.name}.ephemeral.qcow2"
            _overlay(r.disk_path, "raw", ov)
            out[v.name] = DiskSource(str(ov), SourceType.FILE, "qcow2", direct_io=supports_direct_io(str(ov)))
        elif v.kind == VolumeKind.CONTAINER_DISK:
            r2 = resolved.get(v.name)
            base = r2.disk_path if r2 else (v.image or "")
            if not os.path.isabs(base) or not os.path.exists(base):
                raise VolumeNotReady(
                    f"containerDisk {v.name!r}: image {v.image!r} is not available locally; "
                    "resolve it to a disk file first"
                )
            ov = run_dir / f"{v.name}.containerdisk.qcow2"
            _overlay(base, _image_format(base), ov)
            out[v.name] = DiskSource(str(ov), SourceType.FILE, "qcow2", direct_io=supports_direct_io(str(ov)))
        elif v.kind == VolumeKind.CLOUD_INIT_NOCLOUD:
            iso = run_dir / f"{v.name}.cidata.iso"
            cloudinit.build_nocloud_iso(
                iso,
                user_data=v.user_data or "",
                meta_data_text=cloudinit.meta_data(instance_id, hostname),
                network_data=v.network_data,
            )
            out[v.name] = DiskSource(str(iso), SourceType.FILE, "raw", readonly=True, direct_io=False)
        elif v.kind == VolumeKind.EMPTY_DISK:
            img = run_dir / f"{v.name}.empty.img"
            img.unlink(missing_ok=True)
            with open(img, "wb") as f:
                f.truncate(v.capacity or 0)
            out[v.name] = DiskSource(str(img), SourceType.FILE, "raw", direct_io=supports_direct_io(str(img)))
    return out
