from __future__ import annotations

import json
import re
import threading
import time

import yaml

from cdi.cli.main import main

from .conftest import dv_yaml
from .helpers import cond, pvc, set_status


def header_pos(header_line: str, name: str) -> int:
    m = re.search(rf"(?:^|(?<=\s)){re.escape(name)}(?=\s|$)", header_line)
    assert m, (name, header_line)
    return m.start()


def _seed(cli, store, write):
    cli("apply", "-f", write("dvs.yaml", dv_yaml("fedora") + "---\n" + dv_yaml("alpine-long-name")))
    set_status(
        store,
        "DataVolume",
        "fedora",
        {
            "phase": "ImportInProgress",
            "progress": "45.00%",
            "restartCount": 2,
            "claimName": "fedora",
            "progressDetail": {"bytesDone": int(1.2 * (1 << 30)), "bytesTotal": 4 << 30},
            "conditions": [cond("Ready", "False", "TransferRunning")],
        },
    )


def test_get_dv_table_and_wide(cli, store, write):
    _seed(cli, store, write)
    r = cli("get", "dv")
    assert r.rc == 0
    lines = r.out.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"]
    # kubectl alignment: each column starts where its header starts, 3 spaces after the widest cell
    assert lines[0].startswith("NAME               PHASE")
    assert lines[1].split() == ["alpine-long-name", lines[1].split()[-1]]
    assert lines[2].split()[:4] == ["fedora", "ImportInProgress", "45.00%", "2"]
    col = lines[0].index("PHASE")
    assert lines[2][col:].startswith("ImportInProgress")
    assert lines[0].index("PROGRESS") == col + len("ImportInProgress") + 3

    r = cli("get", "datavolumes", "fedora", "-o", "wide")
    lines = r.out.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE", "CLAIM", "BYTES", "READY"]
    row = lines[1]
    assert "1.2 GiB/4.0 GiB" in row and row.endswith("False")
    assert row[lines[0].index("CLAIM") :].startswith("fedora")


def test_get_pvc_columns(cli, store):
    store.create(pvc("fedora", disk="/data/pools/local/fs/default/u1/disk.img"))
    store.create(pvc("pending", bound=False))
    r = cli("get", "pvc")
    lines = r.out.splitlines()
    assert lines[0].startswith("NAME")
    headers = ["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "VOLUMEMODE", "AGE"]
    pos = [header_pos(lines[0], h) for h in headers]
    assert pos == sorted(pos)
    row = lines[1]
    cells = {h: row[p:].split("   ")[0].strip() for h, p in zip(headers, pos, strict=True)}
    assert cells == {
        "NAME": "fedora",
        "STATUS": "Bound",
        "VOLUME": "pvc-fedora",
        "CAPACITY": "1Gi",
        "ACCESS MODES": "RWO,RWX",
        "STORAGECLASS": "local",
        "VOLUMEMODE": "Filesystem",
        "AGE": cells["AGE"],
    }
    assert cells["AGE"].endswith("s")
    r = cli("get", "persistentvolumeclaims", "-o", "wide")
    assert r.out.splitlines()[0].endswith("DISK")
    assert r.out.splitlines()[1].endswith("/data/pools/local/fs/default/u1/disk.img")


def test_get_output_formats(cli, store, write):
    _seed(cli, store, write)
    one = json.loads(cli("get", "dv", "fedora", "-o", "json").out)
    assert one["kind"] == "DataVolume" and one["metadata"]["name"] == "fedora"
    many = json.loads(cli("get", "dv", "-o", "json").out)
    assert many["kind"] == "List" and [i["metadata"]["name"] for i in many["items"]] == [
        "alpine-long-name",
        "fedora",
    ]
    y = yaml.safe_load(cli("get", "dv", "fedora", "-o", "yaml").out)
    assert y["status"]["phase"] == "ImportInProgress"
    assert cli("get", "dv", "-o", "name").out == (
        "datavolume.cdi.kubevirt.io/alpine-long-name\ndatavolume.cdi.kubevirt.io/fedora\n"
    )
    assert cli("get", "dv", "fedora", "-o", "jsonpath={.status.phase}").out == "ImportInProgress"
    r = cli("get", "dv", "--no-headers")
    assert not r.out.startswith("NAME") and len(r.out.splitlines()) == 2
    r = cli("get", "dv", "-o", "bogus")
    assert r.rc == 1 and "unable to match a printer" in r.err


def test_get_not_found_empty_and_unknown_kind(cli, store, write):
    r = cli("get", "dv")
    assert (r.rc, r.out, r.err) == (0, "", "No resources found in default namespace.\n")
    _seed(cli, store, write)
    r = cli("get", "dv", "fedora", "nope")
    assert r.rc == 1
    assert r.out.splitlines()[1].startswith("fedora")
    assert r.err == 'Error from server (NotFound): datavolumes.cdi.kubevirt.io "nope" not found\n'
    r = cli("get", "pvc", "nope")
    assert r.err == 'Error from server (NotFound): persistentvolumeclaims "nope" not found\n'
    r = cli("get", "widgets")
    assert r.rc == 1 and r.err == 'error: the server doesn\'t have a resource type "widgets"\n'


def test_get_all_namespaces_and_several_kinds(cli, store, write):
    _seed(cli, store, write)
    cli("-n", "prod", "apply", "-f", write("p.yaml", dv_yaml("web")))
    r = cli("get", "dv", "-A")
    lines = r.out.splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert [ln.split()[0] for ln in lines[1:]] == ["default", "default", "prod"]
    assert cli("get", "dv", "-n", "prod", "-o", "name").out == "datavolume.cdi.kubevirt.io/web\n"
    store.create(pvc("fedora"))
    r = cli("get", "dv,pvc")
    assert "datavolume.cdi.kubevirt.io/fedora" in r.out and "persistentvolumeclaim/fedora" in r.out
    r = cli("get", "dv/fedora", "pvc/fedora", "-o", "name")
    assert r.out == "datavolume.cdi.kubevirt.io/fedora\npersistentvolumeclaim/fedora\n"


def test_get_secrets_configmaps_events(cli, store, write):
    cli(
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=accessKeyId=user",
        "--from-literal=secretKey=pw",
    )
    cli("create", "configmap", "certs", "--from-literal=ca.pem=PEM")
    r = cli("get", "secrets")
    assert r.out.splitlines()[0].split() == ["NAME", "TYPE", "DATA", "AGE"]
    assert r.out.splitlines()[1].split()[:3] == ["creds", "Opaque", "2"]
    y = yaml.safe_load(cli("get", "secret", "creds", "-o", "yaml").out)
    assert y["data"] == {"accessKeyId": "dXNlcg==", "secretKey": "cHc="}  # base64, like kubectl
    r = cli("get", "cm")
    assert r.out.splitlines()[1].split()[:2] == ["certs", "1"]
    _seed(cli, store, write)
    dv = store.get("DataVolume", "default", "fedora")
    store.record_event(dv, "Normal", "ImportScheduled", "Import into fedora scheduled")
    store.record_event(dv, "Warning", "ImportFailed", "Unable to connect to http data source")
    r = cli("get", "events")
    lines = r.out.splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert "Normal    ImportScheduled   datavolume/fedora   Import into fedora scheduled" in lines[1]
    assert lines[2].split()[1:4] == ["Warning", "ImportFailed", "datavolume/fedora"]
    assert len(cli("get", "ev", "fedora").out.splitlines()) == 3
    assert cli("get", "ev", "other").out == ""


def test_watch_prints_new_rows(data_dir, store, write, capsys):
    main(["--data-dir", data_dir, "--no-controller", "apply", "-f", write("dv.yaml", dv_yaml("fedora"))])
    capsys.readouterr()
    stop = threading.Event()
    result: list[int] = []
    t = threading.Thread(
        target=lambda: result.append(main(["--data-dir", data_dir, "get", "dv", "fedora", "-w"], stop=stop))
    )
    t.start()
    time.sleep(0.4)
    set_status(store, "DataVolume", "fedora", {"phase": "ImportScheduled"})
    time.sleep(0.4)
    set_status(store, "DataVolume", "fedora", {"phase": "ImportInProgress", "progress": "12.00%"})
    time.sleep(0.4)
    # an object that is not watched does not print
    main(["--data-dir", data_dir, "--no-controller", "apply", "-f", write("o.yaml", dv_yaml("other"))])
    time.sleep(0.4)
    stop.set()
    t.join(5)
    assert result == [0]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.endswith("created")]
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"]
    assert len(lines) == 4
    assert lines[1].split()[0] == "fedora" and len(lines[1].split()) == 2  # no phase yet, AGE
    assert lines[2].split()[:2] == ["fedora", "ImportScheduled"]
    assert lines[3].split()[:3] == ["fedora", "ImportInProgress", "12.00%"]
    # rows keep the columns of the header
    assert lines[3].index("ImportInProgress") == lines[0].index("PHASE")


def test_watch_all_shows_new_and_deleted(data_dir, store, write, capsys):
    stop = threading.Event()
    t = threading.Thread(target=lambda: main(["--data-dir", data_dir, "get", "secrets", "-w"], stop=stop))
    t.start()
    time.sleep(0.4)
    main(["--data-dir", data_dir, "create", "secret", "generic", "s1", "--from-literal=a=b"])
    time.sleep(0.5)
    store.delete("Secret", "default", "s1")
    time.sleep(0.5)
    stop.set()
    t.join(5)
    cap = capsys.readouterr()
    rows = [ln for ln in cap.out.splitlines() if ln.startswith(("NAME", "s1 "))]
    assert rows[0].split() == ["NAME", "TYPE", "DATA", "AGE"]
    assert len(rows) == 3 and all(r.split()[:2] == ["s1", "Opaque"] for r in rows[1:])
