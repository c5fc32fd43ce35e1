from __future__ import annotations

import copy

import pytest

from cdi.api.validation import admit
from cdi.common.errors import ValidationErrors
from tests.unit.vm_runtime.test_virtualmachine import VM

pytestmark = [pytest.mark.timeout(5), pytest.mark.usefixtures("vm_admitters")]


def test_vm_admitted_and_normalized() -> None:
    vm = copy.deepcopy(VM)
    del vm["metadata"]["namespace"]
    vm["status"] = {"printableStatus": "Running"}
    out = admit(vm)
    assert out["metadata"]["namespace"] == "default" and "status" not in out
    assert out["spec"] == VM["spec"]


def test_vm_errors_reported_with_paths() -> None:
    vm = copy.deepcopy(VM)
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] = "ide"
    with pytest.raises(ValidationErrors) as info:
        admit(vm)
    assert any(e.field == "spec.template.spec.domain.devices.disks[0].disk.bus" for e in info.value.errors)


def test_vmi_spec_is_immutable() -> None:
    vmi = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vmi1"},
        "spec": copy.deepcopy(VM["spec"]["template"]["spec"]),
    }
    old = admit(vmi)
    old["status"] = {"phase": "Running"}
    changed = copy.deepcopy(vmi)
    changed["spec"]["domain"]["memory"]["guest"] = "512Mi"
    with pytest.raises(ValidationErrors, match="spec cannot change"):
        admit(changed, old)
    assert admit(copy.deepcopy(vmi), old)["status"] == {"phase": "Running"}


def test_data_volume_templates_are_validated_as_data_volumes() -> None:
    vm = copy.deepcopy(VM)
    vm["spec"]["dataVolumeTemplates"][0]["spec"]["storage"] = {}
    with pytest.raises(ValidationErrors) as info:
        admit(vm)
    assert [e.field for e in info.value.errors] == [
        "spec.dataVolumeTemplates[0].spec.storage.resources.requests.storage"
    ]
