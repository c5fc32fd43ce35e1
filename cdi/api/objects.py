"""Core ``v1`` Secret and ConfigMap (referenced by DataVolume sources)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cdi.api.meta import (
    Errors,
    ObjectMeta,
    Reader,
    as_mapping,
    check_type_meta,
    child_path,
    describe,
    raise_if_any,
)
from cdi.common.errors import ValidationError

API_VERSION = "v1"
SECRET_KIND = "Secret"
CONFIGMAP_KIND = "ConfigMap"
OPAQUE = "Opaque"


def _b64_map(r: Reader, key: str, errs: Errors) -> dict[str, bytes]:
    """Decode a map of base64 strings; a bad value is an error naming the key (never the value)."""
    m = r.obj(key, f"{key}: {{name: <base64>}}")
    out: dict[str, bytes] = {}
    if m is None:
        return out
    for k, v in m.items():
        path = child_path(r.at(key), str(k))
        if v is None:
            v = ""
        if not isinstance(v, str):
            errs.append(
                ValidationError(
                    path,
                    f"expected a base64 string, got {_type_name(v)}; "
                    "write the value base64-encoded in quotes, or put it in stringData",
                )
            )
            continue
        try:
            out[str(k)] = base64.b64decode("".join(v.split()), validate=True)
        except (binascii.Error, ValueError):
            errs.append(
                ValidationError(
                    path,
                    "value is not valid base64; encode it (e.g. `base64 -w0`), or move it to stringData as plain text",
                )
            )
    return out


def _type_name(v: Any) -> str:
    """The JSON type of ``v`` without its value (values may be secret)."""
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, Mapping):
        return "an object"
    if isinstance(v, list):
        return "a list"
    return describe(None) if v is None else type(v).__name__


def _plain_map(r: Reader, key: str, errs: Errors) -> dict[str, str]:
    """A map of strings whose values are never echoed in errors."""
    m = r.obj(key, f"{key}: {{name: value}}")
    out: dict[str, str] = {}
    if m is None:
        return out
    for k, v in m.items():
        if isinstance(v, str):
            out[str(k)] = v
        elif v is None:
            out[str(k)] = ""
        else:
            errs.append(
                ValidationError(
                    child_path(r.at(key), str(k)),
                    f"expected a string, got {_type_name(v)}; put the value in quotes",
                )
            )
    return out


def _b64(data: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode("ascii") for k, v in data.items()}


def _parse_common(
    d: Mapping[str, Any], kind: str, fields_: tuple[str, ...], errs: Errors
) -> tuple[Mapping[str, Any] | None, Reader | None, ObjectMeta]:
    m = as_mapping(d, "", errs, f"a {kind} manifest")
    if m is None:
        return None, None, ObjectMeta()
    check_type_meta(m, errs, (API_VERSION,), kind, API_VERSION)
    r = Reader(m, "", errs, fields_)
    meta = ObjectMeta.parse(m.get("metadata"), "metadata", errs)
    return m, r, meta


@dataclass
class Secret:
    metadata: ObjectMeta
    type: str = OPAQUE
    data: dict[str, bytes] = field(default_factory=dict)
    immutable: bool | None = None

    KIND: ClassVar[str] = SECRET_KIND
    FIELDS: ClassVar[tuple[str, ...]] = (
        "apiVersion",
        "kind",
        "metadata",
        "type",
        "data",
        "stringData",
        "immutable",
    )

    @property
    def name(self) -> str:
        return self.metadata.name

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Secret:
        """Parse a Secret; ``stringData`` is merged over the decoded ``data`` (as the API server does)."""
        errs: Errors = []
        m, r, meta = _parse_common(d, SECRET_KIND, cls.FIELDS, errs)
        if m is None or r is None:
            raise_if_any(errs)
            raise AssertionError("unreachable")
        data = _b64_map(r, "data", errs)
        for k, v in _plain_map(r, "stringData", errs).items():
            data[k] = v.encode("utf-8")
        secret = cls(
            metadata=meta, type=r.text("type") or OPAQUE, data=data, immutable=r.opt_flag("immutable")
        )
        raise_if_any(errs)
        return secret

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": SECRET_KIND,
            "metadata": self.metadata.to_dict(),
            "type": self.type,
        }
        if self.data:
            out["data"] = _b64(self.data)
        if self.immutable is not None:
            out["immutable"] = self.immutable
        return out

    def __repr__(self) -> str:  # never show secret values
        return f"Secret(name={self.metadata.name!r}, namespace={self.metadata.namespace!r}, keys={sorted(self.data)})"


@dataclass
class ConfigMap:
    metadata: ObjectMeta
    data: dict[str, str] = field(default_factory=dict)
    binary_data: dict[str, bytes] = field(default_factory=dict)
    immutable: bool | None = None

    KIND: ClassVar[str] = CONFIGMAP_KIND
    FIELDS: ClassVar[tuple[str, ...]] = ("apiVersion", "kind", "metadata", "data", "binaryData", "immutable")

    @property
    def name(self) -> str:
        return self.metadata.name

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConfigMap:
        errs: Errors = []
        m, r, meta = _parse_common(d, CONFIGMAP_KIND, cls.FIELDS, errs)
        if m is None or r is None:
            raise_if_any(errs)
            raise AssertionError("unreachable")
        cm = cls(
            metadata=meta,
            data=r.text_map("data"),
            binary_data=_b64_map(r, "binaryData", errs),
            immutable=r.opt_flag("immutable"),
        )
        raise_if_any(errs)
        return cm

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": CONFIGMAP_KIND,
            "metadata": self.metadata.to_dict(),
        }
        if self.data:
            out["data"] = dict(self.data)
        if self.binary_data:
            out["binaryData"] = _b64(self.binary_data)
        if self.immutable is not None:
            out["immutable"] = self.immutable
        return out
