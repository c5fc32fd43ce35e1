"""The seams between the controller and where things run.

The controller talks to exactly three things: a ``Store`` of objects (``cdi.store``), a
``VolumeProvisioner`` that creates the storage behind a PersistentVolumeClaim, and a
``WorkerRunner`` that starts importer/upload workers and reports how they ended. The embedded
backend implements them with SQLite, files/loop devices and local processes; a Kubernetes backend
will implement them with the API server, PVCs and pods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cdi.api.contract import Progress, WorkerResult
from cdi.common.confinement import Grant


@dataclass(frozen=True)
class StorageClassInfo:
    name: str
    path: str  # pool directory on this machine
    default: bool = False
    volume_modes: tuple[str, ...] = ("Filesystem", "Block")
    filesystem_overhead: float | None = None  # None: the global default


@dataclass(frozen=True)
class VolumeInfo:
    claim_uid: str
    storage_class: str
    volume_mode: str  # Filesystem | Block
    capacity: int  # bytes
    path: str  # Filesystem: the volume directory; Block: the device node (/dev/loopN)
    disk_path: str  # Filesystem: path/disk.img; Block: the device node
    backing_file: str | None = None  # Block: the sparse file behind the loop device


class VolumeProvisioner(Protocol):
    def storage_classes(self) -> dict[str, StorageClassInfo]: ...

    def default_storage_class(self) -> str | None: ...

    def provision(
        self, claim_uid: str, namespace: str, name: str, storage_class: str, volume_mode: str, capacity: int
    ) -> VolumeInfo:
        """Create the volume, or return it if it exists (idempotent by claim_uid)."""
        ...

    def lookup(self, claim_uid: str) -> VolumeInfo | None: ...

    def reset(self, claim_uid: str) -> None:
        """Make the volume empty again (before a retry, or after a failure)."""
        ...

    def release(self, claim_uid: str) -> None:
        """Delete the volume and its data (idempotent)."""
        ...


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    running: bool
    exit_code: int | None  # None while running or when killed by a signal
    signal: int | None  # the signal that ended it, when known
    result: WorkerResult | None  # the termination message, if one was written
    progress: Progress | None
    started_at: float
    finished_at: float | None
    log_path: str


class WorkerRunner(Protocol):
    def workdir(self, name: str) -> str:
        """The worker's private directory (mode 0700): its result, progress and state files."""
        ...

    def secrets_dir(self, name: str) -> str:
        """A fresh private directory for secret inputs (CA bundles, secret headers), removed as
        soon as the worker has ended."""
        ...

    def held_secret(self, name: str, filename: str) -> str:
        """A path for the controller side's own copy of a secret shared with the worker, out of
        the worker's reach, removed when the worker has ended."""
        ...

    def start(self, name: str, entrypoint: str, env: dict[str, str], grants: Sequence[Grant] = ()) -> None:
        """Start worker ``name`` (``entrypoint`` is "importer" or "upload-server"); ``grants`` are
        the only paths of the machine it may use besides its workdir (its volume, its scratch)."""
        ...

    def status(self, name: str) -> WorkerStatus | None: ...

    def stop(self, name: str) -> None:
        """Kill the worker if it runs; keep its files (log, result)."""
        ...

    def clear(self, name: str) -> None:
        """Forget a finished run (its pid, result and progress) but keep its log."""
        ...

    def delete(self, name: str) -> None:
        """Stop it and remove its files."""
        ...
