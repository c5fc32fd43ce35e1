"""Kubernetes' limits on every stored object: label and annotation syntax, their size, the object's size.

The API server and etcd refuse what this module refuses, for every kind (``admit`` applies it
before a kind's own rules, so VirtualMachines and future kinds get it too):

- labels: keys are *qualified names* (``[prefix/]name``: name part <= 63 characters of
  alphanumerics, ``-``, ``_``, ``.``, starting and ending alphanumeric; the optional prefix a
  DNS-1123 subdomain <= 253), values <= 63 characters of the same alphabet, or empty;
- annotations: keys are qualified names (checked lowercased, as Kubernetes does), and all keys
  plus values of one object hold at most 256 KiB (``TotalAnnotationSizeLimitB``);
- the object: at most 1.5 MiB (etcd's default ``--max-request-bytes``), measured as its compact
  UTF-8 JSON; a request (the manifest as sent) at most 3 MiB, like kube-apiserver's body limit.

Sizes are counted in UTF-8 bytes (Go's ``len``), not characters. The object size is computed
by :func:`json_size`, which stops as soon as the limit is passed: a 50 MB annotation costs a
comparison, not an encoding.

The store (``cdi.store.sqlite``) refuses bodies over :data:`MAX_STORED_BYTES` whatever wrote
them: the admission limit plus room for what the controller adds (status, annotations), so the
controller's own writes to an admitted object never hit it. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from cdi.common.documents import MAX_INPUT_BYTES
from cdi.common.errors import ValidationError
from cdi.common.units import KiB, MiB

MAX_ANNOTATIONS_BYTES = 256 * KiB
"""All annotation keys and values of one object (Kubernetes' TotalAnnotationSizeLimitB)."""
MAX_OBJECT_BYTES = 1536 * KiB
"""One object as stored: 1.5 MiB, etcd's default request limit."""
MAX_REQUEST_BYTES = MAX_INPUT_BYTES
"""One object as submitted (before status and server fields are dropped): 3 MiB, kube-apiserver's
limit on a request body, as for a manifest's input."""
MAX_DATA_BYTES = 1 * MiB
"""The data of a Secret or ConfigMap (values only: Kubernetes' MaxSecretSize)."""
STORE_HEADROOM = 256 * KiB
MAX_STORED_BYTES = MAX_OBJECT_BYTES + STORE_HEADROOM
"""What the store accepts from any writer (admission's limit + room for the controller)."""

LABEL_VALUE_MAX = 63
NAME_PART_MAX = 63
PREFIX_MAX = 253
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
"""Kubernetes object names and label/annotation key prefixes."""
_NAME_RULE = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character"
)
_SHOWN = 80  # characters of a key shown in a message


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _shown(text: str) -> str:
    return json.dumps(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


# --- sizes ------------------------------------------------------------------------------------


def _str_size(s: str, room: int) -> int:
    """Bytes of ``s`` as a JSON string (quotes, escapes, UTF-8); > ``room`` may be approximate."""
    if len(s) > room:  # at least one byte per character: over already, no need to encode
        return len(s) + 2
    return utf8_len(json.dumps(s, ensure_ascii=False))


def json_size(value: Any, limit: int) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON, exact up to ``limit``; past it, some number
    > ``limit`` (the walk stops there: the cost is bounded by ``limit``, not by ``value``)."""
    total = 0
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += _str_size(v, limit - total)
        elif isinstance(v, Mapping):
            n = len(v)
            total += 2 + max(0, n - 1) + n  # braces, commas, colons
            for k, x in v.items():
                stack.append(x)
                stack.append(k if isinstance(k, str) else str(k))
        elif isinstance(v, list | tuple):
            total += 2 + max(0, len(v) - 1)
            stack.extend(v)
        elif v is None or v is True:
            total += 4
        elif v is False:
            total += 5
        elif isinstance(v, int):
            try:
                total += len(str(v))
            except ValueError:  # more digits than Python prints
                total += limit + 1
        elif isinstance(v, float):
            total += len(json.dumps(v))
        else:  # not JSON at all: counted by its text, the parsers report the type
            total += len(repr(v)[:limit])
        if total > limit:
            return total
    return total


def _words(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= KiB:
        return f"{n / KiB:.0f} KiB"
    return f"{n} bytes"


def _largest_field(obj: Mapping[str, Any], limit: int) -> str:
    """``spec`` or ``metadata.annotations``: the top-level field holding the most bytes."""
    parts: dict[str, int] = {}
    for key, value in obj.items():
        if key == "metadata" and isinstance(value, Mapping):
            parts.update({f"metadata.{k}": json_size(v, limit) for k, v in value.items()})
        else:
            parts[str(key)] = json_size(value, limit)
    return max(parts, key=lambda k: parts[k]) if parts else ""


def check_object_size(obj: Mapping[str, Any], limit: int, what: str) -> ValidationError | None:
    """An error when ``obj`` is larger than ``limit`` bytes as JSON, naming its largest field."""
    if json_size(obj, limit) <= limit:
        return None
    largest = _largest_field(obj, limit)
    return ValidationError(
        "",
        f"Too long: {what} must have at most {limit} bytes ({_words(limit)}) as JSON"
        + (f"; most of this one is {largest}" if largest else "")
        + ": keep large data out of the object (in a volume, or spread over several Secrets or ConfigMaps)",
    )


# --- labels and annotations -------------------------------------------------------------------


def _subdomain_problems(prefix: str) -> list[str]:
    if len(prefix) > PREFIX_MAX:
        return [f"prefix part must be no more than {PREFIX_MAX} characters"]
    if not DNS1123_SUBDOMAIN.match(prefix):
        return [
            "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character "
            "(e.g. 'example.com')"
        ]
    return []


def qualified_name_problems(key: str) -> list[str]:
    """Kubernetes' ``IsQualifiedName``: ``[prefix/]name`` (label and annotation keys)."""
    parts = key.split("/")
    if len(parts) == 1:
        prefix, name = None, parts[0]
    elif len(parts) == 2:
        prefix, name = parts
    else:
        return [
            f"a qualified name {_NAME_RULE} (e.g. 'MyName', or 'my.name', or '123-abc') with an "
            "optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    out: list[str] = []
    if prefix is not None:
        out.extend(["prefix part must be non-empty"] if not prefix else _subdomain_problems(prefix))
    if not name:
        out.append("name part must be non-empty")
    elif len(name) > NAME_PART_MAX:
        out.append(f"name part must be no more than {NAME_PART_MAX} characters")
    elif not _NAME_PART.match(name):
        out.append(f"name part {_NAME_RULE} (e.g. 'MyName', or 'my.name', or '123-abc')")
    return out


def label_value_problems(value: str) -> list[str]:
    """Kubernetes' ``IsValidLabelValue``."""
    if len(value) > LABEL_VALUE_MAX:
        return [f"must be no more than {LABEL_VALUE_MAX} characters"]
    if not _LABEL_VALUE.match(value):
        return [
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
            "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue', or "
            "'my_value', or '12345')"
        ]
    return []


def check_labels(labels: Any, path: str, errs: list[ValidationError]) -> None:
    """Label keys and values (entries that are not strings are left to the type checks)."""
    if not isinstance(labels, Mapping):
        return
    for key, value in labels.items():
        if not isinstance(key, str):
            continue
        for problem in qualified_name_problems(key):
            errs.append(ValidationError(path, f"Invalid value: {_shown(key)}: {problem}"))
        if isinstance(value, str):
            for problem in label_value_problems(value):
                errs.append(
                    ValidationError(
                        path,
                        f"Invalid value: {_shown(value)}: {problem} (the value of label {_shown(key)}; "
                        "keep longer text in an annotation)",
                    )
                )


def check_annotations(annotations: Any, path: str, errs: list[ValidationError]) -> None:
    """Annotation keys, and their total size (keys + values, UTF-8 bytes); values never shown."""
    if not isinstance(annotations, Mapping):
        return
    total = 0
    last_applied = 0
    for key, value in annotations.items():
        if not isinstance(key, str):
            continue
        for problem in qualified_name_problems(key.lower()):
            errs.append(ValidationError(path, f"Invalid value: {_shown(key)}: {problem}"))
        size = utf8_len(key) + (utf8_len(value) if isinstance(value, str) else 0)
        total += size
        if key == LAST_APPLIED:
            last_applied = size
    if total > MAX_ANNOTATIONS_BYTES:
        note = (
            f", {last_applied} of them in {LAST_APPLIED} (the copy of the manifest `cdi apply` keeps: "
            "create large Secrets and ConfigMaps with `cdi create` instead)"
            if last_applied
            else ""
        )
        errs.append(
            ValidationError(
                path,
                f"Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes; these annotations hold "
                f"{total} bytes (keys and values){note}; keep large data in a ConfigMap or Secret",
            )
        )


def check_metadata_limits(obj: Mapping[str, Any]) -> list[ValidationError]:
    """Label and annotation rules of ``obj``'s metadata (any kind)."""
    errs: list[ValidationError] = []
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        check_labels(meta.get("labels"), "metadata.labels", errs)
        check_annotations(meta.get("annotations"), "metadata.annotations", errs)
    return errs


def check_data_size(values: list[str | bytes], path: str, kind: str) -> ValidationError | None:
    """Kubernetes' limit on the data of a Secret or ConfigMap (values, UTF-8 bytes)."""
    total = sum(len(v) if isinstance(v, bytes) else utf8_len(v) for v in values)
    if total <= MAX_DATA_BYTES:
        return None
    return ValidationError(
        path,
        f"Too long: must have at most {MAX_DATA_BYTES} bytes; this {kind} holds {total} bytes of data: "
        f"split it into several {kind}s (or keep large files in a volume)",
    )


__all__ = [
    "LAST_APPLIED",
    "MAX_ANNOTATIONS_BYTES",
    "MAX_DATA_BYTES",
    "MAX_OBJECT_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_STORED_BYTES",
    "check_annotations",
    "check_data_size",
    "check_labels",
    "check_metadata_limits",
    "check_object_size",
    "json_size",
    "label_value_problems",
    "qualified_name_problems",
]
