"""Workers run with the least privilege their volume allows, keep no secret after they end, and
the controller copes with any valid name and with its own failures without flooding anyone.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cdi.api import annotations as ann
from cdi.common import confinement
from cdi.controller.datavolume import worker_name
from tests.peers import images

from .conftest import MiB, http_dv

pytestmark = [pytest.mark.peers, pytest.mark.root]


def _proc_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _wait_worker(cluster, name: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = cluster.worker_pid(name)
        if pid is not None:
            try:
                if _proc_status(pid)["Uid"].split()[0] != "0":
                    return pid
            except OSError:
                pass
        time.sleep(0.02)
    raise AssertionError(f"no confined worker for {name}")


def test_a_worker_runs_as_its_own_uid_with_no_capabilities_and_sees_only_its_volume(
        cluster, bad_http, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 3 * MiB, seed=31)  # trickled: about 4 s, time to look at the worker
    cluster.apply(http_dv("confined", bad_http.url_for(f"trickle/{served_path(raw)}")))
    pid = _wait_worker(cluster, "confined")
    st = _proc_status(pid)
    uid = int(st["Uid"].split()[0])
    assert uid >= 1_000_000, st["Uid"]
    assert set(st["Uid"].split()) == {str(uid)} and set(st["Gid"].split()) == {str(uid)}
    assert st["Groups"] == ""
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1"
    # its own mount namespace, where /tmp is a private tmpfs holding only what it was given
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    seen = subprocess.run(["nsenter", "-t", str(pid), "-m", "ls", "-a", "/tmp", "/tmp/cdi"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert set(seen) - {"/tmp:", "/tmp/cdi:", ".", ".."} == {"cdi", "run", "volume", "scratch"}, seen
    volume = cluster.pvc("confined")["metadata"]["annotations"][ann.VOLUME_PATH]
    assert os.stat(volume).st_uid == uid  # the volume is the worker's while it runs
    shm = subprocess.run(["nsenter", "-t", str(pid), "-m", "findmnt", "-n", "-o", "FSTYPE", "/dev/shm"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert shm[-1:] == ["tmpfs"]

    dv = cluster.wait_phase("confined", timeout=60)
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    disk = cluster.pvc("confined")["metadata"]["annotations"][ann.DISK_PATH]
    assert os.stat(disk).st_uid == 0 and os.stat(volume).st_uid == 0  # given back: it keeps nothing
    assert images.sha256_of(disk, os.path.getsize(raw)) == images.sha256_of(raw)
    # nothing of that uid is left running, and nothing was left to take back
    wdir = Path(cluster.data_dir, "workers", worker_name("default", "confined"))
    assert not (wdir / "grants.json").exists()
    left = [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(int(p)) == uid]
    assert left == []


def _uid_of(pid: int) -> int | None:
    try:
        return int(_proc_status(pid)["Uid"].split()[0])
    except (OSError, KeyError):
        return None


def test_a_confined_process_cannot_reach_the_host(tmp_path):
    """``confinement.enter`` as a worker calls it: host files, other volumes and the data dir are
    out of reach; the granted volume is writable."""
    data = tmp_path / "data"
    vol, other, run = data / "vol", data / "other", data / "run"
    for d in (vol, other, run):
        d.mkdir(parents=True)
    data.chmod(0o700)
    (other / "disk.img").write_bytes(b"another volume")
    (other / "disk.img").chmod(0o660)
    canary = tmp_path / "canary"
    canary.write_bytes(b"host secret")
    canary.chmod(0o600)
    uid = 1_500_999_001
    for d in (vol, run):
        os.chown(d, uid, uid)
    spec = confinement.Spec(uid, uid, (confinement.Grant("run", str(run)), confinement.Grant("volume", str(vol))))
    probe = textwrap.dedent(f"""
        import json, os, sys
        from cdi.common import confinement
        env = confinement.enter({{"CDI_WORKER_CONFINE": sys.argv[1], "DATA": "{vol}/disk.img",
                                 "SOCK": "unix:{run}/s"}})
        out = {{"env": env, "uid": os.getuid(), "caps": confinement.capabilities()}}
        for name, path in (("shadow", "/etc/shadow"), ("canary", "{canary}"), ("other", "{other}/disk.img"),
                           ("data", "{data}"), ("disk", "/dev/vda")):
            try:
                with open(path, "rb") as f:
                    out[name] = f.read(32).decode(errors="replace")
            except OSError as e:
                out[name] = "denied: " + type(e).__name__
        with open(env["DATA"], "wb") as f:
            f.write(b"written")
        out["tmp"] = sorted(os.listdir("/tmp"))
        print(json.dumps(out))
    """)
    p = subprocess.run([sys.executable, "-c", probe, spec.to_env()], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["uid"] == uid and not any(out["caps"].values())
    assert out["env"]["DATA"] == "/tmp/cdi/volume/disk.img" and out["env"]["SOCK"] == "unix:/tmp/cdi/run/s"
    for name in ("shadow", "canary", "other", "data", "disk"):
        assert out[name].startswith("denied"), (name, out[name])
    assert out["tmp"] == ["cdi"]
    assert (vol / "disk.img").read_bytes() == b"written"
    assert os.stat(vol / "disk.img").st_uid == uid


def test_secret_headers_are_gone_when_the_worker_ends(cluster, bad_http, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 1 * MiB, seed=32)
    value = "Bearer s3cr3t-t0ken-for-the-test"
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hdr"},
                   "data": {"auth": base64.b64encode(f"Authorization: {value}".encode()).decode()}})
    cluster.apply(http_dv("headers", bad_http.url_for(served_path(raw)), http_extra={"secretExtraHeaders": ["hdr"]}))
    dv = cluster.wait_phase("headers")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    assert any(r.headers.get("Authorization") == value for r in bad_http.requests)
    wdir = Path(cluster.data_dir, "workers", worker_name("default", "headers"))
    assert not (wdir / "run" / "secrets").exists()
    for path in Path(cluster.data_dir).rglob("*"):
        if path.is_file() and not path.name.startswith("state.db"):
            assert value.encode() not in path.read_bytes(), f"the secret header is still in {path}"


def test_a_253_character_name_imports(cluster, nginx, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 1 * MiB, seed=33)
    name = ("n" * 60 + ".") * 4 + "x" * 9
    assert len(name) == 253
    cluster.apply(http_dv(name, f"{nginx.http_url}/{served_path(raw)}"))
    dv = cluster.wait_phase(name)
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    wname = worker_name("default", name)
    assert len(wname) <= 80 and os.path.isdir(os.path.join(cluster.data_dir, "workers", wname))
    disk = cluster.pvc(name)["metadata"]["annotations"][ann.DISK_PATH]
    assert images.sha256_of(disk, os.path.getsize(raw)) == images.sha256_of(raw)


def test_names_with_dashes_in_two_namespaces_get_two_workers(cluster, nginx, tmp_images, served_path):
    """``a-b/c`` and ``a/b-c`` once shared the worker ``importer-a-b-c``."""
    sources = {}
    for ns, name, seed in (("a-b", "c", 34), ("a", "b-c", 35)):
        raw = str(tmp_images / f"{ns}.raw")
        images.make_raw(raw, 1 * MiB, seed=seed)
        dv = http_dv(name, f"{nginx.http_url}/{served_path(raw)}")
        dv["metadata"]["namespace"] = ns
        cluster.apply(dv)
        sources[(ns, name)] = raw
    for (ns, name), raw in sources.items():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            dv = cluster.store.must_get("DataVolume", ns, name)
            if (dv.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(0.05)
        assert dv["status"]["phase"] == "Succeeded", dv["status"]
        pvc = cluster.store.must_get("PersistentVolumeClaim", ns, name)
        disk = pvc["metadata"]["annotations"][ann.DISK_PATH]
        assert images.sha256_of(disk, os.path.getsize(raw)) == images.sha256_of(raw), (ns, name)
    assert worker_name("a-b", "c") != worker_name("a", "b-c")


def test_an_internal_error_is_shown_once_and_backed_off(tmp_path):
    """A storage pool the OS refuses (its path runs through a file): the DataVolume shows the
    error on its Bound condition, one Pending event, and the controller logs the traceback once
    and retries with backoff instead of five times a second."""
    from cdi.controller import daemon
    from tests.peers.cluster import Cluster

    data_dir = tmp_path / "cdi"
    data_dir.mkdir()
    (tmp_path / "afile").write_text("not a directory")
    (data_dir / "config.yaml").write_text(f"storageClasses:\n  local: {{path: {tmp_path}/afile/pool, default: true}}\n")
    cluster = Cluster(str(data_dir))
    try:
        cluster.apply(http_dv("broken", "http://127.0.0.1:9/disk.img"))
        deadline = time.monotonic() + 20
        bound: dict = {}
        while time.monotonic() < deadline:
            conds = {c["type"]: c for c in (cluster.dv("broken").get("status") or {}).get("conditions") or []}
            bound = conds.get("Bound") or {}
            if bound.get("reason") == "InternalError":
                break
            time.sleep(0.1)
        assert bound.get("reason") == "InternalError", cluster.dv("broken").get("status")
        assert "NotADirectoryError" in bound["message"] and "controller.log" in bound["message"]
        assert cluster.dv("broken")["status"]["phase"] == "Pending"
        time.sleep(4)
        log = (data_dir / "controller.log").read_text()
        assert log.count("Traceback") == 1, log[-3000:]
        assert log.count("reconcile failed") <= 4  # 1 s, 2 s, 4 s: at most a few in 4 s
        events = cluster.store.events("DataVolume", "default", "broken")
        pending = [e for e in events if e["reason"] == "Pending"]
        assert len(pending) == 1 and pending[0].get("count", 1) == 1, pending
    finally:
        daemon.stop(str(data_dir))
        cluster.store.close()


def test_a_presigned_url_keeps_its_signature_out_of_the_claim(cluster, nginx, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 1 * MiB, seed=36)
    url = (f"{nginx.http_url}/{served_path(raw)}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           "&X-Amz-Credential=AKIDEXAMPLE%2F20260101&X-Amz-Signature=deadbeefcafe0123456789")
    cluster.apply(http_dv("presigned", url))
    cluster.wait_phase("presigned")
    endpoint = cluster.pvc("presigned")["metadata"]["annotations"][ann.IMPORT_ENDPOINT]
    assert "deadbeefcafe" not in endpoint and "AKIDEXAMPLE" not in endpoint
    assert endpoint.startswith(f"{nginx.http_url}/{served_path(raw)}?")
    for e in cluster.store.events():
        assert "deadbeefcafe" not in e["message"]


def test_block_device_goes_back_to_its_owner(cluster, nginx, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 1 * MiB, seed=37)
    cluster.apply(http_dv("blockown", f"{nginx.http_url}/{served_path(raw)}", "16Mi", mode="Block"))
    dv = cluster.wait_phase("blockown")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    dev = cluster.pvc("blockown")["metadata"]["annotations"][ann.DISK_PATH]
    st = os.stat(dev)
    assert stat.S_ISBLK(st.st_mode) and (st.st_uid, st.st_gid) == (0, 0)
    assert stat.S_IMODE(st.st_mode) in (0o600, 0o660)  # as losetup made it
    assert images.sha256_of(dev, os.path.getsize(raw)) == images.sha256_of(raw)


def test_an_upload_with_a_253_character_name_runs_confined_and_leaves_no_secret(env, tmp_path):
    from cdi.api import upload as upload_api
    from tests.functional.upload.conftest import make_raw, sha256_file

    raw = tmp_path / "disk.raw"
    want = make_raw(raw, 2 * MiB)
    name = ("u" * 62 + ".") * 4 + "z" * 1
    assert len(name) == 253
    code, out, err = env.cli("dv", name, "--image-path", str(raw), "--size", "16Mi")
    assert code == 0, out + err
    assert sha256_file(env.disk_path(name), raw.stat().st_size) == want
    wdir = Path(env.data_dir, "workers", upload_api.worker_name("default", name))
    log = (wdir / "log").read_text()
    assert "listening on unix:/tmp/cdi/run/upload.sock" in log or "listening on 127.0.0.1:" in log, log[-2000:]
    assert os.stat(env.disk_path(name)).st_uid == 0  # written by the confined server, then given back
    assert "confined: uid 1" in log and "/tmp/cdi/volume" in log
    assert not (wdir / "run" / "secrets").exists()  # the proxy's shared secret went with the server


def test_isolation_can_be_turned_off_and_bad_settings_are_named(tmp_path, nginx, tmp_images, served_path):
    from cdi.backends.embedded.config import Config
    from cdi.common.errors import PermanentError
    from cdi.controller import daemon
    from tests.peers.cluster import make_cluster

    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 1 * MiB, seed=38)
    cluster = make_cluster(str(tmp_path / "cdi"))
    with open(os.path.join(cluster.data_dir, "config.yaml"), "a") as f:
        f.write("workerIsolation: false\nimageSandbox: false\n")
    try:
        cluster.apply(http_dv("open", f"{nginx.http_url}/{served_path(raw)}"))
        dv = cluster.wait_phase("open")
        assert dv["status"]["phase"] == "Succeeded", dv["status"]
        assert os.stat(cluster.pvc("open")["metadata"]["annotations"][ann.DISK_PATH]).st_uid == 0
        log = Path(cluster.data_dir, "controller.log").read_text()
        assert "workerIsolation is off" in log and "imageSandbox is off" in log
        vmdk = str(tmp_images / "disk.vmdk")
        images.convert(raw, vmdk, "vmdk")  # through qemu-img, unconfined now
        cluster.apply(http_dv("openvmdk", f"{nginx.http_url}/{served_path(vmdk)}"))
        dv = cluster.wait_phase("openvmdk")
        assert dv["status"]["phase"] == "Succeeded", dv["status"]
        wlog = Path(cluster.data_dir, "workers", worker_name("default", "openvmdk"), "log").read_text()
        assert "qemu-img and nbdkit run without bubblewrap" in wlog
        cluster.delete_all()
    finally:
        daemon.stop(cluster.data_dir)
        cluster.store.close()
    for bad, words in (("workerIsolation: maybe\n", "workerIsolation must be true or false"),
                       ("imageSandbox: 0\n", "imageSandbox must be true or false"),
                       ("workerUidBase: 1000\n", "workerUidBase/workerUidCount must name a range")):
        d = tmp_path / f"bad-{words.split()[0].replace('/', '-')}"
        d.mkdir(mode=0o700)
        (d / "config.yaml").write_text(bad)
        with pytest.raises(PermanentError, match=words):
            Config.load(str(d))
