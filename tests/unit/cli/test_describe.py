from __future__ import annotations

from .conftest import dv_yaml
from .helpers import cond, pvc, set_status


def test_describe_dv(cli, store, write):
    cli(
        "apply",
        "-f",
        write("dv.yaml", dv_yaml().replace("  name: fedora\n", "  name: fedora\n  labels: {os: fedora}\n")),
    )
    set_status(
        store,
        "DataVolume",
        "fedora",
        {
            "phase": "ImportInProgress",
            "progress": "30.00%",
            "restartCount": 1,
            "claimName": "fedora",
            "progressDetail": {"bytesDone": 1 << 30, "bytesTotal": 4 << 30},
            "workerLog": "/data/workers/fedora/log",
            "conditions": [
                cond("Bound", "True", "Bound", "PVC fedora Bound"),
                cond("Running", "True", "Pod is running"),
                cond("Ready", "False", "TransferRunning"),
            ],
        },
    )
    dv = store.get("DataVolume", "default", "fedora")
    store.record_event(dv, "Normal", "ImportScheduled", "Import into fedora scheduled")
    store.record_event(dv, "Warning", "ImportRetry", "connection reset, retrying")
    store.record_event(dv, "Warning", "ImportRetry", "connection reset, retrying")
    r = cli("describe", "dv", "fedora")
    assert r.rc == 0, r.err
    out = r.out
    lines = out.splitlines()
    assert lines[0] == "Name:         fedora"
    assert "Namespace:    default" in lines
    assert "Labels:       os=fedora" in lines
    assert "API Version:  cdi.kubevirt.io/v1beta1" in lines
    assert "Kind:         DataVolume" in lines
    assert any(ln.startswith("  UID:") and dv["metadata"]["uid"] in ln for ln in lines)
    assert any(ln.startswith("  Creation Timestamp:") for ln in lines)
    assert "Spec:" in lines and "      url: http://127.0.0.1:8080/disk.qcow2" in lines
    assert "last-applied-configuration" not in out
    assert "  Phase:          ImportInProgress" in lines
    assert "  Progress:       30.00% (1.0 GiB/4.0 GiB)" in lines
    assert "  Restart Count:  1" in lines
    assert "  Claim Name:     fedora" in lines
    i = lines.index("  Conditions:")
    assert lines[i + 1].split() == ["Type", "Status", "Reason", "Message", "Last", "Transition", "Time"]
    assert lines[i + 2].strip().startswith("----")
    assert lines[i + 3].split()[:4] == ["Bound", "True", "Bound", "PVC"]
    assert lines[i + 4].split()[:5] == ["Running", "True", "Pod", "is", "running"]
    j = lines.index("Events:")
    assert lines[j + 1].split() == ["Type", "Reason", "Age", "From", "Message"]
    assert lines[j + 3].split()[:2] == ["Normal", "ImportScheduled"]
    assert "datavolume-controller" in lines[j + 3]
    assert "(x2 over" in lines[j + 4]


def test_describe_pvc_filesystem_and_block(cli, store):
    store.create(pvc("fs", disk="/data/pools/local/fs/default/u1/disk.img"))
    o = store.create(pvc("blk", mode="Block", disk="/dev/loop7"))
    store.record_event(o, "Normal", "ImportSucceeded", "Import Successful")
    r = cli("describe", "pvc", "fs")
    lines = r.out.splitlines()
    assert "Disk:          /data/pools/local/fs/default/u1/disk.img" in lines
    assert "Volume Path:   /data/pools/local/fs/default/u1" in lines
    assert "Capacity:      1Gi" in lines
    assert "Access Modes:  RWO,RWX" in lines
    assert "VolumeMode:    Filesystem" in lines
    assert "StorageClass:  local" in lines
    assert not any(ln.startswith("Backing File") for ln in lines)
    assert "Events:        <none>" in lines
    r = cli("describe", "pvc", "blk")
    assert "Backing File:  /pool/block/default/x.img" in r.out.splitlines()
    assert "VolumeMode:    Block" in r.out.splitlines()
    assert "import-controller" in r.out and "ImportSucceeded" in r.out


def test_describe_secret_shows_no_values(cli, store, write):
    cli(
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=accessKeyId=admin",
        "--from-literal=secretKey=sup3r-s3cret",
    )
    cli(
        "apply",
        "-f",
        write(
            "s.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: applied}\n"
            "stringData: {secretKey: hunter2-hunter2}\n",
        ),
    )
    for name in ("creds", "applied"):
        r = cli("describe", "secret", name)
        assert r.rc == 0
        for secret in ("admin", "sup3r-s3cret", "hunter2", "c3VwM3ItczNjcmV0", "YWRtaW4=", "aHVudGVy"):
            assert secret not in r.out
    r = cli("describe", "secret", "creds")
    assert "secretKey:    12 bytes" in r.out.splitlines()
    assert "accessKeyId:  5 bytes" in r.out.splitlines()
    assert "Type:  Opaque" in r.out.splitlines()


def test_describe_configmap_and_not_found(cli):
    cli("create", "configmap", "certs", "--from-literal=ca.pem=-----BEGIN CERTIFICATE-----")
    r = cli("describe", "cm", "certs")
    assert "ca.pem:" in r.out and "-----BEGIN CERTIFICATE-----" in r.out
    r = cli("describe", "dv", "ghost")
    assert (r.rc, r.err) == (
        1,
        'Error from server (NotFound): datavolumes.cdi.kubevirt.io "ghost" not found\n',
    )
