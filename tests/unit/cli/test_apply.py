from __future__ import annotations

import io
import json

from cdi.cli.main import main

from .conftest import dv_yaml
from .helpers import set_status


def test_apply_creates_then_unchanged_then_configured(cli, store, write, _no_controller):
    f = write("dv.yaml", dv_yaml())
    r = cli("apply", "-f", f)
    assert (r.rc, r.out, r.err) == (0, "datavolume.cdi.kubevirt.io/fedora created\n", "")
    dv = store.get("DataVolume", "default", "fedora")
    assert dv is not None and dv["spec"]["source"]["http"]["url"] == "http://127.0.0.1:8080/disk.qcow2"
    uid = dv["metadata"]["uid"]

    r = cli("apply", "-f", f)
    assert (r.rc, r.out) == (0, "datavolume.cdi.kubevirt.io/fedora unchanged\n")
    assert (
        store.get("DataVolume", "default", "fedora")["metadata"]["resourceVersion"]
        == dv["metadata"]["resourceVersion"]
    )

    # the controller writes status and a finalizer; a changed label is "configured" and keeps them
    o = store.get("DataVolume", "default", "fedora")
    o["metadata"]["finalizers"] = ["cdi.kubevirt.io/dataVolume"]
    store.update(o)
    set_status(store, "DataVolume", "fedora", {"phase": "ImportInProgress", "progress": "10.00%"})
    r = cli("apply", "-f", f)
    assert r.out == "datavolume.cdi.kubevirt.io/fedora unchanged\n"
    f2 = write("dv2.yaml", dv_yaml().replace("  name: fedora\n", "  name: fedora\n  labels: {team: a}\n"))
    r = cli("apply", "-f", f2)
    assert (r.rc, r.out) == (0, "datavolume.cdi.kubevirt.io/fedora configured\n")
    now = store.get("DataVolume", "default", "fedora")
    assert now["metadata"]["uid"] == uid
    assert now["metadata"]["labels"] == {"team": "a"}
    assert now["metadata"]["finalizers"] == ["cdi.kubevirt.io/dataVolume"]
    assert now["status"] == {"phase": "ImportInProgress", "progress": "10.00%"}
    # dropping the label from the manifest removes it again (three-way merge)
    r = cli("apply", "-f", f)
    assert r.out == "datavolume.cdi.kubevirt.io/fedora configured\n"
    assert "labels" not in store.get("DataVolume", "default", "fedora")["metadata"]
    assert _no_controller  # ensure_running was asked for after the successful applies


def test_apply_keeps_fields_others_set(cli, store, write):
    f = write(
        "pvc.yaml",
        """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: disk}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
""",
    )
    assert cli("apply", "-f", f).out == "persistentvolumeclaim/disk created\n"
    o = store.get("PersistentVolumeClaim", "default", "disk")
    o["spec"]["volumeName"] = "pvc-123"  # bound by the controller
    o["metadata"].setdefault("annotations", {})["embedded.cdi.kubevirt.io/disk-path"] = "/x/disk.img"
    store.update(o)
    assert cli("apply", "-f", f).out == "persistentvolumeclaim/disk unchanged\n"
    o = store.get("PersistentVolumeClaim", "default", "disk")
    assert o["spec"]["volumeName"] == "pvc-123"
    assert o["metadata"]["annotations"]["embedded.cdi.kubevirt.io/disk-path"] == "/x/disk.img"


def test_multi_doc_list_json_dir_and_errors(cli, store, write, tmp_path):
    bad = """
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: broken}
spec:
  source: {http: {url: "ftp://example.com/x"}}
  storage: {resources: {requests: {storage: 1Gi}}}
"""
    f = write(
        "all.yaml",
        dv_yaml("one")
        + "---\n"
        + bad
        + "---\n"
        + dv_yaml("two")
        + """---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: certs}
  data: {ca.pem: "-----BEGIN CERTIFICATE-----"}
""",
    )
    r = cli("apply", "-f", f)
    assert r.rc == 1
    assert r.out.splitlines() == [
        "datavolume.cdi.kubevirt.io/one created",
        "datavolume.cdi.kubevirt.io/two created",
        "configmap/certs created",
    ]
    lines = r.err.splitlines()
    assert lines and all(line.startswith('error: DataVolume "broken" is invalid: ') for line in lines)
    assert any("spec.source.http.url: " in line for line in lines)
    assert store.get("DataVolume", "default", "broken") is None

    d = tmp_path / "dir"
    d.mkdir()
    (d / "b.json").write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s"},
                "stringData": {"accessKeyId": "u", "secretKey": "p"},
            }
        )
    )
    (d / "a.yaml").write_text(dv_yaml("three"))
    (d / "notes.txt").write_text("ignored")
    r = cli("apply", "-f", str(d))
    assert (r.rc, r.out) == (0, "datavolume.cdi.kubevirt.io/three created\nsecret/s created\n")
    assert store.get("Secret", "default", "s")["data"] == {"accessKeyId": "dQ==", "secretKey": "cA=="}


def test_apply_stdin_and_namespace(data_dir, store, capsys):
    import sys

    old = sys.stdin
    sys.stdin = io.StringIO(dv_yaml("web"))
    try:
        rc = main(["--data-dir", data_dir, "-n", "prod", "apply", "-f", "-"])
    finally:
        sys.stdin = old
    assert rc == 0
    assert "datavolume.cdi.kubevirt.io/web created" in capsys.readouterr().out
    assert store.get("DataVolume", "prod", "web") is not None


def test_apply_namespace_mismatch_and_unknown_kind_and_parse_error(cli, write):
    f = write("x.yaml", dv_yaml().replace("  name: fedora\n", "  name: fedora\n  namespace: other\n"))
    r = cli("-n", "prod", "apply", "-f", f)
    assert r.rc == 1 and 'the namespace from the provided object "other" does not match' in r.err
    f = write("y.yaml", "apiVersion: v1\nkind: StorageClass\nmetadata: {name: fast}\n")
    r = cli("apply", "-f", f)
    assert r.rc == 1 and 'no matches for kind "StorageClass"' in r.err
    f = write("z.yaml", "kind: [unclosed\n")
    r = cli("apply", "-f", f)
    assert r.rc == 1 and r.err.startswith("error: error parsing")
    r = cli("apply", "-f", "/nonexistent/file.yaml")
    assert r.rc == 1 and 'the path "/nonexistent/file.yaml" does not exist' in r.err
    assert "Traceback" not in r.err


def test_apply_rejects_spec_change(cli, write):
    cli("apply", "-f", write("a.yaml", dv_yaml()))
    r = cli("apply", "-f", write("b.yaml", dv_yaml(url="http://127.0.0.1:8080/other.qcow2")))
    assert r.rc == 1
    assert r.err.startswith('error: DataVolume "fedora" is invalid: spec')
