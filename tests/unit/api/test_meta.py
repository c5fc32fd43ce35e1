from __future__ import annotations

from cdi.api.meta import ObjectMeta, suggest
from tests.unit.api.helpers import assert_error, errors


def test_round_trip_camel_case() -> None:
    d = {
        "name": "dv1",
        "namespace": "ns1",
        "uid": "u-1",
        "resourceVersion": "7",
        "generation": 2,
        "creationTimestamp": "2024-01-01T00:00:00Z",
        "deletionTimestamp": "2024-01-02T00:00:00Z",
        "labels": {"app": "x"},
        "annotations": {"a/b": "c"},
        "finalizers": ["cdi.kubevirt.io/dataVolume"],
        "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "1"}],
    }
    m = ObjectMeta.from_dict(d)
    assert m.resource_version == "7" and m.generation == 2 and m.owner_references[0]["kind"] == "Pod"
    assert m.to_dict() == d


def test_namespace_defaults_and_null_timestamp() -> None:
    m = ObjectMeta.from_dict({"name": "x", "creationTimestamp": None})
    assert m.namespace == "default"
    assert m.to_dict() == {"name": "x", "namespace": "default"}


def test_passthrough_fields_are_kept() -> None:
    d = {"name": "x", "namespace": "default", "managedFields": [{"manager": "kubectl"}]}
    assert ObjectMeta.from_dict(d).to_dict() == d


def test_type_errors_and_did_you_mean() -> None:
    found = errors(lambda: ObjectMeta.from_dict({"name": 5, "lables": {"a": "b"}, "annotations": {"x": 1}}))
    assert_error(found, "metadata.name", "expected a string", 'in quotes: name: "5"')
    assert_error(found, "metadata.lables", "unknown field; did you mean 'labels'?")
    assert_error(found, "metadata.annotations.x", "expected a string", "quotes")


def test_suggest() -> None:
    assert suggest("URL", ["url", "secretRef"]) == "url"
    assert suggest("secret_ref", ["url", "secretRef"]) == "secretRef"
    assert suggest("certConfigmap", ["url", "certConfigMap"]) == "certConfigMap"
    assert suggest("zzzz", ["url", "secretRef"]) is None
