"""CDI's DataVolume webhook rules: every rule, with its field path and its fix wording."""

from __future__ import annotations

from typing import Any

import pytest

from cdi.api.datavolume import DataVolume
from cdi.api.validation import validate_datavolume
from tests.unit.api.helpers import assert_error, dv, errors


def check(d: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, str]:
    new = DataVolume.from_dict(d)
    old_dv = DataVolume.from_dict(old) if old is not None else None
    return errors(lambda: validate_datavolume(new, old_dv))


def ok(d: dict[str, Any], old: dict[str, Any] | None = None) -> None:
    validate_datavolume(DataVolume.from_dict(d), DataVolume.from_dict(old) if old is not None else None)


def test_valid_default() -> None:
    ok(dv())


# --- source / sourceRef ---------------------------------------------------------------------


def test_no_source() -> None:
    found = check(dv({"source": None}))
    assert_error(found, "spec.source", "missing; set exactly one source", "sourceRef: {kind: DataSource")


def test_empty_source() -> None:
    assert_error(check(dv({"source": {}})), "spec.source", "no source kind is set", "exactly one of http, s3")


def test_two_source_kinds() -> None:
    found = check(dv({"source": {"http": {"url": "https://x/y"}, "blank": {}}}))
    assert_error(found, "spec.source", "2 source kinds are set (http, blank)", "keep exactly one")


def test_source_and_source_ref() -> None:
    found = check(dv({"sourceRef": {"kind": "DataSource", "name": "fedora"}}))
    assert_error(found, "spec.sourceRef", "either source or sourceRef, not both", "remove one")


def test_source_ref_ok_without_size() -> None:
    ok(dv({"source": None, "sourceRef": {"kind": "DataSource", "name": "fedora"}, "storage": {}}))


def test_source_ref_kind() -> None:
    found = check(dv({"source": None, "sourceRef": {"kind": "PersistentVolumeClaim", "name": "x"}}))
    assert_error(
        found, "spec.sourceRef.kind", "'PersistentVolumeClaim' is not supported", "write kind: DataSource"
    )
    found = check(dv({"source": None, "sourceRef": {"name": "x"}}))
    assert_error(found, "spec.sourceRef.kind", "missing; write kind: DataSource")
    found = check(dv({"source": None, "sourceRef": {"kind": "DataSource"}}))
    assert_error(found, "spec.sourceRef.name", "missing", "name of the DataSource")


def test_externally_populated_needs_no_source() -> None:
    ok(
        dv(
            {
                "source": None,
                "storage": {
                    "resources": {"requests": {"storage": "1Gi"}},
                    "dataSourceRef": {"apiGroup": "x.io", "kind": "Populator", "name": "p"},
                },
            }
        )
    )


# --- pvc / storage / size -------------------------------------------------------------------


def test_neither_pvc_nor_storage() -> None:
    assert_error(check(dv({"storage": None})), "spec.storage", "missing", "storage: {resources: {requests:")


def test_both_pvc_and_storage() -> None:
    pvc = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    assert_error(check(dv({"pvc": pvc})), "spec.pvc", "either pvc or storage, not both", "remove pvc")


def test_size_missing_for_import() -> None:
    found = check(dv({"storage": {"accessModes": ["ReadWriteOnce"]}}))
    assert_error(found, "spec.storage.resources.requests.storage", "missing", "storage: 10Gi")


@pytest.mark.parametrize("kind", ["pvc", "snapshot"])
def test_size_optional_for_clone_with_storage(kind: str) -> None:
    ok(dv({"source": {kind: {"namespace": "ns", "name": "src"}}, "storage": {}}))


def test_size_required_for_clone_with_pvc() -> None:
    found = check(
        dv({"source": {"pvc": {"name": "src"}}, "storage": None, "pvc": {"accessModes": ["ReadWriteOnce"]}})
    )
    assert_error(found, "spec.pvc.resources.requests.storage", "missing", "use spec.storage instead")


@pytest.mark.parametrize("size", ["512Ki", "0", "1M"])
def test_size_at_least_1mib(size: str) -> None:
    found = check(dv({"storage": {"resources": {"requests": {"storage": size}}}}))
    assert_error(
        found, "spec.storage.resources.requests.storage", f"'{size}' is smaller than the minimum of 1Mi"
    )
    assert "write at least 1Mi" in found["spec.storage.resources.requests.storage"]


def test_exactly_1mib_is_fine() -> None:
    ok(dv({"storage": {"resources": {"requests": {"storage": "1Mi"}}}}))


def test_pvc_needs_access_mode() -> None:
    found = check(dv({"storage": None, "pvc": {"resources": {"requests": {"storage": "1Gi"}}}}))
    assert_error(found, "spec.pvc.accessModes", "missing", "accessModes: [ReadWriteOnce]")


def test_access_modes() -> None:
    modes = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]
    ok(dv({"storage": {"accessModes": modes, "resources": {"requests": {"storage": "1Gi"}}}}))
    found = check(dv({"storage": {"accessModes": ["RWO", "ReadWriteOnce", "ReadWriteOnce"]}}))
    assert_error(
        found, "spec.storage.accessModes[0]", "'RWO' is not an access mode", "ReadWriteOnce, ReadOnlyMany"
    )
    assert_error(found, "spec.storage.accessModes[2]", "listed twice", "remove the duplicate")


def test_volume_mode() -> None:
    found = check(dv({"storage": {"volumeMode": "block", "resources": {"requests": {"storage": "1Gi"}}}}))
    assert_error(
        found, "spec.storage.volumeMode", "'block' is not a volume mode", "write Filesystem or Block"
    )


# --- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "url", "fragment"),
    [
        ("http", "ftp://host/disk.img", "has scheme 'ftp'; write a http:// or https:// URL"),
        ("http", "example.com/disk.img", "has no scheme"),
        ("http", "https:///disk.img", "has no host"),
        ("http", "https://host:99999/x", "is not a valid URL"),
        ("http", "https://host/a disk.img", "contains whitespace"),
        ("http", "", "missing; write the source URL"),
        ("s3", "s3://bucket/x", "write a http:// or https:// URL"),
        ("gcs", "ftp://bucket/x", "write a gs:// or http:// or https:// URL"),
        ("imageio", "http://<ovirt engine url>/ovirt-engine/api", "looks like a placeholder"),
        ("vddk", "vcenter.example.com", "has no scheme"),
    ],
)
def test_bad_urls(kind: str, url: str, fragment: str) -> None:
    extra: dict[str, dict[str, Any]] = {
        "imageio": {"diskId": "1", "secretRef": "s", "certConfigMap": "c"},
        "vddk": {"uuid": "u", "backingFile": "[ds] a.vmdk", "secretRef": "s"},
    }
    found = check(dv({"source": {kind: {"url": url, **extra.get(kind, {})}}}))
    assert_error(found, f"spec.source.{kind}.url", fragment)


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("http", "http://10.0.0.1:8080/a.img"),
        ("s3", "https://s3.us-east-1.amazonaws.com/b/o"),
        ("gcs", "gs://b/o"),
    ],
)
def test_good_urls(kind: str, url: str) -> None:
    ok(dv({"source": {kind: {"url": url}}}))


# --- registry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["docker://quay.io/containerdisks/fedora:41", "oci-archive:///images/disk.tar"]
)
def test_registry_good(url: str) -> None:
    ok(dv({"source": {"registry": {"url": url}}}))


@pytest.mark.parametrize("url", ["https://quay.io/fedora", "quay.io/fedora", "docker://"])
def test_registry_bad_scheme(url: str) -> None:
    found = check(dv({"source": {"registry": {"url": url}}}))
    assert_error(
        found, "spec.source.registry.url", "is not a registry image URL", "docker://<registry>/<image>:<tag>"
    )


def test_registry_url_or_image_stream() -> None:
    assert_error(check(dv({"source": {"registry": {}}})), "spec.source.registry.url", "missing", "docker://")
    found = check(
        dv({"source": {"registry": {"url": "docker://a/b", "imageStream": "s", "pullMethod": "node"}}})
    )
    assert_error(found, "spec.source.registry.imageStream", "either url or imageStream, not both")


def test_registry_image_stream_needs_node_pull() -> None:
    found = check(dv({"source": {"registry": {"imageStream": "fedora"}}}))
    assert_error(
        found, "spec.source.registry.imageStream", "only with pullMethod: node", "add pullMethod: node"
    )
    ok(dv({"source": {"registry": {"imageStream": "fedora", "pullMethod": "node"}}}))


def test_registry_pull_method() -> None:
    found = check(dv({"source": {"registry": {"url": "docker://a/b", "pullMethod": "kubelet"}}}))
    assert_error(
        found, "spec.source.registry.pullMethod", "'kubelet' is not a pull method", "write pod or node"
    )


# --- imageio / vddk -------------------------------------------------------------------------


def test_imageio_needs_cert_or_insecure() -> None:
    src = {"url": "https://engine/ovirt-engine/api", "diskId": "1", "secretRef": "s"}
    found = check(dv({"source": {"imageio": src}}))
    assert_error(found, "spec.source.imageio.certConfigMap", "missing", "or set insecureSkipVerify: true")
    ok(dv({"source": {"imageio": {**src, "insecureSkipVerify": True}}}))
    ok(dv({"source": {"imageio": {**src, "certConfigMap": "engine-ca"}}}))


def test_imageio_needs_disk_and_secret() -> None:
    found = check(dv({"source": {"imageio": {"url": "https://e/api", "certConfigMap": "c"}}}))
    assert_error(found, "spec.source.imageio.diskId", "missing")
    assert_error(found, "spec.source.imageio.secretRef", "missing", "accessKeyId")


def test_vddk_required_fields() -> None:
    found = check(dv({"source": {"vddk": {}}}))
    assert_error(found, "spec.source.vddk.url", "missing")
    assert_error(found, "spec.source.vddk.uuid", "missing", "UUID of the VM")
    assert_error(found, "spec.source.vddk.backingFile", "missing", "[datastore] vm/vm.vmdk")
    assert_error(found, "spec.source.vddk.secretRef", "missing", "user and password")


# --- checksum, headers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "checksum",
    ["md5:" + "0" * 32, "sha1:" + "a" * 40, "sha256:" + "F" * 64, "sha512:" + "9" * 128],
)
def test_checksum_good(checksum: str) -> None:
    ok(dv({"source": {"http": {"url": "https://x/y", "checksum": checksum}}}))


@pytest.mark.parametrize(
    ("checksum", "fragments"),
    [
        ("abc123", ("has no algorithm", "algo:hex", "sha256:<64 hex digits>")),
        ("crc32:abcd1234", ("algorithm 'crc32' is not supported", "md5:, sha1:, sha256:, sha512:")),
        ("sha256:" + "a" * 63, ("a sha256 digest has 64 hex digits, this one has 63", "sha256sum")),
        ("md5:" + "a" * 64, ("a md5 digest has 32 hex digits, this one has 64",)),
        ("sha1:" + "g" * 40, ("is not hexadecimal", "sha1:<40 hex digits>")),
        ("sha256:", ("is not hexadecimal",)),
    ],
)
def test_checksum_bad(checksum: str, fragments: tuple[str, ...]) -> None:
    found = check(dv({"source": {"http": {"url": "https://x/y", "checksum": checksum}}}))
    assert_error(found, "spec.source.http.checksum", *fragments)


def test_extra_headers() -> None:
    headers = ["X-Good: 1", "no colon here", "Bad Name: x", "X-Empty:", "X-Split: a\r\nX-Evil: b"]
    found = check(dv({"source": {"http": {"url": "https://x/y", "extraHeaders": headers}}}))
    assert "spec.source.http.extraHeaders[0]" not in found
    assert_error(found, "spec.source.http.extraHeaders[1]", "not a header line", "'Name: value'")
    assert_error(found, "spec.source.http.extraHeaders[2]", "not a header line")
    assert_error(found, "spec.source.http.extraHeaders[3]", "has no value", "'X-Empty: value'")
    assert_error(found, "spec.source.http.extraHeaders[4]", "line break")
    # header values can be tokens: never echoed
    assert not any("Evil" in m or "here" in m for m in found.values())


def test_reference_names() -> None:
    src = {"url": "https://x/y", "secretRef": "My_Secret", "secretExtraHeaders": ["ok", "NOT OK"]}
    found = check(dv({"source": {"http": src}}))
    assert_error(found, "spec.source.http.secretRef", "'My_Secret' is not a valid name", "existing Secret")
    assert_error(found, "spec.source.http.secretExtraHeaders[1]", "is not a valid name")


# --- contentType ----------------------------------------------------------------------------


def test_content_type_value() -> None:
    found = check(dv({"contentType": "iso"}))
    assert_error(found, "spec.contentType", "'iso' is not a content type", "write kubevirt", "or archive")


@pytest.mark.parametrize(
    ("kind", "src"),
    [
        ("registry", {"url": "docker://a/b"}),
        ("blank", {}),
        ("imageio", {"url": "https://e/api", "diskId": "1", "secretRef": "s", "certConfigMap": "c"}),
        ("vddk", {"url": "https://vc", "uuid": "u", "backingFile": "[d] a.vmdk", "secretRef": "s"}),
    ],
)
def test_archive_not_with(kind: str, src: dict[str, Any]) -> None:
    found = check(dv({"source": {kind: src}, "contentType": "archive"}))
    assert_error(
        found, "spec.contentType", f"archive is not supported with a {kind} source", "contentType: kubevirt"
    )


def test_archive_ok_for_http_and_upload() -> None:
    ok(dv({"contentType": "archive"}))
    ok(dv({"source": {"upload": {}}, "contentType": "archive"}))


def test_archive_not_on_block() -> None:
    found = check(
        dv(
            {
                "contentType": "archive",
                "storage": {"volumeMode": "Block", "resources": {"requests": {"storage": "1Gi"}}},
            }
        )
    )
    assert_error(
        found, "spec.contentType", "cannot be extracted into a Block volume", "volumeMode: Filesystem"
    )


# --- metadata -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("My_DV", "'My_DV' is not a valid name"),
        ("-dv", "is not a valid name"),
        ("a" * 254, "is 254 characters long; the limit is 253"),
        ("", "missing"),
    ],
)
def test_bad_names(name: str, fragment: str) -> None:
    found = check(dv(name=name))
    assert_error(found, "metadata.name", fragment)


def test_name_fix_suggests_a_valid_name() -> None:
    assert_error(check(dv(name="My_DV")), "metadata.name", "write e.g. 'my-dv'")


def test_dotted_253_char_name_is_fine() -> None:
    ok(dv(name="a." * 126 + "a"))


def test_bad_namespace() -> None:
    assert_error(check(dv(namespace="Team A")), "metadata.namespace", "is not a valid name")


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoints_only_for_multistage_sources() -> None:
    found = check(dv({"checkpoints": [{"previous": "", "current": "s1"}]}))
    assert_error(found, "spec.checkpoints", "only for vddk and imageio", "remove checkpoints")


def test_checkpoint_needs_current() -> None:
    src = {"url": "https://vc", "uuid": "u", "backingFile": "[d] a.vmdk", "secretRef": "s"}
    found = check(dv({"source": {"vddk": src}, "checkpoints": [{"previous": "", "current": ""}]}))
    assert_error(found, "spec.checkpoints[0].current", "missing")


# --- all at once ----------------------------------------------------------------------------


def test_all_errors_are_reported_together() -> None:
    d = dv(
        {
            "source": {"http": {"url": "ftp://x/y", "checksum": "sha256:abc"}},
            "storage": {"accessModes": ["RWX"], "resources": {"requests": {"storage": "1Ki"}}},
            "contentType": "zip",
        },
        name="Bad_Name",
    )
    found = check(d)
    assert set(found) >= {
        "metadata.name",
        "spec.source.http.url",
        "spec.source.http.checksum",
        "spec.storage.accessModes[0]",
        "spec.storage.resources.requests.storage",
        "spec.contentType",
    }


# --- update ---------------------------------------------------------------------------------

VDDK = {"url": "https://vc", "uuid": "u", "backingFile": "[d] a.vmdk", "secretRef": "s"}


def test_update_same_spec_is_fine() -> None:
    ok(dv(), old=dv())


def test_update_same_size_written_differently_is_fine() -> None:
    ok(dv({"storage": {"resources": {"requests": {"storage": "1024Mi"}}}}), old=dv())


def test_update_url_is_rejected_with_path() -> None:
    new = dv({"source": {"http": {"url": "https://example.com/other.qcow2"}}})
    found = check(new, old=dv())
    assert found == {
        "spec.source.http.url": "spec is immutable after creation except checkpoints/finalCheckpoint; "
        "delete and recreate the DataVolume to change spec.source.http.url"
    }


def test_update_size_and_source_kind_are_rejected() -> None:
    new = dv({"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "2Gi"}}}})
    found = check(new, old=dv())
    assert_error(found, "spec.source.http", "immutable", "to change spec.source.http")
    assert_error(found, "spec.source.blank", "immutable")
    assert_error(found, "spec.storage.resources.requests.storage", "immutable")


def test_update_checkpoints_and_final_checkpoint_allowed() -> None:
    old = dv({"source": {"vddk": VDDK}, "checkpoints": [{"previous": "", "current": "s1"}]})
    new = dv(
        {
            "source": {"vddk": VDDK},
            "checkpoints": [{"previous": "", "current": "s1"}, {"previous": "s1", "current": "s2"}],
            "finalCheckpoint": True,
        }
    )
    ok(new, old=old)


def test_update_cannot_rename() -> None:
    found = check(dv(name="other"), old=dv())
    assert_error(found, "metadata.name", "cannot change from 'my-dv' to 'other'")


def test_update_labels_and_annotations_allowed() -> None:
    ok(dv(labels={"a": "b"}, annotations={"x": "y"}), old=dv())
