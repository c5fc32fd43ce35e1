"""PersistentVolumeClaim, Secret and ConfigMap: parsing, round trips and their rules."""

from __future__ import annotations

import base64
from typing import Any

from cdi.api.objects import ConfigMap, Secret
from cdi.api.pvc import PersistentVolumeClaim
from cdi.api.validation import validate_configmap, validate_pvc, validate_secret
from cdi.common.units import GiB
from tests.unit.api.helpers import assert_error, errors


def pvc(**spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}
    s.update(spec)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "claim"}, "spec": s}


def test_pvc_round_trip() -> None:
    d = pvc(
        volumeMode="Block",
        storageClassName="local",
        selector={"matchLabels": {"a": "b"}},
        volumeName="pv-1",
        dataSource={"kind": "VolumeSnapshot", "name": "s", "apiGroup": "snapshot.storage.k8s.io"},
        dataSourceRef={"kind": "VolumeSnapshot", "name": "s", "apiGroup": "snapshot.storage.k8s.io"},
    )
    d["metadata"]["namespace"] = "default"
    d["status"] = {"phase": "Bound"}
    p = PersistentVolumeClaim.from_dict(d)
    assert p.spec.requests_storage == 10 * GiB and p.spec.volume_mode == "Block"
    assert p.to_dict() == d
    validate_pvc(p)


def test_pvc_structure_errors() -> None:
    d = pvc(storageclass="local")
    d["apiVersion"] = "core/v1"
    found = errors(lambda: PersistentVolumeClaim.from_dict(d))
    assert_error(found, "spec.storageclass", "did you mean 'storageClassName'?")
    assert_error(found, "apiVersion", "write apiVersion: v1")


def test_pvc_rules() -> None:
    p = PersistentVolumeClaim.from_dict(pvc(accessModes=[], resources={}, volumeMode="Raw"))
    found = errors(lambda: validate_pvc(p))
    assert_error(found, "spec.accessModes", "missing", "[ReadWriteOnce]")
    assert_error(found, "spec.resources.requests.storage", "missing", "storage: 10Gi")
    assert_error(found, "spec.volumeMode", "write Filesystem or Block")


def test_pvc_content_type_annotation() -> None:
    d = pvc()
    d["metadata"]["annotations"] = {"cdi.kubevirt.io/storage.contentType": "tarball"}
    found = errors(lambda: validate_pvc(PersistentVolumeClaim.from_dict(d)))
    assert_error(
        found, "metadata.annotations[cdi.kubevirt.io/storage.contentType]", "write kubevirt or archive"
    )


def test_pvc_update_grow_and_bind_allowed_shrink_and_class_not() -> None:
    old = PersistentVolumeClaim.from_dict(pvc())
    validate_pvc(PersistentVolumeClaim.from_dict(pvc(resources={"requests": {"storage": "20Gi"}})), old)
    validate_pvc(PersistentVolumeClaim.from_dict(pvc(volumeName="pv-9")), old)
    shrink = PersistentVolumeClaim.from_dict(pvc(resources={"requests": {"storage": "5Gi"}}))
    assert_error(
        errors(lambda: validate_pvc(shrink, old)), "spec.resources.requests.storage", "cannot shrink"
    )
    other = PersistentVolumeClaim.from_dict(pvc(storageClassName="fast"))
    assert_error(
        errors(lambda: validate_pvc(other, old)), "spec.storageClassName", "immutable", "delete and recreate"
    )


# --- Secret ---------------------------------------------------------------------------------


def secret(**kw: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, **kw}


def test_secret_decodes_and_merges_string_data() -> None:
    d = secret(
        type="Opaque",
        data={
            "accessKeyId": base64.b64encode(b"user").decode(),
            "secretKey": base64.b64encode(b"old").decode(),
        },
        stringData={"secretKey": "p@ss"},
    )
    s = Secret.from_dict(d)
    assert s.data == {"accessKeyId": b"user", "secretKey": b"p@ss"}
    out = s.to_dict()
    assert "stringData" not in out
    assert out["data"] == {"accessKeyId": "dXNlcg==", "secretKey": base64.b64encode(b"p@ss").decode()}
    assert Secret.from_dict(out) == s
    validate_secret(s)


def test_secret_bad_base64_names_key_not_value() -> None:
    found = errors(lambda: Secret.from_dict(secret(data={"secretKey": "hunter2!!"})))
    assert_error(found, "data.secretKey", "not valid base64", "stringData")
    assert "hunter2" not in str(found)


def test_secret_non_string_value_not_echoed() -> None:
    found = errors(lambda: Secret.from_dict(secret(stringData={"pin": 123456})))
    assert_error(found, "stringData.pin", "expected a string, got a number")
    assert "123456" not in str(found)


def test_secret_repr_hides_values() -> None:
    s = Secret.from_dict(secret(stringData={"secretKey": "topsecret"}))
    assert "topsecret" not in repr(s) and "secretKey" in repr(s)


def test_secret_rules() -> None:
    s = Secret.from_dict(secret(stringData={"bad key": "x"}))
    s.metadata.name = "Creds"
    found = errors(lambda: validate_secret(s))
    assert_error(found, "metadata.name", "not a valid name")
    assert_error(found, "data[bad key]", "not a valid key")


def test_secret_update_type_and_immutable() -> None:
    old = Secret.from_dict(secret(type="Opaque", immutable=True, stringData={"a": "1"}))
    new = Secret.from_dict(secret(type="kubernetes.io/basic-auth", immutable=True, stringData={"a": "2"}))
    found = errors(lambda: validate_secret(new, old))
    assert_error(found, "type", "cannot change from 'Opaque'")
    assert_error(found, "data", "immutable; delete and recreate")


# --- ConfigMap ------------------------------------------------------------------------------


def cm(**kw: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "certs", "namespace": "default"},
        **kw,
    }


def test_configmap_round_trip() -> None:
    d = cm(
        data={"ca.pem": "-----BEGIN CERTIFICATE-----\n"},
        binaryData={"blob": base64.b64encode(b"\0\1").decode()},
    )
    c = ConfigMap.from_dict(d)
    assert c.binary_data == {"blob": b"\0\1"}
    assert c.to_dict() == d
    validate_configmap(c)


def test_configmap_errors() -> None:
    found = errors(lambda: ConfigMap.from_dict(cm(data={"n": 5}, binarydata={})))
    assert_error(found, "data.n", "expected a string", 'n: "5"')
    assert_error(found, "binarydata", "did you mean 'binaryData'?")
    c = ConfigMap.from_dict(cm(data={"k": "v"}, binaryData={"k": ""}))
    assert_error(errors(lambda: validate_configmap(c)), "binaryData[k]", "keep it in only one")
