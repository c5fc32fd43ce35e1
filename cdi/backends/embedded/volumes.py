"""Volumes of the embedded backend: directories for Filesystem, loop devices for Block.

Each storage class is a pool directory. A Filesystem volume is ``<pool>/fs/<claim-uid>/`` and
holds ``disk.img`` (or an extracted archive). A Block volume is a real block device: a loop
device (``losetup --direct-io=on``) over a sparse file ``<pool>/block/<claim-uid>.img`` of the
requested size; discard on the loop device punches holes in that file, so empty space stays
free. Loop devices were chosen over LVM thin pools because they need no volume group on the
host and behave the same in CI; loop attachments do not survive a reboot, so ``provision`` and
``lookup`` re-attach the file when it has no loop device.

Each volume has a ``<claim-uid>.json`` beside it with its mode, capacity and owner, so that the
pool can be listed without the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
from dataclasses import asdict

from cdi.api.contract import BLOCK, DISK_IMAGE_NAME, FILESYSTEM
from cdi.backends.base import StorageClassInfo, VolumeInfo
from cdi.common.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)


def _run(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError as e:
        raise PermanentError(f"{argv[0]} is not installed; run scripts/setup.sh") from e
    except subprocess.TimeoutExpired as e:
        raise TemporaryError(f"{' '.join(argv)} timed out") from e
    if p.returncode != 0:
        raise TemporaryError(f"{' '.join(argv)} failed: {p.stderr.strip()}")
    return p.stdout.strip()


class EmbeddedVolumes:
    """VolumeProvisioner over the pools of ``config.yaml``."""

    def __init__(self, classes: dict[str, StorageClassInfo]) -> None:
        self._classes = classes

    def storage_classes(self) -> dict[str, StorageClassInfo]:
        return dict(self._classes)

    def default_storage_class(self) -> str | None:
        for sc in self._classes.values():
            if sc.default:
                return sc.name
        return None

    # -- paths -----------------------------------------------------------------------------

    @staticmethod
    def _meta_path(pool: str, claim_uid: str) -> str:
        return os.path.join(pool, "meta", f"{claim_uid}.json")

    @staticmethod
    def _fs_dir(pool: str, claim_uid: str) -> str:
        return os.path.join(pool, "fs", claim_uid)

    @staticmethod
    def _block_file(pool: str, claim_uid: str) -> str:
        return os.path.join(pool, "block", f"{claim_uid}.img")

    def _find_meta(self, claim_uid: str) -> tuple[StorageClassInfo, dict[str, object]] | None:
        for sc in self._classes.values():
            p = self._meta_path(sc.path, claim_uid)
            if os.path.exists(p):
                with open(p) as f:
                    return sc, json.load(f)
        return None

    # -- loop devices ----------------------------------------------------------------------

    @staticmethod
    def _loop_for(backing: str) -> str | None:
        out = _run(["losetup", "--noheadings", "--output", "NAME,BACK-FILE", "--list"])
        real = os.path.realpath(backing)
        for line in out.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and os.path.realpath(parts[1].strip()) == real:
                return parts[0]
        return None

    def _attach(self, backing: str) -> str:
        dev = self._loop_for(backing)
        if dev:
            return dev
        if not os.path.exists("/dev/loop-control"):
            raise PermanentError(
                "Block volumes need loop devices and /dev/loop-control is missing; "
                "load the loop module (modprobe loop) or use volumeMode: Filesystem"
            )
        return _run(["losetup", "--find", "--show", "--direct-io=on", backing])

    # -- VolumeProvisioner -----------------------------------------------------------------

    def provision(
        self, claim_uid: str, namespace: str, name: str, storage_class: str, volume_mode: str, capacity: int
    ) -> VolumeInfo:
        sc = self._classes.get(storage_class)
        if sc is None:
            known = ", ".join(sorted(self._classes)) or "none"
            raise PermanentError(
                f'storage class "{storage_class}" does not exist (known: {known}); '
                "set storageClassName to one of them or add it to config.yaml"
            )
        if volume_mode not in sc.volume_modes:
            raise PermanentError(f'storage class "{storage_class}" does not offer volumeMode {volume_mode}')
        meta_path = self._meta_path(sc.path, claim_uid)
        os.makedirs(os.path.dirname(meta_path), exist_ok=True)
        if volume_mode == FILESYSTEM:
            path = self._fs_dir(sc.path, claim_uid)
            os.makedirs(path, mode=0o770, exist_ok=True)
            info = VolumeInfo(claim_uid, storage_class, volume_mode, capacity, path, os.path.join(path, DISK_IMAGE_NAME))
        elif volume_mode == BLOCK:
            backing = self._block_file(sc.path, claim_uid)
            os.makedirs(os.path.dirname(backing), exist_ok=True)
            if not os.path.exists(backing):
                with open(backing, "wb") as f:
                    f.truncate(capacity)
            dev = self._attach(backing)
            info = VolumeInfo(claim_uid, storage_class, volume_mode, capacity, dev, dev, backing)
        else:
            raise PermanentError(f"volumeMode {volume_mode!r} is not Filesystem or Block")
        meta = {"namespace": namespace, "name": name, **asdict(info)}
        tmp = meta_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, meta_path)
        return info

    def lookup(self, claim_uid: str) -> VolumeInfo | None:
        found = self._find_meta(claim_uid)
        if found is None:
            return None
        sc, meta = found
        mode = str(meta["volume_mode"])
        capacity = int(str(meta["capacity"]))
        if mode == BLOCK:
            backing = self._block_file(sc.path, claim_uid)
            if not os.path.exists(backing):
                return None
            dev = self._attach(backing)
            return VolumeInfo(claim_uid, sc.name, mode, capacity, dev, dev, backing)
        path = self._fs_dir(sc.path, claim_uid)
        if not os.path.isdir(path):
            return None
        return VolumeInfo(claim_uid, sc.name, mode, capacity, path, os.path.join(path, DISK_IMAGE_NAME))

    def reset(self, claim_uid: str) -> None:
        info = self.lookup(claim_uid)
        if info is None:
            return
        if info.volume_mode == BLOCK:
            _run(["blkdiscard", info.path])
            return
        for entry in os.listdir(info.path):
            p = os.path.join(info.path, entry)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)

    def release(self, claim_uid: str) -> None:
        found = self._find_meta(claim_uid)
        for sc in self._classes.values():
            backing = self._block_file(sc.path, claim_uid)
            if os.path.exists(backing):
                while True:
                    dev = self._loop_for(backing)
                    if dev is None:
                        break
                    _run(["losetup", "--detach", dev])
                os.unlink(backing)
            shutil.rmtree(self._fs_dir(sc.path, claim_uid), ignore_errors=True)
        if found is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._meta_path(found[0].path, claim_uid))
