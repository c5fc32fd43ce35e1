"""Object metadata and the small, strict JSON reader every API type is parsed with.

The reader collects *all* structural problems of a manifest (wrong types, unknown fields with a
did-you-mean suggestion) as :class:`~cdi.common.errors.ValidationError` values with
Kubernetes-style field paths (``spec.source.http.extraHeaders[1]``); callers raise them together
as one :class:`~cdi.common.errors.ValidationErrors`. No I/O here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdi.common.errors import ValidationError, ValidationErrors

DEFAULT_NAMESPACE = "default"

Errors = list[ValidationError]


# --- helpers shared by the API types -------------------------------------------------------


def child_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    """Name the JSON type of ``value`` for an error message ("the number 42")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The known field ``name`` was most likely meant to be, or None."""
    known = list(known)
    lowered = {k.lower(): k for k in known}
    if name.lower() in lowered:
        return lowered[name.lower()]
    squashed = {k.lower().replace("_", "").replace("-", ""): k for k in known}
    key = name.lower().replace("_", "").replace("-", "")
    if key in squashed:
        return squashed[key]
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def check_unknown(d: Mapping[str, Any], path: str, known: Sequence[str], errs: Errors) -> None:
    """Report every key of ``d`` that is not in ``known``, with a did-you-mean when one is close."""
    for key in d:
        if key in known:
            continue
        where = child_path(path, str(key))
        guess = suggest(str(key), known)
        if guess is not None:
            errs.append(ValidationError(where, f"unknown field; did you mean {guess!r}?"))
        else:
            listed = ", ".join(known) if known else "none"
            errs.append(ValidationError(where, f"unknown field; remove it (fields allowed here: {listed})"))


def as_mapping(value: Any, path: str, errs: Errors, example: str = "") -> Mapping[str, Any] | None:
    """``value`` if it is an object; else record an error and return None."""
    if isinstance(value, Mapping):
        return value
    hint = f"; write an object, e.g. {example}" if example else "; write an object (key: value lines)"
    errs.append(ValidationError(path, f"expected an object, got {describe(value)}{hint}"))
    return None


class Reader:
    """Typed access to one JSON object with every problem appended to ``errs``.

    Construction reports unknown keys; each getter reports a wrong type and returns the default.
    ``null`` counts as "not set" everywhere (as with Go's ``omitempty`` pointers).
    """

    def __init__(self, d: Mapping[str, Any], path: str, errs: Errors, known: Sequence[str]) -> None:
        self.d = d
        self.path = path
        self.errs = errs
        check_unknown(d, path, known, errs)

    def at(self, key: str) -> str:
        return child_path(self.path, key)

    def has(self, key: str) -> bool:
        return self.d.get(key) is not None

    def _bad(self, key: str, want: str, value: Any, fix: str) -> None:
        self.errs.append(ValidationError(self.at(key), f"expected {want}, got {describe(value)}; {fix}"))

    def text(self, key: str, default: str = "") -> str:
        v = self.d.get(key)
        if v is None:
            return default
        if isinstance(v, str):
            return v
        if isinstance(v, int | float) and not isinstance(v, bool):
            self._bad(key, "a string", v, f'put the value in quotes: {key}: "{v}"')
        else:
            self._bad(key, "a string", v, f'write {key}: "<text>"')
        return default

    def opt_text(self, key: str) -> str | None:
        """An optional string; an empty string counts as not set."""
        v = self.text(key)
        return v or None

    def flag(self, key: str, default: bool = False) -> bool:
        v = self.d.get(key)
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        self._bad(key, "a boolean", v, f"write {key}: true or {key}: false (without quotes)")
        return default

    def opt_flag(self, key: str) -> bool | None:
        if self.d.get(key) is None:
            return None
        return self.flag(key)

    def integer(self, key: str, default: int = 0) -> int:
        v = self.d.get(key)
        if v is None:
            return default
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        self._bad(key, "an integer", v, f"write a whole number, e.g. {key}: 1")
        return default

    def texts(self, key: str) -> list[str]:
        v = self.d.get(key)
        if v is None:
            return []
        if not isinstance(v, list):
            if isinstance(v, str):
                self._bad(key, "a list of strings", v, f'write it as a list: {key}: ["{v}"]')
            else:
                self._bad(key, "a list of strings", v, f'write {key}: ["<text>", ...]')
            return []
        out: list[str] = []
        for i, item in enumerate(v):
            if isinstance(item, str):
                out.append(item)
            else:
                self.errs.append(
                    ValidationError(
                        f"{self.at(key)}[{i}]",
                        f'expected a string, got {describe(item)}; put it in quotes: "{item}"',
                    )
                )
        return out

    def text_map(self, key: str) -> dict[str, str]:
        v = self.d.get(key)
        if v is None:
            return {}
        m = as_mapping(v, self.at(key), self.errs, f'{key}: {{"name": "value"}}')
        if m is None:
            return {}
        out: dict[str, str] = {}
        for k, item in m.items():
            if isinstance(item, str):
                out[str(k)] = item
            else:
                self.errs.append(
                    ValidationError(
                        child_path(self.at(key), str(k)),
                        f'expected a string, got {describe(item)}; put the value in quotes: {k}: "{item}"',
                    )
                )
        return out

    def obj(self, key: str, example: str = "") -> Mapping[str, Any] | None:
        v = self.d.get(key)
        if v is None:
            return None
        return as_mapping(v, self.at(key), self.errs, example)

    def any_obj(self, key: str) -> dict[str, Any] | None:
        """A free-form object, kept as is (deep-copied)."""
        m = self.obj(key)
        return deep_copy(m) if m is not None else None

    def objlist(self, key: str) -> list[dict[str, Any]]:
        v = self.d.get(key)
        if v is None:
            return []
        if not isinstance(v, list):
            self._bad(key, "a list of objects", v, f"write {key}: [{{...}}]")
            return []
        out: list[dict[str, Any]] = []
        for i, item in enumerate(v):
            m = as_mapping(item, f"{self.at(key)}[{i}]", self.errs)
            if m is not None:
                out.append(deep_copy(m))
        return out


def deep_copy(m: Mapping[str, Any]) -> dict[str, Any]:
    def copy(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): copy(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [copy(x) for x in v]
        return v

    out: dict[str, Any] = copy(m)
    return out


def raise_if_any(errs: Errors) -> None:
    if errs:
        raise ValidationErrors(list(errs))


def check_type_meta(
    d: Mapping[str, Any], errs: Errors, api_versions: Sequence[str], kind: str, canonical: str
) -> None:
    """Check ``apiVersion`` (one of ``api_versions``) and ``kind``; the fix names ``canonical``."""
    version = d.get("apiVersion")
    if version is None:
        errs.append(ValidationError("apiVersion", f"missing; write apiVersion: {canonical}"))
    elif version not in api_versions:
        errs.append(
            ValidationError(
                "apiVersion", f"{version!r} is not served for {kind}; write apiVersion: {canonical}"
            )
        )
    got = d.get("kind")
    if got is None:
        errs.append(ValidationError("kind", f"missing; write kind: {kind}"))
    elif got != kind:
        errs.append(ValidationError("kind", f"{got!r} is not a {kind}; write kind: {kind}"))


# --- ObjectMeta -----------------------------------------------------------------------------

_META_FIELDS = (
    "name",
    "generateName",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "selfLink",
)
# Accepted and carried through unchanged, but not modelled.
_META_PASSTHROUGH = ("deletionGracePeriodSeconds", "managedFields", "selfLink")


@dataclass
class ObjectMeta:
    """``metadata`` of every object (Kubernetes ``ObjectMeta``, the parts we use)."""

    name: str = ""
    namespace: str = DEFAULT_NAMESPACE
    uid: str = ""
    resource_version: str = ""
    generation: int = 0
    creation_timestamp: str = ""
    deletion_timestamp: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    finalizers: list[str] = field(default_factory=list)
    owner_references: list[dict[str, Any]] = field(default_factory=list)
    generate_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # _META_PASSTHROUGH fields, verbatim

    FIELDS = _META_FIELDS

    @classmethod
    def parse(cls, d: Any, path: str, errs: Errors) -> ObjectMeta:
        """Parse, appending problems to ``errs`` (for use inside a bigger object)."""
        if d is None:
            return cls()
        m = as_mapping(d, path, errs, "metadata: {name: my-dv}")
        if m is None:
            return cls()
        r = Reader(m, path, errs, _META_FIELDS)
        return cls(
            name=r.text("name"),
            namespace=r.text("namespace") or DEFAULT_NAMESPACE,
            uid=r.text("uid"),
            resource_version=r.text("resourceVersion"),
            generation=r.integer("generation"),
            creation_timestamp=r.text("creationTimestamp"),
            deletion_timestamp=r.opt_text("deletionTimestamp"),
            labels=r.text_map("labels"),
            annotations=r.text_map("annotations"),
            finalizers=r.texts("finalizers"),
            owner_references=r.objlist("ownerReferences"),
            generate_name=r.text("generateName"),
            extra={k: _copy_any(m[k]) for k in _META_PASSTHROUGH if m.get(k) is not None},
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "metadata") -> ObjectMeta:
        errs: Errors = []
        meta = cls.parse(d, path, errs)
        raise_if_any(errs)
        return meta

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        if self.generate_name:
            out["generateName"] = self.generate_name
        out["namespace"] = self.namespace
        if self.uid:
            out["uid"] = self.uid
        if self.resource_version:
            out["resourceVersion"] = self.resource_version
        if self.generation:
            out["generation"] = self.generation
        if self.creation_timestamp:
            out["creationTimestamp"] = self.creation_timestamp
        if self.deletion_timestamp is not None:
            out["deletionTimestamp"] = self.deletion_timestamp
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.finalizers:
            out["finalizers"] = list(self.finalizers)
        if self.owner_references:
            out["ownerReferences"] = [deep_copy(o) for o in self.owner_references]
        for k, v in self.extra.items():
            out[k] = _copy_any(v)
        return out


def _copy_any(v: Any) -> Any:
    if isinstance(v, Mapping):
        return deep_copy(v)
    if isinstance(v, list):
        return [_copy_any(x) for x in v]
    return v
