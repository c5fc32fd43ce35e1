"""Kubernetes' limits applied by ``admit`` to every kind: labels, annotations, object size."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from cdi.api import limits, validation
from cdi.api.limits import MAX_ANNOTATIONS_BYTES, MAX_DATA_BYTES, MAX_OBJECT_BYTES, json_size
from cdi.api.validation import admit, register_admitter
from tests.unit.api.helpers import assert_error, dv, errors


def compact_size(obj: Any) -> int:
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))


# --- annotations ------------------------------------------------------------------------------


def test_annotations_of_exactly_256_kib_are_accepted_one_byte_more_is_refused():
    key = "example.com/note"
    exact = {key: "a" * (MAX_ANNOTATIONS_BYTES - len(key))}
    out = admit(dv(annotations=exact))
    assert out["metadata"]["annotations"] == exact
    over = {key: "a" * (MAX_ANNOTATIONS_BYTES - len(key) + 1)}
    found = errors(lambda: admit(dv(annotations=over)))
    assert_error(found, "metadata.annotations", "Too long: must have at most 262144 bytes", "262145 bytes",
                 "ConfigMap or Secret")
    assert "aaaa" not in found["metadata.annotations"]  # values are never echoed


def test_annotation_size_is_counted_in_utf8_bytes_over_all_keys():
    half = MAX_ANNOTATIONS_BYTES // 2
    ok = {"a": "é" * ((half - 1) // 2), "b": "x" * (half - 1)}
    assert sum(len(k) + len(v.encode()) for k, v in ok.items()) <= MAX_ANNOTATIONS_BYTES
    admit(dv(annotations=ok))
    over = {"a": "é" * (half // 2 + 1), "b": "x" * (half - 1)}
    assert_error(errors(lambda: admit(dv(annotations=over))), "metadata.annotations", "Too long")


def test_a_50_mb_annotation_is_refused_quickly_without_encoding_it():
    import time

    start = time.monotonic()
    found = errors(lambda: admit(dv(annotations={"x": "a" * 50_000_000})))
    assert time.monotonic() - start < 2.0
    assert_error(found, "", "Too long: a DataVolume as submitted must have at most 3145728 bytes",
                 "metadata.annotations")


def test_last_applied_share_is_named():
    big = {limits.LAST_APPLIED: "{" + "a" * MAX_ANNOTATIONS_BYTES + "}"}
    found = errors(lambda: admit(dv(annotations=big)))
    assert_error(found, "metadata.annotations", "kubectl.kubernetes.io/last-applied-configuration",
                 "cdi create")


@pytest.mark.parametrize("key", ["Example.COM/App", "app", "a.b_c-D", "kubevirt.io/x"])
def test_annotation_keys_are_checked_lowercased(key):
    admit(dv(annotations={key: "v"}))


@pytest.mark.parametrize("key", ["bad key", "a/b/c", "/x", "-x", "x" * 64])
def test_bad_annotation_keys_are_refused(key):
    found = errors(lambda: admit(dv(annotations={key: "v"})))
    assert_error(found, "metadata.annotations", "Invalid value:")


# --- labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [
        {"app": "web"},
        {"app.kubernetes.io/name": "Web_1.x-y"},
        {"example.com/" + "n" * 63: "v" * 63},
        {"p" * 253 + "/x": ""},
        {"A": "B"},
    ],
)
def test_valid_labels(labels):
    assert admit(dv(labels=labels))["metadata"]["labels"] == labels


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ({"x" * 64: "v"}, "name part must be no more than 63 characters"),
        ({"-app": "v"}, "name part must consist of alphanumeric characters"),
        ({"app-": "v"}, "name part must consist of alphanumeric characters"),
        ({"has space": "v"}, "name part must consist"),
        ({"a/b/c": "v"}, "a qualified name must consist"),
        ({"/app": "v"}, "prefix part must be non-empty"),
        ({"example.com/": "v"}, "name part must be non-empty"),
        ({"Example.com/app": "v"}, "prefix part a lowercase RFC 1123 subdomain"),
        ({"p" * 254 + "/x": "v"}, "prefix part must be no more than 253 characters"),
        ({"app": "v" * 64}, "must be no more than 63 characters"),
        ({"app": "two words"}, "a valid label must be an empty string or consist of alphanumeric"),
        ({"app": "-v"}, "a valid label must be"),
    ],
)
def test_invalid_labels_are_refused_in_kubernetes_words(labels, fragment):
    found = errors(lambda: admit(dv(labels=labels)))
    assert_error(found, "metadata.labels", "Invalid value: ", fragment)


def test_label_and_kind_errors_are_reported_together():
    d = dv(labels={"bad key": "v"})
    d["spec"]["source"]["http"]["url"] = "ftp://example.com/x"
    found = errors(lambda: admit(d))
    assert "metadata.labels" in found and "spec.source.http.url" in found


# --- object size ------------------------------------------------------------------------------


def _padded_dv(pad: int) -> dict[str, Any]:
    return dv({"source": {"http": {"url": "https://example.com/d.img", "extraHeaders": ["X-Pad: " + "a" * pad]}}})


def test_objects_of_exactly_1_5_mib_are_stored_one_byte_more_is_refused():
    pad = 1_000_000
    size = compact_size(admit(_padded_dv(pad)))
    pad += MAX_OBJECT_BYTES - size
    out = admit(_padded_dv(pad))
    assert compact_size(out) == MAX_OBJECT_BYTES == 1572864
    found = errors(lambda: admit(_padded_dv(pad + 1)))
    assert_error(found, "", "Too long: a stored DataVolume must have at most 1572864 bytes (1.5 MiB)",
                 "most of this one is spec")


def test_status_does_not_count_when_it_is_dropped_but_a_request_over_3_mib_is_refused():
    d = dv()
    d["status"] = {"note": "s" * (2 * 1024 * 1024)}
    assert "status" not in admit(d)
    d["status"] = {"note": "s" * (3 * 1024 * 1024)}
    assert_error(errors(lambda: admit(d)), "", "as submitted must have at most 3145728 bytes", "status")


@pytest.fixture
def widget_kind() -> Iterator[str]:
    register_admitter("Widget", lambda obj, old: dict(obj))
    try:
        yield "Widget"
    finally:
        validation.ADMITTERS.pop("Widget", None)


def test_every_kind_gets_the_limits(widget_kind):
    base = {"apiVersion": "example.com/v1", "kind": widget_kind, "metadata": {"name": "w"}}
    assert admit(base) == base
    found = errors(lambda: admit({**base, "metadata": {"name": "w", "labels": {"bad key": "v"}}}))
    assert_error(found, "metadata.labels", "Invalid value")
    found = errors(lambda: admit({**base, "spec": {"blob": "b" * MAX_OBJECT_BYTES}}))
    assert_error(found, "", "a stored Widget must have at most 1572864 bytes", "spec")


def test_json_size_is_the_compact_utf8_json_size():
    samples: list[Any] = [
        {"a": [1, 2.5, True, False, None, "x"], "é": "中文 \" \\ \n \x01 \ud800", "n": -12, "e": {}, "l": []},
        ["😀" * 10, {"k": {"k": {"k": "v"}}}],
        "plain",
        1e300,
    ]
    for s in samples:
        assert json_size(s, 10**9) == compact_size(s)
    assert json_size({"a": "x" * 10_000_000}, 100) > 100


# --- Secret / ConfigMap data --------------------------------------------------------------------


def _secret(n: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque",
            "data": {"blob": base64.b64encode(b"\0" * n).decode()}}


def test_secret_data_of_exactly_1_mib_is_accepted_one_byte_more_is_refused():
    out = admit(_secret(MAX_DATA_BYTES))
    assert len(base64.b64decode(out["data"]["blob"])) == MAX_DATA_BYTES
    found = errors(lambda: admit(_secret(MAX_DATA_BYTES + 1)))
    assert_error(found, "data", "Too long: must have at most 1048576 bytes", "split it into several Secrets")


def test_configmap_data_is_counted_in_utf8_bytes():
    def cm(text: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"t": text}}

    admit(cm("é" * (MAX_DATA_BYTES // 2)))
    assert_error(errors(lambda: admit(cm("é" * (MAX_DATA_BYTES // 2) + "x"))), "data",
                 "Too long: must have at most 1048576 bytes")


# --- names ------------------------------------------------------------------------------------


def test_a_253_character_datavolume_name_is_admitted_254_is_not():
    name = "d" * 120 + "." + "v" * 132
    assert len(name) == 253
    assert admit(dv(name=name))["metadata"]["name"] == name
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    assert admit(pvc)["metadata"]["name"] == name
    found = errors(lambda: admit(dv(name=name + "x")))
    assert_error(found, "metadata.name", "is 254 characters long; the limit is 253")
