from __future__ import annotations

import base64

import yaml


def test_create_secret_generic(cli, store, tmp_path):
    (tmp_path / "token").write_bytes(b"abc\n")
    r = cli(
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=accessKeyId=user",
        "--from-literal=secretKey=p=ss",
        f"--from-file=hdr={tmp_path / 'token'}",
    )
    assert (r.rc, r.out, r.err) == (0, "secret/creds created\n", "")
    s = store.get("Secret", "default", "creds")
    assert s["type"] == "Opaque"
    assert {k: base64.b64decode(v) for k, v in s["data"].items()} == {
        "accessKeyId": b"user",
        "secretKey": b"p=ss",
        "hdr": b"abc\n",
    }
    r = cli("create", "secret", "generic", "creds", "--from-literal=a=b")
    assert (r.rc, r.err) == (1, 'error: failed to create secret secrets "creds" already exists\n')


def test_create_configmap_from_file_and_dir(cli, store, tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    r = cli("-n", "prod", "create", "configmap", "certs", f"--from-file={tmp_path / 'ca.pem'}")
    assert (r.rc, r.out) == (0, "configmap/certs created\n")
    cm = store.get("ConfigMap", "prod", "certs")
    assert cm["data"]["ca.pem"].startswith("-----BEGIN CERTIFICATE-----")
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.pem").write_text("A")
    (d / "b.bin").write_bytes(b"\xff\xfe")
    r = cli("create", "cm", "many", f"--from-file={d}")
    assert r.rc == 0
    cm = store.get("ConfigMap", "default", "many")
    assert cm["data"] == {"a.pem": "A"}
    assert base64.b64decode(cm["binaryData"]["b.bin"]) == b"\xff\xfe"


def test_create_errors_and_dry_run(cli, store, tmp_path):
    r = cli("create", "secret", "generic", "x", "--from-literal=novalue")
    assert r.rc == 1 and "expected key=value" in r.err
    r = cli("create", "secret", "generic", "x", "--from-literal=a=1", "--from-literal=a=2")
    assert r.rc == 1 and 'cannot add key "a"' in r.err
    r = cli("create", "secret", "generic", "x", f"--from-file={tmp_path / 'missing'}")
    assert r.rc == 1 and "error reading" in r.err and "Traceback" not in r.err
    r = cli("create", "secret", "generic", "x", "--from-literal=a=1", "--dry-run=client", "-o", "yaml")
    assert r.rc == 0 and yaml.safe_load(r.out)["data"] == {"a": "MQ=="}
    assert store.get("Secret", "default", "x") is None
