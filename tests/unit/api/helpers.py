"""Shared builders and assertions for the API tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from cdi.common.errors import ValidationErrors


def dv(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    """A valid http DataVolume manifest, with ``spec`` keys replacing the defaults."""
    base: dict[str, Any] = {
        "source": {"http": {"url": "https://example.com/disk.qcow2"}},
        "storage": {"resources": {"requests": {"storage": "1Gi"}}},
    }
    if spec is not None:
        base.update(copy.deepcopy(spec))
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": "my-dv", **meta},
        "spec": {k: v for k, v in base.items() if v is not None},
    }


def errors(fn: Callable[[], object]) -> dict[str, str]:
    """Run ``fn``, expect ValidationErrors, return {field path: detail message}."""
    with pytest.raises(ValidationErrors) as info:
        fn()
    return {e.field: e.detail for e in info.value.errors}


def assert_error(found: dict[str, str], path: str, *fragments: str) -> None:
    assert path in found, f"no error at {path!r}; errors were {found}"
    for frag in fragments:
        assert frag in found[path], f"{frag!r} not in {found[path]!r}"
