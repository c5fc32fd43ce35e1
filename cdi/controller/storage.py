"""What volume a DataVolume asks for: class, mode, access modes and capacity (pure).

``spec.pvc`` is taken literally (capacity = the request). ``spec.storage`` is CDI's
recommended form: defaults come from the storage class, and on Filesystem volumes the request is
inflated by the filesystem overhead so that the *usable* size is what the user asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cdi.api.contract import BLOCK, FILESYSTEM
from cdi.common.errors import PermanentError
from cdi.common.units import MiB, format_quantity, human_bytes, parse_quantity, round_up


@dataclass(frozen=True)
class StorageRequest:
    api: str  # "pvc" or "storage"
    storage_class: str
    volume_mode: str
    access_modes: tuple[str, ...]
    requested: int  # the size the user wrote, in bytes
    capacity: int  # what the volume gets, in bytes
    overhead: float  # filesystem overhead applied (0 for Block)


def resolve(spec: dict[str, Any], default_class: str | None, overhead_for: Any) -> StorageRequest:
    """:raises PermanentError: when no storage class applies or the size is missing."""
    api = "storage" if spec.get("storage") is not None else "pvc"
    s = spec.get(api) or {}
    sc = s.get("storageClassName") or default_class
    if not sc:
        raise PermanentError(
            f"spec.{api}.storageClassName is not set and there is no default storage class; "
            "set storageClassName or mark a class default in config.yaml"
        )
    mode = s.get("volumeMode") or FILESYSTEM
    if mode == "FromStorageProfile":
        mode = FILESYSTEM
    access = tuple(s.get("accessModes") or ["ReadWriteOnce"])
    size_text = ((s.get("resources") or {}).get("requests") or {}).get("storage")
    if size_text is None:
        raise PermanentError(f"spec.{api}.resources.requests.storage is required for this source; write e.g. 10Gi")
    requested = parse_quantity(size_text)
    overhead = float(overhead_for(sc)) if mode == FILESYSTEM else 0.0
    if api == "storage" and mode == FILESYSTEM:
        capacity = round_up(math.ceil(round_up(requested, MiB) * (1 + overhead)), MiB)
    else:
        capacity = requested
    return StorageRequest(api, sc, mode, access, requested, capacity, overhead)


def too_small_message(req: StorageRequest, virtual_size: int | None, usable_size: int | None) -> str:
    """CDI's out-of-space message, worded for how this DataVolume asks for storage."""
    if virtual_size is None or usable_size is None:
        return "DataVolume too small to contain image"
    if req.api == "storage" or req.volume_mode == BLOCK:
        need = round_up(virtual_size, MiB)
    else:
        need = round_up(math.ceil(round_up(virtual_size, MiB) * (1 + req.overhead)), MiB)
    return (
        f"DataVolume too small: image virtual size {human_bytes(virtual_size)} ({virtual_size} bytes), "
        f"usable {human_bytes(usable_size)} ({usable_size} bytes); "
        f"request at least {format_quantity(need)} in spec.{req.api}.resources.requests.storage"
    )
