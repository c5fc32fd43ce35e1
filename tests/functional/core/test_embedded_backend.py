"""The embedded backend against the real thing: directories, loop devices, processes."""

import os
import signal
import sys
import time

import pytest

from cdi.api.contract import Outcome
from cdi.backends.base import StorageClassInfo
from cdi.backends.embedded.volumes import EmbeddedVolumes
from cdi.backends.embedded.workers import LocalWorkers

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
                                reason="loop devices need root and /dev/loop-control")


@pytest.fixture
def volumes(tmp_path):
    v = EmbeddedVolumes({"local": StorageClassInfo("local", str(tmp_path / "pool"), default=True)})
    yield v
    for uid in ("fs-1", "blk-1"):
        v.release(uid)


def test_filesystem_volume_lifecycle(volumes):
    info = volumes.provision("fs-1", "default", "a", "local", "Filesystem", 64 << 20)
    assert os.path.isdir(info.path) and info.disk_path == os.path.join(info.path, "disk.img")
    with open(info.disk_path, "wb") as f:
        f.write(b"x")
    assert volumes.lookup("fs-1") == info
    volumes.reset("fs-1")
    assert os.listdir(info.path) == []
    volumes.release("fs-1")
    assert volumes.lookup("fs-1") is None and not os.path.exists(info.path)


@needs_root
def test_block_volume_is_a_loop_device_reattached_after_detach(volumes):
    info = volumes.provision("blk-1", "default", "b", "local", "Block", 64 << 20)
    assert info.path.startswith("/dev/loop") and info.backing_file
    with open(info.path, "r+b") as f:
        assert f.seek(0, os.SEEK_END) == 64 << 20
        f.seek(1 << 20)
        f.write(b"\x5a" * 4096)
        os.fsync(f.fileno())
    volumes.reset("blk-1")  # discard: the data is gone and the backing file is sparse again
    with open(info.path, "rb") as f:
        f.seek(1 << 20)
        assert f.read(4096) == b"\0" * 4096
    assert os.stat(info.backing_file).st_blocks * 512 < 1 << 20
    os.system(f"losetup -d {info.path}")  # as after a reboot
    again = volumes.lookup("blk-1")
    assert again is not None and again.path.startswith("/dev/loop")
    volumes.release("blk-1")
    assert not os.path.exists(info.backing_file)
    assert info.backing_file not in os.popen("losetup -l").read()


def test_unknown_storage_class_is_a_clear_error(volumes):
    with pytest.raises(Exception, match=r'storage class "fast" does not exist .known: local.'):
        volumes.provision("x", "default", "a", "fast", "Filesystem", 1 << 20)


WORKER = r"""
import os, sys, time, json
from cdi.api.contract import WorkerResult, Outcome
mode = os.environ["MODE"]
if mode == "child":
    import subprocess
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open(os.environ["CHILD_STARTED"], "w").close()
    time.sleep(60)
if mode == "sleep":
    time.sleep(60)
r = WorkerResult(Outcome.PERMANENT if mode == "fail" else Outcome.SUCCEEDED, "ChecksumError" if mode == "fail" else "Completed", "m")
r.write(os.environ["CDI_TERMINATION_LOG"])
sys.exit(r.exit_code)
"""


@pytest.fixture
def runner(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(WORKER)
    r = LocalWorkers(str(tmp_path / "workers"), {"importer": [sys.executable, str(script)]})
    yield r
    for n in ("ok", "fail", "sleep", "child"):
        r.delete(n)


def wait_done(runner, name, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = runner.status(name)
        if st is not None and not st.running:
            return st
        time.sleep(0.05)
    raise AssertionError(f"{name} still running")


def test_worker_results_are_read_from_the_termination_log(runner):
    env = {"MODE": "ok", "PYTHONPATH": os.getcwd()}
    runner.start("ok", "importer", env)
    st = wait_done(runner, "ok")
    assert st.result is not None and st.result.outcome == Outcome.SUCCEEDED and st.exit_code == 0
    runner.start("fail", "importer", {**env, "MODE": "fail"})
    st = wait_done(runner, "fail")
    assert st.result is not None and st.result.reason == "ChecksumError" and st.exit_code == 2


def test_a_killed_worker_is_seen_by_a_new_runner_and_its_children_die(runner, tmp_path):
    started = tmp_path / "child-started"
    runner.start("child", "importer", {"MODE": "child", "CHILD_STARTED": str(started), "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 20
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int((tmp_path / "workers" / "child" / "pid").read_text().split()[0])
    children = os.popen(f"pgrep -g {pid}").read().split()
    assert len(children) == 2
    # A new runner (as after a controller restart) still sees it running, by pid and start time.
    fresh = LocalWorkers(str(tmp_path / "workers"), runner.entrypoints)
    assert fresh.status("child").running
    os.kill(pid, signal.SIGKILL)
    runner.reap()
    st = wait_done(fresh, "child")
    assert st.result is None  # killed: no termination message
    def live_members():  # zombies wait for init to reap them; they hold nothing
        states = os.popen(f"ps -o stat= -g {pid}").read().split()
        return [s for s in states if not s.startswith("Z")]

    deadline = time.monotonic() + 10
    while live_members() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_members() == []  # the orphaned child was killed too


def test_stop_kills_the_whole_group(runner):
    runner.start("sleep", "importer", {"MODE": "sleep", "PYTHONPATH": os.getcwd()})
    assert runner.status("sleep").running
    runner.stop("sleep", grace=1)
    assert not runner.status("sleep").running
