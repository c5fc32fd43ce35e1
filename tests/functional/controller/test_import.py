"""DataVolumes imported over HTTP(S) end to end: controller daemon + importer worker + nginx.

Every success asserts the bytes on the volume (sha256 of the source's raw content grown to the
volume's usable size); every failure the phase, reason and message a user sees.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path

import pytest

from cdi.api import annotations as ann
from cdi.controller import daemon
from tests.peers import images

from .conftest import MiB, http_dv

pytestmark = [pytest.mark.peers]


def usable(dv_obj, pvc_obj):
    """Bytes the disk holds: the file size (Filesystem) or the device size (Block)."""
    path = pvc_obj["metadata"]["annotations"][ann.DISK_PATH]
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


def assert_disk_holds(cluster, name, raw_path):
    pvc = cluster.pvc(name)
    disk = pvc["metadata"]["annotations"][ann.DISK_PATH]
    size = usable(cluster.dv(name), pvc)
    assert size >= os.path.getsize(raw_path)
    assert images.sha256_of(disk, size) == images.sha256_of(raw_path, size)
    return disk


def test_qcow2_over_https_reaches_succeeded_with_the_right_bytes(cluster, nginx, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    data = images.make_raw(raw, 8 * MiB, seed=3)
    images.convert(raw, str(tmp_images / "disk.qcow2"), "qcow2")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca"},
          "data": {"ca.pem": Path(nginx.ca_pem).read_text()}}
    cluster.apply(cm)
    cluster.apply(http_dv("qcow", f"{nginx.https_url}/{served_path(tmp_images / 'disk.qcow2')}",
                          http_extra={"certConfigMap": "ca"}))
    dv = cluster.wait_phase("qcow")
    st = dv["status"]
    assert st["phase"] == "Succeeded", st
    assert st["progress"] == "100.0%" and st["claimName"] == "qcow" and st["restartCount"] == 0
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Bound"]["status"] == "True"
    assert conds["Running"]["status"] == "False" and conds["Running"]["reason"] == "Completed"
    reasons = [r for _, r in cluster.events("qcow")]
    assert reasons[:1] == ["Pending"] and "ImportScheduled" in reasons and reasons[-1] == "ImportSucceeded"
    disk = assert_disk_holds(cluster, "qcow", raw)
    # 64Mi requested through spec.storage is the usable size; holes stay holes.
    assert os.path.getsize(disk) == 64 * MiB
    assert images.allocated_bytes(disk) <= data + 2 * MiB
    assert not os.path.exists(disk + ".part")


def test_gz_into_a_block_volume_on_a_loop_device(cluster, nginx, tmp_images, served_path):
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 6 * MiB, seed=4)
    images.compress(raw, str(tmp_images / "disk.raw.gz"), "gz")
    cluster.apply(http_dv("blk", f"{nginx.http_url}/{served_path(tmp_images / 'disk.raw.gz')}", "32Mi", mode="Block"))
    dv = cluster.wait_phase("blk")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    pvc = cluster.pvc("blk")
    dev = pvc["metadata"]["annotations"][ann.DISK_PATH]
    assert dev.startswith("/dev/loop") and pvc["metadata"]["annotations"][ann.BACKING_FILE]
    assert_disk_holds(cluster, "blk", raw)


def test_basic_auth_secret_never_leaks(cluster, nginx, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 2 * MiB, seed=5)
    secret_value = nginx.password
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                   "data": {"accessKeyId": base64.b64encode(nginx.user.encode()).decode(),
                            "secretKey": base64.b64encode(secret_value.encode()).decode()}})
    url = f"{nginx.auth_url}/{served_path(raw)}"
    cluster.apply(http_dv("auth", url, http_extra={"secretRef": "creds", "insecureSkipVerify": True,
                                                     "extraHeaders": ["X-Trace: 1"]}))
    assert cluster.wait_phase("auth")["status"]["phase"] == "Succeeded"
    assert_disk_holds(cluster, "auth", raw)
    # A wrong password ends at once in Failed, with an actionable message and no secret.
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad"},
                   "stringData": {"accessKeyId": nginx.user, "secretKey": "wrong-" + secret_value}})
    cluster.apply(http_dv("noauth", url, http_extra={"secretRef": "bad", "insecureSkipVerify": True}))
    st = cluster.wait_phase("noauth")["status"]
    assert st["phase"] == "Failed" and st["restartCount"] == 0
    running = {c["type"]: c for c in st["conditions"]}["Running"]
    assert running["reason"] == "Unauthorized" and "secretRef" in running["message"]
    everything = json.dumps([cluster.dv("auth"), cluster.dv("noauth"), cluster.pvc("auth"),
                             cluster.store.events()])
    for root, _, files in os.walk(cluster.data_dir):
        for f in files:
            if f in ("log", "controller.log", "termination-log", "progress.json"):
                everything += Path(root, f).read_text(errors="replace")
    assert secret_value not in everything


@pytest.mark.parametrize("case,reason,words", [
    ("404", "NotFound", "404"),
    ("html", "NotAnImage", "HTML"),
    ("checksum", "ChecksumError", "checksum"),
    ("small", "DataVolumeTooSmall", "request at least"),
])
def test_permanent_failures_end_in_failed_at_once(cluster, bad_http, nginx, tmp_images, served_path, case, reason, words):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 4 * MiB, seed=6)
    rel = served_path(raw)
    extra: dict = {}
    size = "64Mi"
    if case == "404":
        url = bad_http.url_for(f"404/{rel}")
    elif case == "html":
        url = bad_http.url_for(f"html/{rel}")
    elif case == "checksum":
        url, extra = f"{nginx.http_url}/{rel}", {"checksum": "sha256:" + "0" * 64}
    else:
        images.convert(raw, str(tmp_images / "big.qcow2"), "qcow2")
        os.system(f"qemu-img resize -q {tmp_images / 'big.qcow2'} 100M")
        url, size = f"{nginx.http_url}/{served_path(tmp_images / 'big.qcow2')}", "50Mi"
    cluster.apply(http_dv("bad", url, size, http_extra=extra))
    st = cluster.wait_phase("bad")["status"]
    assert st["phase"] == "Failed" and st["restartCount"] == 0, st
    running = {c["type"]: c for c in st["conditions"]}["Running"]
    assert running["reason"] == reason and words in running["message"], running
    assert ("Warning", "ImportFailed") in cluster.events("bad")
    disk = cluster.pvc("bad")["metadata"]["annotations"][ann.DISK_PATH]
    assert not os.path.exists(disk), "a failed import must not leave a disk that looks complete"
    if case == "small":
        assert "DataVolume too small: image virtual size 100.0 MiB" in running["message"]
        assert "request at least 100Mi in spec.storage.resources.requests.storage" in running["message"]


def test_transient_errors_are_retried_and_counted(cluster, bad_http, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 2 * MiB, seed=7)
    cluster.apply(http_dv("flaky", bad_http.url_for(f"flaky500/2/{served_path(raw)}")))
    st = cluster.wait_phase("flaky")["status"]
    assert st["phase"] == "Succeeded", st
    assert st["restartCount"] >= 1
    assert ("Warning", "ImportRetry") in cluster.events("flaky")
    assert_disk_holds(cluster, "flaky", raw)


def test_retry_limit_from_the_annotation(cluster, bad_http, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 1 * MiB, seed=8)
    cluster.apply(http_dv("down", bad_http.url_for(f"status/503/{served_path(raw)}"),
                          annotations={ann.RETRY_LIMIT: "1"}))
    st = cluster.wait_phase("down", timeout=60)["status"]
    assert st["phase"] == "Failed"
    running = {c["type"]: c for c in st["conditions"]}["Running"]
    assert running["reason"] == "RetryLimitExceeded" and "503" in running["message"]
    assert st["restartCount"] == 2


def test_sigkill_of_the_worker_mid_import_still_ends_with_the_right_bytes(cluster, bad_http, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 4 * MiB, seed=9)  # trickled at ~800 KB/s: about 5 s
    cluster.apply(http_dv("kill", bad_http.url_for(f"trickle/{served_path(raw)}")))
    cluster.wait_phase("kill", ("ImportInProgress",), timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done = ((cluster.dv("kill").get("status") or {}).get("progressDetail") or {}).get("bytesDone", 0)
        if done > 512 * 1024:
            break
        time.sleep(0.05)
    pid = cluster.worker_pid("kill")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    st = cluster.wait_phase("kill", timeout=60)["status"]
    assert st["phase"] == "Succeeded", st
    assert st["restartCount"] >= 1
    assert_disk_holds(cluster, "kill", raw)


def test_controller_restart_mid_import(cluster, bad_http, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 4 * MiB, seed=10)
    cluster.apply(http_dv("restart", bad_http.url_for(f"trickle/{served_path(raw)}")))
    cluster.wait_phase("restart", ("ImportInProgress",), timeout=30)
    pid = cluster.worker_pid("restart")
    assert daemon.stop(cluster.data_dir)
    assert cluster.dv("restart")["status"]["phase"] == "ImportInProgress"
    os.kill(pid, 0)  # the worker keeps going without the controller
    time.sleep(1)
    daemon.ensure_running(cluster.data_dir)
    st = cluster.wait_phase("restart", timeout=60)["status"]
    assert st["phase"] == "Succeeded", st
    assert st["restartCount"] == 0  # the same worker finished: nothing was retried
    assert_disk_holds(cluster, "restart", raw)


def test_blank_and_not_supported_sources(cluster):
    cluster.apply({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "empty"},
                   "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "16Mi"}}}}})
    cluster.apply({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "s3"},
                   "spec": {"source": {"s3": {"url": "https://s3.example.com/b/disk.img"}},
                            "storage": {"resources": {"requests": {"storage": "16Mi"}}}}})
    assert cluster.wait_phase("empty")["status"]["phase"] == "Succeeded"
    disk = cluster.pvc("empty")["metadata"]["annotations"][ann.DISK_PATH]
    assert os.path.getsize(disk) == 16 * MiB and images.allocated_bytes(disk) == 0
    st = cluster.wait_phase("s3")["status"]
    running = {c["type"]: c for c in st["conditions"]}["Running"]
    assert st["phase"] == "Failed" and running["reason"] == "NotSupported" and "not supported yet" in running["message"]


def test_delete_removes_claim_and_volume(cluster, nginx, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 1 * MiB, seed=11)
    cluster.apply(http_dv("gone", f"{nginx.http_url}/{served_path(raw)}"))
    cluster.wait_phase("gone")
    vol = cluster.pvc("gone")["metadata"]["annotations"][ann.VOLUME_PATH]
    assert os.path.isdir(vol)
    cluster.delete_all()
    assert not os.path.exists(vol)
