"""Admission (validate + normalize) of VirtualMachine and VirtualMachineInstance manifests.

``cdi.api.validation.admit`` knows these kinds only through a hook: importing ``vm_runtime``
registers :func:`admit_vm` and :func:`admit_vmi` with ``register_admitter``. Pure: no I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from cdi.api import validation
from cdi.api.virtualmachine import API_VERSION, KIND_VM, KIND_VMI, parse_vm, parse_vmi_spec
from cdi.common.errors import ValidationError, ValidationErrors


def _normalize(obj: Mapping[str, Any], kind: str) -> dict[str, Any]:
    new = copy.deepcopy(dict(obj))
    api = new.get("apiVersion")
    if api not in (API_VERSION, None):
        raise ValidationErrors(
            [ValidationError("apiVersion", f"{api!r} is not served for {kind}; write {API_VERSION}")]
        )
    new["apiVersion"] = API_VERSION
    meta = new.setdefault("metadata", {})
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ValidationErrors([ValidationError("metadata.name", f"a {kind} needs a name")])
    meta.setdefault("namespace", "default")
    return new


def _finish(new: dict[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
    new.pop("status", None)
    if old is None:
        return new
    if isinstance(old.get("status"), Mapping) and old["status"]:
        new["status"] = copy.deepcopy(old["status"])
    old_meta = old.get("metadata")
    if isinstance(old_meta, Mapping):
        for key in ("uid", "creationTimestamp"):
            if key not in new["metadata"] and old_meta.get(key):
                new["metadata"][key] = old_meta[key]
    return new


def admit_vm(obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """:raises ValidationErrors: every problem, including those of the dataVolumeTemplates."""
    new = _normalize(obj, KIND_VM)
    errors: list[ValidationError] = []
    try:
        parse_vm(new)
    except ValidationErrors as e:
        errors.extend(e.errors)
    dv_admit = validation.ADMITTERS.get("DataVolume")
    templates = new.get("spec", {}).get("dataVolumeTemplates") if isinstance(new.get("spec"), dict) else None
    if dv_admit is not None and isinstance(templates, list):
        for i, t in enumerate(templates):
            if not isinstance(t, dict):
                continue
            dv = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", **copy.deepcopy(t)}
            dv.setdefault("metadata", {}).setdefault("namespace", new["metadata"]["namespace"])
            try:
                dv_admit(dv, None)
            except ValidationErrors as e:
                for err in e.errors:
                    field = getattr(err, "field", "")
                    path = f"spec.dataVolumeTemplates[{i}]" + (f".{field}" if field else "")
                    errors.append(ValidationError(path, getattr(err, "detail", str(err))))
    if errors:
        raise ValidationErrors(errors)
    return _finish(new, old)


def admit_vmi(obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """:raises ValidationErrors: every problem; a VMI's spec cannot change after creation."""
    new = _normalize(obj, KIND_VMI)
    parse_vmi_spec(new.get("spec"), "spec")
    if old is not None and old.get("spec") != new.get("spec"):
        raise ValidationErrors(
            [ValidationError("spec", "a VirtualMachineInstance's spec cannot change; delete and recreate it")]
        )
    return _finish(new, old)


def register() -> None:
    validation.register_admitter(KIND_VM, admit_vm)
    validation.register_admitter(KIND_VMI, admit_vmi)
