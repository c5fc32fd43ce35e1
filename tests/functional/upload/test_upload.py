"""Uploads end to end: cdi image-upload / curl -> upload proxy (TLS, 127.0.0.1) -> upload server ->
the shared data path -> the volume, checked by sha256; tokens; resume; proxy restart; too small."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from cdi.api import upload as api
from cdi.common.errors import ValidationErrors
from tests.functional.upload.conftest import Env, MiB, make_raw, sha256_file
from uploadproxy.tokens import KeyRing

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]


def _qemu_img(*args: str) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "gz", "xz"])
def test_cli_upload_formats(env: Env, tmp_path, fmt):
    raw = tmp_path / "disk.raw"
    want = make_raw(raw)
    image = raw
    if fmt == "qcow2":
        image = tmp_path / "disk.qcow2"
        _qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
    elif fmt in ("gz", "xz"):
        subprocess.run([{"gz": "gzip", "xz": "xz"}[fmt], "-k", str(raw)], check=True, timeout=60)
        image = tmp_path / f"disk.raw.{fmt}"
    code, out, err = env.cli("dv", f"dv-{fmt}", "--image-path", str(image), "--size", "64Mi")
    assert code == 0, out + err
    assert "Processing completed successfully" in out
    disk = env.disk_path(f"dv-{fmt}")
    assert disk in out  # says where the disk is
    assert sha256_file(disk, raw.stat().st_size) == want
    dv = env.dv(f"dv-{fmt}")
    assert dv["status"]["phase"] == "Succeeded" and dv["status"]["progress"] == "100.0%"
    reasons = [e["reason"] for e in env.store.events("DataVolume", "default", f"dv-{fmt}")]
    for r in ("UploadScheduled", "UploadReady", "UploadSucceeded"):
        assert r in reasons


def test_cli_archive_upload(env: Env, tmp_path):
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    tar = tmp_path / "tree.tar"
    with tarfile.open(tar, "w") as t:
        t.add(src / "a.txt", "a.txt")
        t.add(src / "sub", "sub")
    code, out, err = env.cli("dv", "arch", "--archive-path", str(tar), "--size", "64Mi")
    assert code == 0, out + err
    vol = env.volume_path("arch")
    last = out.strip().splitlines()[-1]
    assert last.endswith(f"the files are in {vol}") and "disk.img" not in out, out  # an archive has no disk.img
    assert Path(vol, "a.txt").read_bytes() == b"hello\n"
    assert sha256_file(os.path.join(vol, "sub", "b.bin")) == sha256_file(str(src / "sub" / "b.bin"))


def test_cli_pvc_upload_with_checksum(env: Env, tmp_path):
    raw = tmp_path / "d.raw"
    want = make_raw(raw, 4 * MiB)
    code, out, err = env.cli("pvc", "bare", "--image-path", str(raw), "--size", "32Mi", "--checksum", "sha256")
    assert code == 0, out + err
    pvc = env.pvc("bare")
    assert pvc["metadata"]["annotations"]["cdi.kubevirt.io/storage.pod.phase"] == "Succeeded"
    assert sha256_file(env.disk_path("bare"), raw.stat().st_size) == want


def test_checksum_mismatch_keeps_the_volume_ready_for_a_retry(env: Env, tmp_path):
    raw = tmp_path / "d.raw"
    want = make_raw(raw, 4 * MiB)
    env.create_dv("ck")
    env.wait_ready("ck")
    up = env.uploader("ck")
    with open(raw, "rb") as f:
        resp = up.send("/v1beta1/upload", f, 0, raw.stat().st_size, "sha256:" + "0" * 64, None)
    assert resp.status == 400 and resp.reason == "ChecksumError", resp
    assert "checksum mismatch" in resp.text
    assert not os.path.exists(env.disk_path("ck"))  # nothing half-written stays
    time.sleep(1.0)
    dv = env.dv("ck")
    assert dv["status"]["phase"] == "UploadReady"
    assert "ChecksumError" in json.dumps(dv["status"]["conditions"])
    with open(raw, "rb") as f:
        resp = up.send("/v1beta1/upload", f, 0, raw.stat().st_size, f"sha256:{want}", None)
    assert resp.status == 200, resp
    env.wait_phase("ck", ("Succeeded",))
    assert sha256_file(env.disk_path("ck"), raw.stat().st_size) == want


def test_datavolume_checksum_field_is_verified(env: Env, tmp_path):
    """spec.source.upload.checksum applies when the request names none; a request's value wins."""
    raw = tmp_path / "d.raw"
    want = make_raw(raw, 3 * MiB)
    env.create_dv("dvck", checksum="sha256:" + "1" * 64)
    env.wait_ready("dvck")
    up = env.uploader("dvck")
    with open(raw, "rb") as f:
        resp = up.send("/v1beta1/upload", f, 0, raw.stat().st_size, None, None)
    assert resp.status == 400 and resp.reason == "ChecksumError", resp
    assert "1" * 64 in resp.text
    with open(raw, "rb") as f:
        resp = up.send("/v1beta1/upload", f, 0, raw.stat().st_size, f"sha256:{want}", None)
    assert resp.status == 200, resp
    env.wait_phase("dvck", ("Succeeded",))
    assert sha256_file(env.disk_path("dvck"), raw.stat().st_size) == want


def test_datavolume_checksum_field_is_validated(env: Env):
    with pytest.raises(ValidationErrors, match=r"spec\.source\.upload\.checksum"):
        env.create_dv("badck", checksum="sha256:nothex")


@pytest.mark.parametrize("path", ["/v1beta1/upload", "/v1alpha1/upload", "/v1beta1/upload-async"])
def test_sync_and_async(env: Env, tmp_path, path):
    raw = tmp_path / "d.raw"
    want = make_raw(raw, 6 * MiB)
    qcow = tmp_path / "d.qcow2"
    _qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow))
    env.create_dv("sa")
    env.wait_ready("sa")
    with open(qcow, "rb") as f:
        resp = env.uploader("sa").send(path, f, 0, qcow.stat().st_size, None, None)
    assert resp.status == 200, resp
    if "async" not in path:
        # sync: the answer comes after conversion and sync: the disk is complete right now
        assert sha256_file(env.disk_path("sa"), raw.stat().st_size) == want
    env.wait_phase("sa", ("Succeeded",))
    assert sha256_file(env.disk_path("sa"), raw.stat().st_size) == want


def test_form_upload(env: Env, tmp_path):
    raw = tmp_path / "d.raw"
    want = make_raw(raw, 2 * MiB)
    env.create_dv("form")
    env.wait_ready("form")
    data = raw.read_bytes()
    body = (b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.raw\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--XX--\r\n")
    s = env.tls_socket()
    try:
        s.sendall((f"POST /v1beta1/upload-form HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {env.token('form')}\r\n"
                   f"Content-Type: multipart/form-data; boundary=XX\r\nContent-Length: {len(body)}\r\n\r\n").encode())
        s.sendall(body)
        from cdi.cli.image_upload import _read_response

        resp = _read_response(s, b"")
    finally:
        s.close()
    assert resp.status == 200, resp
    env.wait_phase("form", ("Succeeded",))
    assert sha256_file(env.disk_path("form"), len(data)) == want


def test_curl_is_a_client_too(env: Env, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    raw = tmp_path / "d.raw"
    want = make_raw(raw, 8 * MiB)
    env.create_dv("curl")
    env.wait_ready("curl")
    p = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--cacert", env.ca, "-H", f"Authorization: Bearer {env.token('curl')}",
         "-T", str(raw), f"{env.url}/v1beta1/upload"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout
    env.wait_phase("curl", ("Succeeded",))
    assert sha256_file(env.disk_path("curl"), raw.stat().st_size) == want
    # and the health endpoint
    p = subprocess.run(["curl", "-sS", "--cacert", env.ca, f"{env.url}/healthz"], capture_output=True, text=True,
                       timeout=30)
    assert p.stdout.strip() == "OK"


def _post_raw(env: Env, token: str, body: bytes = b"x" * 100) -> tuple[int, str, str]:
    from cdi.cli.image_upload import _read_response

    s = env.tls_socket()
    try:
        s.sendall((f"POST /v1beta1/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        r = _read_response(s, b"")
    finally:
        s.close()
    return r.status, r.reason, r.text


def test_bad_tokens_are_refused(env: Env, tmp_path):
    env.create_dv("vol-a")
    env.wait_ready("vol-a")
    # forged: signed by a key the proxy does not know
    forged = KeyRing(str(tmp_path / "evil")).issue("default", "vol-a")
    assert _post_raw(env, forged)[:2] == (401, "TokenUnknownKey")
    # expired
    ring = KeyRing.for_data_dir(env.data_dir)
    expired = ring.issue("default", "vol-a", ttl=5, now=time.time() - 3600)
    status, reason, text = _post_raw(env, expired)
    assert (status, reason) == (401, "TokenExpired") and "expired" in text
    # tampered: a token for vol-b edited to name vol-a
    h, c, s = env.token("vol-b").split(".")
    claims = json.loads(base64.urlsafe_b64decode(c + "=" * (-len(c) % 4)))
    claims["name"] = "vol-a"
    c2 = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert _post_raw(env, f"{h}.{c2}.{s}")[:2] == (401, "TokenInvalidSignature")
    # unsigned
    h2 = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    assert _post_raw(env, f"{h2}.{c2}.")[:2] == (401, "TokenUnsigned")
    # no / malformed Authorization: 400 as CDI
    assert _post_raw(env, "")[0] == 400
    # a valid token for another volume never reaches vol-a (vol-b does not exist: 404 at once)
    status, reason, text = _post_raw(env, env.token("vol-b"))
    assert status == 404 and reason == "NotFound" and "vol-b" in text
    assert env.upload_state("vol-a")["attempts"] == 0  # vol-a's server never saw a byte
    assert env.dv("vol-a")["status"]["phase"] == "UploadReady"


def _send_half(env: Env, name: str, path: str, image: Path):
    """A fresh UploadReady DataVolume ``name``, and a TLS socket that sent half of ``image`` to ``path``."""
    env.create_dv(name)
    env.wait_ready(name)
    data = image.read_bytes()
    size = len(data)
    s = env.tls_socket()
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {env.token(name)}\r\n"
               f"Content-Length: {size}\r\n\r\n").encode())
    s.sendall(data[: size // 2])
    time.sleep(0.5)
    return s


def test_disconnect_at_half_then_resume(env: Env, tmp_path):
    raw = tmp_path / "d.raw"
    want = make_raw(raw, 16 * MiB)
    size = raw.stat().st_size
    s = _send_half(env, "resume", "/v1beta1/upload-async", raw)
    s.close()  # the client goes away at 50%
    deadline = time.monotonic() + 20
    while env.upload_state("resume")["state"] != api.ST_SUSPENDED and time.monotonic() < deadline:
        time.sleep(0.05)
    st = env.upload_state("resume")
    assert st["state"] == api.ST_SUSPENDED and 0 < st["received"] <= size // 2
    time.sleep(1.0)
    dv = env.dv("resume")
    assert dv["status"]["phase"] == "UploadReady"
    assert dv["status"]["progressDetail"]["bytesDone"] == st["received"]  # progress in bytes, not N/A
    assert "interrupted" in json.dumps(dv["status"]["conditions"])
    up = env.uploader("resume")
    probe = up.head("/v1beta1/upload-async")
    assert int(probe.headers["upload-offset"]) == st["received"]
    offset = up._resume_offset("/v1beta1/upload-async", size)
    assert offset == st["received"]
    with open(raw, "rb") as f:
        resp = up.send("/v1beta1/upload-async", f, offset, size, None, None)
    assert resp.status == 200, resp
    env.wait_phase("resume", ("Succeeded",))
    assert sha256_file(env.disk_path("resume"), size) == want
    assert env.upload_state("resume")["attempts"] == 1  # one data path run: continued, not restarted


def test_proxy_restart_mid_upload(env: Env, tmp_path):
    raw = tmp_path / "d.raw"
    want = make_raw(raw, 16 * MiB)
    size = raw.stat().st_size
    s = _send_half(env, "restart", "/v1beta1/upload", raw)
    env.stop_proxy()  # the proxy goes down mid-upload
    s.close()
    env.start_proxy()
    # the client library retries: HEAD for the offset, then the rest with Content-Range
    lines: list[str] = []
    with open(raw, "rb") as f:
        resp = env.uploader("restart").upload(f, size, None, 3, None, log=lines.append)
    assert resp.status == 200
    env.wait_phase("restart", ("Succeeded",))
    assert sha256_file(env.disk_path("restart"), size) == want
    assert env.upload_state("restart")["attempts"] == 1


def test_too_small_is_reported_before_data_is_written(env: Env, tmp_path):
    big = tmp_path / "big.qcow2"
    _qemu_img("create", "-f", "qcow2", str(big), "1G")
    code, _out, err = env.cli("dv", "small", "--image-path", str(big), "--size", "16Mi")
    assert code != 0
    assert "too small" in err.lower() and "DataVolumeTooSmall" in err, err
    assert not os.path.exists(env.disk_path("small"))
    time.sleep(1.0)
    dv = env.dv("small")
    assert dv["status"]["phase"] == "UploadReady"  # ready for a smaller image; never Succeeded
    # a raw image larger than the volume: the Content-Length says so before a byte is written
    raw = tmp_path / "big.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
    with open(raw, "rb") as f:
        resp = env.uploader("small").send("/v1beta1/upload", f, 0, 64 * MiB, None, None)
    assert resp.status == 400 and resp.reason == "DataVolumeTooSmall", resp
    st = env.upload_state("small")
    assert st["received"] < 64 * MiB or st["state"] == api.ST_READY
    assert not os.path.exists(env.disk_path("small"))


@pytest.mark.root
def test_block_volume_upload(env: Env, tmp_path):
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup for Block volumes")
    raw = tmp_path / "d.raw"
    want = make_raw(raw, 8 * MiB)
    qcow = tmp_path / "d.qcow2"
    _qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow))
    code, out, err = env.cli("dv", "blk", "--image-path", str(qcow), "--size", "32Mi", "--volume-mode", "block")
    assert code == 0, out + err
    dev = env.disk_path("blk")
    assert dev.startswith("/dev/")
    assert sha256_file(dev, raw.stat().st_size) == want
    env.store.delete("DataVolume", "default", "blk")  # releases the loop device
    deadline = time.monotonic() + 30
    while env.store.get("PersistentVolumeClaim", "default", "blk") and time.monotonic() < deadline:
        time.sleep(0.1)


def test_killed_upload_server_is_restarted(env: Env, tmp_path):
    import signal

    env.create_dv("kill")
    env.wait_ready("kill")
    pid = int(Path(env.data_dir, "workers", api.worker_name("default", "kill"), "pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        dv = env.dv("kill")
        if dv["status"].get("restartCount") == 1 and dv["status"]["phase"] == "UploadReady":
            break
        time.sleep(0.1)
    dv = env.dv("kill")
    assert dv["status"]["restartCount"] == 1 and dv["status"]["phase"] == "UploadReady", dv["status"]
    raw = tmp_path / "d.raw"
    want = make_raw(raw, 2 * MiB)
    code, out, err = env.cli("dv", "kill", "--no-create", "--image-path", str(raw))
    assert code == 0, out + err
    assert sha256_file(env.disk_path("kill"), raw.stat().st_size) == want


def test_key_rotation_without_downtime(env: Env, tmp_path):
    raw = tmp_path / "d.raw"
    want = make_raw(raw, 2 * MiB)
    env.create_dv("rot")
    env.wait_ready("rot")
    old = env.token("rot")
    subprocess.run([sys.executable, "-m", "uploadproxy.tokens", "rotate", "--data-dir", env.data_dir], check=True,
                   capture_output=True, timeout=30)
    new = env.token("rot")
    assert old.split(".")[0] != new.split(".")[0]  # another kid
    up = env.uploader("rot")
    up.token = old  # signed by the retired key, still within its lifetime: accepted by the running proxy
    assert up.head("/v1beta1/upload-async").status == 200
    up.token = new
    with open(raw, "rb") as f:
        assert up.send("/v1beta1/upload", f, 0, raw.stat().st_size, None, None).status == 200
    env.wait_phase("rot", ("Succeeded",))
    assert sha256_file(env.disk_path("rot"), raw.stat().st_size) == want


@pytest.mark.slow
def test_proxy_memory_stays_bounded(env: Env, tmp_path):
    """A fast client and a volume that writes slower: backpressure, not buffering, in the proxy."""
    import threading

    img = tmp_path / "big.raw"
    with open(img, "wb") as f:
        chunk = os.urandom(4 * MiB)
        for _ in range(96):  # 384 MiB of incompressible data
            f.write(chunk)
    env.create_dv("mem", size="512Mi")
    env.wait_ready("mem")
    pid = int(Path(env.data_dir, "upload", "proxy.pid").read_text())
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS"):
                    peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        with open(img, "rb") as f:
            resp = env.uploader("mem").send("/v1beta1/upload", f, 0, img.stat().st_size, None, None)
    finally:
        stop.set()
        t.join()
    assert resp.status == 200, resp
    assert peak[0] < 64 * MiB, f"proxy peak RSS {peak[0] / MiB:.1f} MiB"
