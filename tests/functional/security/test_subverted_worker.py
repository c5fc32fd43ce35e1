"""A worker taken over by what it parsed (an exploit in a decoder, say) must not get further:
what it leaves behind is given back or not believed, and nothing it owns fools the root side."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cdi.api.contract import Outcome, Reason, WorkerResult
from cdi.backends.base import VolumeInfo
from cdi.backends.embedded.workers import LocalWorkers
from cdi.common.confinement import Grant
from cdi.controller.datavolume import checked_result

pytestmark = [pytest.mark.root]

# A "worker" that confines itself like ours, then does what an exploit would, then claims success.
EVIL = textwrap.dedent("""
    import json, os, sys
    from cdi.common import confinement
    from cdi.api.contract import Outcome, WorkerResult
    env = confinement.enter(os.environ)
    vol = env["VOL"]
    os.symlink("/etc/shadow", os.path.join(vol, "disk.img"))
    os.mkdir(os.path.join(vol, "sub"))
    open(os.path.join(vol, "sub", "f"), "w").write("mine")
    for shared in ("/dev/shm", "/var/tmp"):
        try:
            open(os.path.join(shared, "cdi-test-escape-" + str(os.getpid())), "w").write("x")
        except OSError:
            pass
    secrets = os.path.join(env["CDI_TERMINATION_LOG"].rsplit("/", 1)[0], "secrets")
    os.makedirs(secrets, exist_ok=True)
    try:
        os.unlink(os.path.join(secrets, "proxy-auth"))
    except FileNotFoundError:
        pass
    os.symlink("/etc/shadow", os.path.join(secrets, "proxy-auth"))
    WorkerResult(Outcome.SUCCEEDED, "Completed", "done").write(env["CDI_TERMINATION_LOG"])
""")


def test_what_a_subverted_worker_leaves_is_given_back_and_not_believed(tmp_path: Path) -> None:
    script = tmp_path / "evil.py"
    script.write_text(EVIL)
    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    vol = root / "vol"
    vol.mkdir(mode=0o770)
    workers = LocalWorkers(str(root / "workers"), {"evil": [sys.executable, str(script)]}, isolate=True)
    held = workers.held_secret("evil-1", "proxy-auth")
    Path(held).write_text("the-proxy-secret")
    before = {d: set(os.listdir(d)) for d in ("/dev/shm", "/var/tmp")}
    workers.start("evil-1", "evil", {"VOL": str(vol), "PYTHONPATH": os.getcwd()}, (Grant("volume", str(vol)),))
    deadline = time.monotonic() + 60
    while (st := workers.status("evil-1")) is not None and st.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert st is not None and not st.running, Path(st.log_path).read_text() if st else ""
    assert st.result is not None and st.result.outcome == Outcome.SUCCEEDED, Path(st.log_path).read_text()
    # everything it made is root's again, and it wrote nothing to the host's shared directories
    for p in (vol, vol / "disk.img", vol / "sub", vol / "sub" / "f"):
        assert os.lstat(p).st_uid == 0, p
    assert {d: set(os.listdir(d)) for d in before} == before
    # its secrets and the controller's copy are gone; the link it planted fooled nobody
    assert not os.path.exists(held) and not (root / "workers" / "evil-1" / "run" / "secrets").exists()
    # and its word is not taken: disk.img is a link, not an image
    info = VolumeInfo("u", "local", "Filesystem", 1 << 20, str(vol), str(vol / "disk.img"))
    checked = checked_result(st.result, info, "kubevirt")
    assert checked is not None and checked.outcome == Outcome.PERMANENT
    assert checked.reason == Reason.UNSAFE_IMAGE and "is not a regular file" in checked.message
    assert "import again" in checked.message
    real = WorkerResult(Outcome.SUCCEEDED, "Completed", "done")
    os.unlink(vol / "disk.img")
    (vol / "disk.img").write_bytes(b"\0" * 512)
    assert checked_result(real, info, "kubevirt") is real


def test_the_proxy_reads_only_its_own_copy_of_the_secret_and_only_a_real_socket(tmp_path: Path) -> None:
    from cdi.api.naming import worker_held_secret
    from uploadproxy import proxy

    data = tmp_path / "d"
    wdir = data / "workers" / "upload-default.x"
    run = wdir / "run"
    (run / "secrets").mkdir(parents=True)
    (run / "secrets" / "proxy-auth").symlink_to("/etc/shadow")  # what a subverted server could do
    held = Path(worker_held_secret(str(data), "upload-default.x", "proxy-auth"))
    held.parent.mkdir()
    held.write_text("s3cret\n")
    assert (proxy.read_worker_file(str(held), 256) or "").strip() == "s3cret"

    async def connect(path: Path) -> str:
        try:
            _, w = await proxy._open_worker_socket(str(path))
        except OSError as e:
            return f"refused: {e}"
        w.close()
        return "connected"

    os.chown(run, 1_500_999_002, 1_500_999_002)
    other = tmp_path / "other.sock"  # root's socket of another service
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(other))
    srv.listen()
    try:
        (run / "upload.sock").symlink_to(other)
        assert asyncio.run(connect(run / "upload.sock")).startswith("refused")  # a link
        (run / "upload.sock").unlink()
        os.link(other, run / "upload.sock")
        assert "not a socket its worker made" in asyncio.run(connect(run / "upload.sock"))  # a hard link
        (run / "upload.sock").unlink()
        own = socket.socket(socket.AF_UNIX)
        own.bind(str(run / "upload.sock"))
        own.listen()
        os.chown(run / "upload.sock", 1_500_999_002, 1_500_999_002, follow_symlinks=False)
        assert stat.S_ISSOCK(os.lstat(run / "upload.sock").st_mode)
        assert asyncio.run(connect(run / "upload.sock")) == "connected"
        own.close()
    finally:
        srv.close()


def test_the_vm_runtime_will_not_boot_a_disk_that_is_a_link(tmp_path: Path) -> None:
    from cdi.api.virtualmachine import Volume, VolumeKind
    from vm_runtime.errors import DomainError
    from vm_runtime.volumes import ResolvedVolume, VolumeMode, _require

    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "disk.img").symlink_to("/etc/shadow")
    v = Volume("root", VolumeKind.DATA_VOLUME, claim_name="d")
    with pytest.raises(DomainError, match="not a regular file"):
        _require({"root": ResolvedVolume(VolumeMode.FILESYSTEM, str(vol))}, v)
    (vol / "disk.img").unlink()
    (vol / "disk.img").write_bytes(b"\0" * 512)
    assert _require({"root": ResolvedVolume(VolumeMode.FILESYSTEM, str(vol))}, v).disk_path == str(vol / "disk.img")
