"""The bounded YAML/JSON loader: bombs are refused fast, ordinary anchors still work."""

from __future__ import annotations

import io
import json
import time

import pytest

from cdi.api import limits
from cdi.common import documents
from cdi.common.documents import DocumentError, load_all
from tests.peers.bombs import laughs_configmap, laughs_flow


def refused(text: str) -> str:
    start = time.monotonic()
    with pytest.raises(DocumentError) as e:
        load_all(text)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
    return str(e.value)


def test_billion_laughs_is_refused_at_once_naming_the_aliases():
    text = laughs_configmap()
    assert len(text) < 700
    msg = refused(text)
    assert "excessive aliasing" in msg and "aliases add more than 65536 bytes" in msg
    assert "*a3" in msg and "document 1, line " in msg
    assert "write the repeated parts out" in msg


def test_billion_laughs_in_flow_style_is_refused_whether_or_not_it_looks_like_json():
    flow = laughs_flow()
    for text in (flow, "[" + flow + "]", "x: " + flow + "\n"):
        msg = refused(text)
        assert "excessive aliasing" in msg and "*a" in msg


def test_a_bomb_split_over_documents_shares_one_budget():
    # each document alone stays under the 64 KiB floor; together they pass it
    doc = "a: &a [" + ", ".join(["xxxxxxxxxxxxxxx"] * 64) + "]\nb: [" + ", ".join(["*a"] * 20) + "]\n"
    one = load_all(doc)
    assert len(one[0]["b"]) == 20
    msg = refused("---\n".join([doc] * 10))
    assert "excessive aliasing" in msg and "document " in msg


def test_merge_key_bomb_is_refused():
    lines = ["m0: &m0 {" + ", ".join(f"k{j}: v" for j in range(8)) + "}"]
    for i in range(1, 25):
        lines.append(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], x{i}: 1}}")
    msg = refused("\n".join(lines) + "\n")
    assert "excessive aliasing" in msg


@pytest.mark.parametrize(
    "text",
    [
        "[" * 200_000,
        "x: " + "[" * 200_000,
        "x: " + "{a: " * 5_000,
        "- " * 5_000 + "x\n",
        "".join("  " * i + f"k{i}:\n" for i in range(500)) + "  " * 500 + "v\n",
        json.dumps(json.loads("[" * 150 + "]" * 150)),
        '{"a": ' * 500 + "1" + "}" * 500,
    ],
    ids=["flow-json", "flow-yaml", "flow-maps", "block-seq", "block-maps", "json-150", "json-objects"],
)
def test_deep_nesting_is_refused(text):
    msg = refused(text)
    assert "nested more than 100 levels deep" in msg and "flatten the document" in msg


def test_legit_anchors_aliases_and_merge_keys_still_work():
    text = (
        "storage: &storage\n"
        "  resources: {requests: {storage: 1Gi}}\n"
        "  accessModes: [ReadWriteOnce]\n"
        "labels: &labels {app: web, tier: db}\n"
        "---\n"
        "kind: DataVolume\n"
        "metadata: {name: a}\n"
        "spec:\n"
        "  storage: &s {resources: {requests: {storage: 2Gi}}}\n"
        "  other: *s\n"
        "  merged: {<<: *s, volumeMode: Block}\n"
    )
    docs = load_all(text)
    assert docs[0]["storage"]["resources"]["requests"]["storage"] == "1Gi"
    spec = docs[1]["spec"]
    assert spec["other"] == spec["storage"] == {"resources": {"requests": {"storage": "2Gi"}}}
    assert spec["merged"] == {"resources": {"requests": {"storage": "2Gi"}}, "volumeMode": "Block"}


def test_an_alias_budget_of_ten_times_the_input_beyond_the_floor():
    # 100 KiB of text aliased 10 times adds ~1 MiB: allowed (10x); 12 times is not
    big = "a: &a [" + ", ".join(["y" * 99] * 1000) + "]\n"
    ok = big + "b: [" + ", ".join(["*a"] * 9) + "]\n"
    assert len(load_all(ok)[0]["b"]) == 9
    msg = refused(big + "b: [" + ", ".join(["*a"] * 12) + "]\n")
    assert "excessive aliasing" in msg


def test_recursive_and_undefined_aliases_are_refused():
    assert "is inside the node it names (&x)" in refused("a: &x [1, *x]\n")
    assert "is inside the node it names (&x)" in refused("a: &x {b: {c: *x}}\n")
    assert "names no anchor (&nope)" in refused("a: *nope\n")


def test_syntax_errors_and_huge_numbers_are_worded():
    assert "did not find expected" in refused("a: [1\n")
    assert "Expecting ',' delimiter" in refused('{"a": 1')  # neither JSON nor YAML: the JSON error
    assert "more than 4300 digits" in refused("a: " + "9" * 5000 + "\n")
    assert "more than 4300 digits" in refused("[" + "9" * 5000 + "]")


def test_json_and_yaml_flow_style_are_read():
    assert load_all('{"kind": "ConfigMap", "data": {"a": "b"}}') == [{"kind": "ConfigMap", "data": {"a": "b"}}]
    assert load_all("{kind: ConfigMap, data: {a: b}}") == [{"kind": "ConfigMap", "data": {"a": "b"}}]
    assert load_all("") == []


def test_input_is_read_up_to_3_mib():
    limit = documents.MAX_INPUT_BYTES
    assert limit == 3 * 1024 * 1024 == limits.MAX_REQUEST_BYTES
    exact = b"#" * limit
    assert documents.read_text(io.BytesIO(exact), "f") == exact.decode()

    class Endless(io.RawIOBase):
        asked = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b):  # type: ignore[no-untyped-def]
            self.asked += len(b)
            b[:] = b"a" * len(b)
            return len(b)

    endless = Endless()
    with pytest.raises(DocumentError) as e:
        documents.read_text(io.BufferedReader(endless), "STDIN")
    assert "STDIN is larger than 3 MiB (3145728 bytes)" in str(e.value) and "split it" in str(e.value)
    assert endless.asked < 2 * limit  # it stopped reading
    with pytest.raises(DocumentError, match="larger than 3 MiB"):
        documents.read_text(io.StringIO("é" * (limit // 2 + 1)), "STDIN")  # counted in UTF-8 bytes
    with pytest.raises(DocumentError, match="not UTF-8"):
        documents.read_text(io.BytesIO(b"a: \xff\n"), "f.yaml")


def test_load_one_refuses_several_documents():
    assert documents.load_one("a: 1\n") == {"a": 1}
    with pytest.raises(DocumentError, match="holds 2 documents"):
        documents.load_one("a: 1\n---\nb: 2\n")
