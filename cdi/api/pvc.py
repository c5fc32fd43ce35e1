"""The core ``v1`` PersistentVolumeClaim (the parts CDI and the embedded backend use)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cdi.api.datavolume import StorageSpec
from cdi.api.meta import Errors, ObjectMeta, Reader, as_mapping, check_type_meta, deep_copy, raise_if_any
from cdi.common.errors import ValidationError

API_VERSION = "v1"
KIND = "PersistentVolumeClaim"


@dataclass
class PersistentVolumeClaim:
    metadata: ObjectMeta
    spec: StorageSpec
    status: dict[str, Any] = field(default_factory=dict)

    API_VERSION: ClassVar[str] = API_VERSION
    KIND: ClassVar[str] = KIND
    FIELDS: ClassVar[tuple[str, ...]] = ("apiVersion", "kind", "metadata", "spec", "status")

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PersistentVolumeClaim:
        """Parse a PersistentVolumeClaim manifest; raises ValidationErrors."""
        errs: Errors = []
        m = as_mapping(d, "", errs, "a PersistentVolumeClaim manifest")
        if m is None:
            raise_if_any(errs)
            raise AssertionError("unreachable")
        check_type_meta(m, errs, (API_VERSION,), KIND, API_VERSION)
        Reader(m, "", errs, cls.FIELDS)
        metadata = ObjectMeta.parse(m.get("metadata"), "metadata", errs)
        spec = StorageSpec()
        if m.get("spec") is None:
            errs.append(
                ValidationError(
                    "spec",
                    "missing; write spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 10Gi}}}",
                )
            )
        else:
            sm = as_mapping(m["spec"], "spec", errs, "spec: {accessModes: [ReadWriteOnce], ...}")
            if sm is not None:
                spec = StorageSpec.parse(sm, "spec", errs)
        status: dict[str, Any] = {}
        if m.get("status") is not None:
            st = as_mapping(m["status"], "status", errs)
            status = deep_copy(st) if st is not None else {}
        raise_if_any(errs)
        return cls(metadata=metadata, spec=spec, status=status)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": self.metadata.to_dict(),
            "spec": self.spec.to_dict(),
        }
        if self.status:
            out["status"] = deep_copy(self.status)
        return out
