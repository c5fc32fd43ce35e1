"""Parsing and serializing DataVolumes (structure only; the webhook rules are in test_validation)."""

from __future__ import annotations

from typing import Any

import pytest

from cdi.api.datavolume import (
    API_VERSION,
    DataVolume,
    HTTPSource,
    RegistrySource,
    StorageSpec,
)
from cdi.common.units import GiB, MiB
from tests.unit.api.helpers import assert_error, dv, errors

FULL_SOURCES: dict[str, dict[str, Any]] = {
    "http": {
        "url": "https://example.com/disk.img",
        "secretRef": "creds",
        "certConfigMap": "certs",
        "extraHeaders": ["X-A: 1", "X-B: 2"],
        "secretExtraHeaders": ["hdrs"],
        "checksum": "sha256:" + "a" * 64,
        "insecureSkipVerify": True,
    },
    "s3": {"url": "https://s3.example.com/b/o", "secretRef": "s", "certConfigMap": "c"},
    "gcs": {"url": "gs://bucket/obj", "secretRef": "gcs-secret"},
    "registry": {
        "url": "docker://quay.io/containerdisks/fedora:latest",
        "pullMethod": "pod",
        "secretRef": "s",
        "certConfigMap": "c",
        "platform": {"architecture": "arm64"},
    },
    "imageio": {
        "url": "https://engine/ovirt-engine/api",
        "diskId": "d-1",
        "secretRef": "s",
        "certConfigMap": "c",
        "insecureSkipVerify": True,
    },
    "vddk": {
        "url": "https://vcenter",
        "uuid": "u",
        "backingFile": "[ds] vm/vm.vmdk",
        "thumbprint": "20:6C",
        "secretRef": "s",
        "certConfigMap": "c",
        "initImageURL": "registry:5000/vddk:latest",
        "extraArgs": "args",
    },
    "upload": {},
    "blank": {},
    "pvc": {"namespace": "ns", "name": "src"},
    "snapshot": {"namespace": "ns", "name": "snap"},
}


@pytest.mark.parametrize("kind", sorted(FULL_SOURCES))
def test_every_source_kind_round_trips(kind: str) -> None:
    d = dv({"source": {kind: FULL_SOURCES[kind]}})
    parsed = DataVolume.from_dict(d)
    assert parsed.spec.source is not None and parsed.spec.source.kind == kind
    out = parsed.to_dict()
    assert out["spec"]["source"] == {kind: FULL_SOURCES[kind]}
    assert DataVolume.from_dict(out) == parsed


def test_typed_attributes() -> None:
    d = dv({"source": {"http": FULL_SOURCES["http"]}})
    spec = DataVolume.from_dict(d).spec
    assert spec.source is not None
    assert spec.source.http == HTTPSource(
        url="https://example.com/disk.img",
        secret_ref="creds",
        cert_config_map="certs",
        extra_headers=["X-A: 1", "X-B: 2"],
        secret_extra_headers=["hdrs"],
        checksum="sha256:" + "a" * 64,
        insecure_skip_verify=True,
    )
    assert spec.storage is not None and spec.storage.requests_storage == GiB
    assert spec.target is spec.storage and spec.content_type == "kubevirt"


def test_full_spec_round_trip() -> None:
    spec = {
        "source": {"vddk": FULL_SOURCES["vddk"]},
        "pvc": {
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Block",
            "storageClassName": "local",
            "resources": {"requests": {"storage": "1.5Gi"}, "limits": {"storage": "2Gi"}},
            "selector": {"matchLabels": {"a": "b"}},
            "volumeName": "pv-1",
            "dataSource": {"kind": "PersistentVolumeClaim", "name": "x"},
            "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "x"},
        },
        "storage": None,
        "contentType": "kubevirt",
        "preallocation": True,
        "checkpoints": [{"previous": "", "current": "s1"}, {"previous": "s1", "current": "s2"}],
        "finalCheckpoint": True,
        "priorityClassName": "high",
        "serviceAccountName": "importer",
    }
    d = dv(spec, namespace="ns", labels={"a": "b"})
    parsed = DataVolume.from_dict(d)
    pvc = parsed.spec.pvc
    assert pvc is not None and pvc.requests_storage == 1536 * MiB and pvc.requests_storage_text == "1.5Gi"
    assert pvc.limits_storage == 2 * GiB
    assert [c.current for c in parsed.spec.checkpoints] == ["s1", "s2"]
    assert parsed.to_dict() == d


def test_v1alpha1_is_normalized_and_status_kept() -> None:
    d = dv()
    d["apiVersion"] = "cdi.kubevirt.io/v1alpha1"
    d["status"] = {"phase": "Succeeded", "progress": "100.0%"}
    parsed = DataVolume.from_dict(d)
    out = parsed.to_dict()
    assert out["apiVersion"] == API_VERSION == "cdi.kubevirt.io/v1beta1"
    assert out["status"] == {"phase": "Succeeded", "progress": "100.0%"}
    assert out["metadata"]["namespace"] == "default"


def test_empty_optional_strings_are_unset() -> None:
    """CDI's own docs write secretRef: "" for "no secret" (Go omitempty)."""
    parsed = DataVolume.from_dict(
        dv({"source": {"http": {"url": "http://x/y", "secretRef": "", "certConfigMap": ""}}})
    )
    assert parsed.spec.source is not None and parsed.spec.source.http is not None
    assert parsed.spec.source.http.secret_ref is None
    assert parsed.to_dict()["spec"]["source"] == {"http": {"url": "http://x/y"}}


def test_null_blank_and_null_storage_mean_empty_objects() -> None:
    parsed = DataVolume.from_dict(dv({"source": {"blank": None}, "storage": None, "pvc": None}))
    assert parsed.spec.source is not None and parsed.spec.source.kind == "blank"
    d = dv({"source": {"pvc": {"name": "src"}}})
    d["spec"]["storage"] = None  # `storage:` with nothing after it
    parsed = DataVolume.from_dict(d)
    assert parsed.spec.storage == StorageSpec()
    # clone source namespace defaults to the DataVolume's
    assert parsed.spec.source is not None and parsed.spec.source.pvc is not None
    assert parsed.spec.source.pvc.namespace == "default"


def test_integer_quantity() -> None:
    parsed = DataVolume.from_dict(dv({"storage": {"resources": {"requests": {"storage": 1073741824}}}}))
    assert parsed.spec.storage is not None and parsed.spec.storage.requests_storage == GiB
    assert parsed.to_dict()["spec"]["storage"]["resources"]["requests"]["storage"] == "1073741824"


def test_kind_is_none_without_source() -> None:
    parsed = DataVolume.from_dict(dv({"source": {}}))
    assert parsed.spec.source is not None and parsed.spec.source.kind is None


def test_registry_image_stream() -> None:
    src = {"imageStream": "fedora", "pullMethod": "node"}
    parsed = DataVolume.from_dict(dv({"source": {"registry": src}}))
    assert parsed.spec.source is not None
    assert parsed.spec.source.registry == RegistrySource(image_stream="fedora", pull_method="node")


# --- structural errors ----------------------------------------------------------------------


def test_bad_quantity_message() -> None:
    found = errors(
        lambda: DataVolume.from_dict(dv({"storage": {"resources": {"requests": {"storage": "ten gigs"}}}}))
    )
    assert_error(
        found,
        "spec.storage.resources.requests.storage",
        "'ten gigs' is not a quantity",
        "write a size such as 10Gi",
    )


def test_unknown_field_did_you_mean() -> None:
    found = errors(lambda: DataVolume.from_dict(dv({"source": {"http": {"URL": "https://x/y"}}})))
    assert found["spec.source.http.URL"] == "unknown field; did you mean 'url'?"


def test_unknown_field_without_suggestion_lists_fields() -> None:
    found = errors(lambda: DataVolume.from_dict(dv({"source": {"http": {"url": "https://x/y", "zzz": 1}}})))
    assert_error(found, "spec.source.http.zzz", "unknown field; remove it", "url, secretRef")


def test_typos_at_every_level() -> None:
    d = dv({"storag": {"resources": {"requests": {"storage": "1Gi"}}}, "contentype": "kubevirt"})
    d["metdata"] = d.pop("metadata")
    d["spec"]["source"]["htp"] = {"url": "https://x/y"}
    found = errors(lambda: DataVolume.from_dict(d))
    assert found["metdata"] == "unknown field; did you mean 'metadata'?"
    assert found["spec.storag"] == "unknown field; did you mean 'storage'?"
    assert found["spec.contentype"] == "unknown field; did you mean 'contentType'?"
    assert found["spec.source.htp"] == "unknown field; did you mean 'http'?"


def test_wrong_types_with_paths() -> None:
    d = dv(
        {
            "source": {
                "http": {"url": "https://x/y", "extraHeaders": ["A: b", 7], "insecureSkipVerify": "yes"}
            },
            "preallocation": "true",
            "storage": {"accessModes": "ReadWriteOnce", "resources": {"requests": {"storage": "1Gi"}}},
        }
    )
    found = errors(lambda: DataVolume.from_dict(d))
    assert_error(found, "spec.source.http.extraHeaders[1]", "expected a string, got the number 7")
    assert_error(
        found, "spec.source.http.insecureSkipVerify", "expected a boolean", "insecureSkipVerify: true"
    )
    assert_error(found, "spec.preallocation", "expected a boolean", "without quotes")
    assert_error(found, "spec.storage.accessModes", "expected a list of strings", '["ReadWriteOnce"]')


def test_v1alpha1_registry_string_is_explained() -> None:
    d = dv({"source": {"registry": "docker://kubevirt/fedora"}})
    found = errors(lambda: DataVolume.from_dict(d))
    assert_error(
        found, "spec.source.registry", "expected an object, got the string", "registry: {url: docker://"
    )


def test_number_for_string_says_quote_it() -> None:
    found = errors(
        lambda: DataVolume.from_dict(dv({"source": {"imageio": {"url": "https://e/api", "diskId": 1}}}))
    )
    assert_error(found, "spec.source.imageio.diskId", "expected a string, got the number 1", 'diskId: "1"')


@pytest.mark.parametrize(
    ("api_version", "kind", "path", "fragment"),
    [
        ("cdi.kubevirt.io/v1", "DataVolume", "apiVersion", "write apiVersion: cdi.kubevirt.io/v1beta1"),
        (None, "DataVolume", "apiVersion", "missing; write apiVersion: cdi.kubevirt.io/v1beta1"),
        ("cdi.kubevirt.io/v1beta1", "DataVolumes", "kind", "write kind: DataVolume"),
    ],
)
def test_wrong_api_version_or_kind(api_version: str | None, kind: str, path: str, fragment: str) -> None:
    d = dv()
    d["apiVersion"] = api_version
    d["kind"] = kind
    found = errors(lambda: DataVolume.from_dict(d))
    assert_error(found, path, fragment)


def test_missing_spec() -> None:
    d = dv()
    del d["spec"]
    assert_error(errors(lambda: DataVolume.from_dict(d)), "spec", "missing", "storage: 1Gi")


def test_source_pvc_that_is_really_a_target() -> None:
    """CDI's own VDDK doc example indents pvc under source."""
    d = dv({"source": {"pvc": {"accessModes": ["ReadWriteOnce"], "resources": {}}}})
    assert_error(errors(lambda: DataVolume.from_dict(d)), "spec.source.pvc", "move it out to spec.pvc")


def test_all_structural_errors_are_collected() -> None:
    d = dv({"source": {"http": {"URL": "x"}}, "storage": {"resources": {"requests": {"storage": "lots"}}}})
    d["metadata"]["lables"] = {}
    assert len(errors(lambda: DataVolume.from_dict(d))) == 3
