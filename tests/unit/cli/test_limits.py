"""The CLI's write paths refuse what Kubernetes refuses: alias bombs, oversized input and objects."""

from __future__ import annotations

import io
import os
import sys
import time

from cdi.api.limits import MAX_DATA_BYTES
from cdi.cli.main import main
from tests.peers.bombs import laughs_configmap

from .conftest import dv_yaml


def test_apply_refuses_a_billion_laughs_and_stores_nothing(cli, write, store):
    f = write("bomb.yaml", dv_yaml("first") + "---\n" + laughs_configmap())
    start = time.monotonic()
    r = cli("apply", "-f", f)
    assert time.monotonic() - start < 2.0
    assert r.rc == 1
    assert r.err.startswith(f'error: error parsing "{f}": document 2, line ')
    assert "excessive aliasing" in r.err and "write the repeated parts out" in r.err
    assert store.list("ConfigMap") == [] and store.list("DataVolume") == []  # nothing of the file applied


def test_apply_refuses_input_over_3_mib_from_a_file_and_from_stdin(cli, write, data_dir, capsys):
    f = write("big.yaml", dv_yaml() + "#" * (3 * 1024 * 1024))
    r = cli("apply", "-f", f)
    assert r.rc == 1 and f"error: {f} is larger than 3 MiB (3145728 bytes)" in r.err and "split it" in r.err
    old = sys.stdin
    sys.stdin = io.StringIO(dv_yaml() + "#" * (3 * 1024 * 1024))
    try:
        rc = main(["--data-dir", data_dir, "--no-controller", "apply", "-f", "-"])
    finally:
        sys.stdin = old
    assert rc == 1 and "error: STDIN is larger than 3 MiB" in capsys.readouterr().err


def test_apply_refuses_large_annotations_in_kubernetes_words(cli, write, store):
    big = dv_yaml("big").replace("metadata:\n", "metadata:\n  annotations:\n    note: " + "a" * 300_000 + "\n")
    r = cli("apply", "-f", write("a.yaml", big))
    assert r.rc == 1
    assert 'error: DataVolume "big" is invalid: metadata.annotations: Too long: must have at most 262144 bytes' in r.err
    # 200 KiB fits in 256 KiB, but not twice: apply keeps a copy in last-applied-configuration (as kubectl does)
    half = dv_yaml("half").replace("metadata:\n", "metadata:\n  annotations:\n    note: " + "a" * 200_000 + "\n")
    r = cli("apply", "-f", write("b.yaml", half))
    assert r.rc == 1 and "kubectl.kubernetes.io/last-applied-configuration" in r.err
    assert store.list("DataVolume") == []


def test_apply_refuses_bad_labels(cli, write):
    bad = dv_yaml("lab").replace("metadata:\n", "metadata:\n  labels:\n    bad key: v\n")
    r = cli("apply", "-f", write("l.yaml", bad))
    assert r.rc == 1
    assert 'error: DataVolume "lab" is invalid: metadata.labels: Invalid value: "bad key": name part' in r.err


def test_apply_accepts_a_253_character_datavolume_name(cli, write, store):
    name = "n" * 200 + "." + "m" * 52
    r = cli("apply", "-f", write("long.yaml", dv_yaml(name)))
    assert r.rc == 0, r.err
    assert store.must_get("DataVolume", "default", name)["metadata"]["name"] == name


def test_create_secret_from_an_endless_file_stops_at_1_mib(cli, store):
    start = time.monotonic()
    r = cli("create", "secret", "generic", "zero", "--from-file=blob=/dev/zero")
    assert time.monotonic() - start < 5.0
    assert r.rc == 1 and '--from-file "/dev/zero" takes the data past 1048576 bytes (1 MiB)' in r.err
    assert store.get("Secret", "default", "zero") is None


def test_create_configmap_accepts_exactly_1_mib_and_refuses_more(cli, tmp_path, store):
    exact = tmp_path / "exact"
    exact.write_bytes(b"x" * (MAX_DATA_BYTES - 3))
    r = cli("create", "configmap", "ok", f"--from-file=f={exact}", "--from-literal=k=abc")
    assert r.rc == 0, r.err
    assert len(store.must_get("ConfigMap", "default", "ok")["data"]["f"]) == MAX_DATA_BYTES - 3
    d = tmp_path / "dir"
    d.mkdir()
    for i in range(3):
        (d / f"part{i}").write_bytes(b"y" * (MAX_DATA_BYTES // 2))
    r = cli("create", "configmap", "toomuch", f"--from-file={d}")
    assert r.rc == 1 and f'--from-file "{os.path.join(d, "part2")}" takes the data past' in r.err
    r = cli("create", "secret", "generic", "lit", "--from-literal=k=" + "z" * (MAX_DATA_BYTES + 1))
    assert r.rc == 1 and '--from-literal "k" takes the data past' in r.err
    assert store.get("ConfigMap", "default", "toomuch") is None and store.get("Secret", "default", "lit") is None
