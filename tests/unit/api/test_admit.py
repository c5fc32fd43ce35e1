"""The admission entry point used by the CLI and the controller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cdi.api import validation
from cdi.api.validation import ADMITTERS, admit, register_admitter
from tests.unit.api.helpers import assert_error, dv, errors


def test_create_normalizes() -> None:
    d = dv()
    d["apiVersion"] = "cdi.kubevirt.io/v1alpha1"
    d["status"] = {"phase": "Succeeded"}
    out = admit(d)
    assert out["apiVersion"] == "cdi.kubevirt.io/v1beta1"
    assert out["metadata"] == {"name": "my-dv", "namespace": "default"}
    assert "status" not in out
    assert out["spec"] == {
        "source": {"http": {"url": "https://example.com/disk.qcow2"}},
        "storage": {"resources": {"requests": {"storage": "1Gi"}}},
        "contentType": "kubevirt",
    }
    assert d["status"] == {"phase": "Succeeded"}  # input not mutated


def test_admit_is_idempotent() -> None:
    once = admit(dv({"source": {"pvc": {"name": "src"}}, "storage": {}}))
    assert admit(once) == once
    assert once["spec"]["source"]["pvc"] == {"namespace": "default", "name": "src"}


def test_update_keeps_old_status_and_server_fields() -> None:
    stored = admit(dv())
    stored["metadata"].update(uid="u-1", creationTimestamp="2024-01-01T00:00:00Z")
    stored["status"] = {"phase": "ImportInProgress", "progress": "10.00%"}
    new = dv(labels={"team": "a"})
    new["status"] = {"phase": "Succeeded"}
    out = admit(new, stored)
    assert out["status"] == {"phase": "ImportInProgress", "progress": "10.00%"}
    assert out["metadata"]["uid"] == "u-1" and out["metadata"]["labels"] == {"team": "a"}


def test_update_spec_change_rejected() -> None:
    stored = admit(dv())
    found = errors(lambda: admit(dv({"source": {"http": {"url": "https://example.com/b.img"}}}), stored))
    assert_error(found, "spec.source.http.url", "immutable after creation", "delete and recreate")


def test_kind_change_rejected() -> None:
    stored = admit(dv())
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "my-dv"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    assert_error(errors(lambda: admit(pvc, stored)), "kind", "cannot change")


def test_dispatch_core_kinds() -> None:
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "c"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    assert admit(pvc)["metadata"]["namespace"] == "default"
    s = admit({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"a": "b"}})
    assert s["data"] == {"a": "Yg=="} and s["type"] == "Opaque"
    c = admit({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}})
    assert c["data"] == {"a": "b"}


def test_unknown_kind_lists_supported() -> None:
    found = errors(lambda: admit({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}))
    assert_error(
        found, "kind", "'Pod' is not a supported kind", "ConfigMap, DataVolume, PersistentVolumeClaim"
    )
    assert_error(errors(lambda: admit({"metadata": {}})), "kind", "missing")


@pytest.fixture
def clean_admitters() -> Iterator[None]:
    """No VM admitter, whatever an imported package (vm_runtime) registered; restored after."""
    saved = dict(ADMITTERS)
    for kind in ("VirtualMachine", "VirtualMachineInstance"):
        ADMITTERS.pop(kind, None)
    yield
    ADMITTERS.clear()
    ADMITTERS.update(saved)


@pytest.mark.usefixtures("clean_admitters")
@pytest.mark.parametrize("kind", ["VirtualMachine", "VirtualMachineInstance"])
def test_vm_kinds_go_to_registered_hook(kind: str) -> None:
    found = errors(lambda: admit({"apiVersion": "kubevirt.io/v1", "kind": kind, "metadata": {"name": "vm"}}))
    assert_error(found, "kind", "admission hook, which is not loaded", "register_admitter")

    seen: list[tuple[dict[str, Any], dict[str, Any] | None]] = []

    def hook(obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        seen.append((obj, old))
        return {**obj, "admitted": True}

    register_admitter(kind, hook)
    obj = {"apiVersion": "kubevirt.io/v1", "kind": kind, "metadata": {"name": "vm"}}
    assert admit(obj)["admitted"] is True
    assert seen == [(obj, None)]
    assert validation.ADMITTERS[kind] is hook


def test_structural_and_semantic_errors() -> None:
    found = errors(lambda: admit(dv({"source": {"http": {"URL": "https://x/y"}}})))
    assert found == {"spec.source.http.URL": "unknown field; did you mean 'url'?"}
    found = errors(lambda: admit(dv({"source": {"http": {"url": "ftp://x/y"}}})))
    assert_error(found, "spec.source.http.url", "has scheme 'ftp'")


def test_error_message_has_path_and_fix() -> None:
    from cdi.common.errors import ValidationErrors

    with pytest.raises(ValidationErrors) as info:
        admit(dv({"storage": {"resources": {"requests": {"storage": "ten gigs"}}}}))
    assert str(info.value) == (
        "spec.storage.resources.requests.storage: 'ten gigs' is not a quantity; "
        "write a size such as 10Gi, 512Mi or 1073741824"
    )
    assert info.value.reason == "Invalid"
