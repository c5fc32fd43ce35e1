"""The confinement alone stops a host file read: qemu-img and nbdkit under bubblewrap.

These tests bypass our header checks (``imagecheck``) on purpose and hand qemu-img images that
name a canary file on the host: the canary's bytes must never reach the output. They also run
the sandbox the way workers will: as an unprivileged uid, with the target passed as an
inherited descriptor (``/proc/self/fd/N/disk.img.part``, ``/proc/self/fd/N`` for a device).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.api.contract import BLOCK, ImportSettings, Outcome, Reason, WorkerResult
from cdi.common.errors import PermanentError, TemporaryError
from cdi.common.units import MiB
from cdi.datapath import imagecheck, processor, qemu_img, sandbox
from cdi.datapath.filesource import FileSource
from cdi.datapath.nbdkit import Nbdkit
from cdi.datapath.progress import ProgressReporter
from cdi.datapath.source import NbdkitPlan
from tests.peers import crafted, images

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

TOKEN = b"CANARY-7c1e5a-host-secret"
NOBODY = 65534


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("qemu-img", "nbdkit", "bwrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    """A host file outside everything the import may touch; unchanged afterwards."""
    path = tmp_path / "host" / "canary.txt"
    path.parent.mkdir()
    data = crafted.make_canary(str(path), TOKEN)
    before = os.stat(path)
    yield path
    after = os.stat(path)
    assert path.read_bytes() == data
    assert (after.st_mode, after.st_mtime_ns, after.st_uid) == (before.st_mode, before.st_mtime_ns, before.st_uid)


def attack_vmdk(tmp_path: Path, canary: Path) -> Path:
    img = tmp_path / "attack.vmdk"
    img.write_bytes(crafted.sparse_vmdk_with_descriptor(crafted.flat_descriptor(str(canary), 64), capacity=0))
    return img


def no_canary_under(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not p.endswith("canary.txt"):
                with open(p, "rb") as f:
                    assert TOKEN not in f.read(), f"{p} holds the canary's bytes"


def test_confined_qemu_img_cannot_open_the_extent(tmp_path: Path, canary: Path) -> None:
    img = attack_vmdk(tmp_path, canary)
    with pytest.raises(qemu_img.QemuImgError) as e:
        qemu_img.info(str(img), "vmdk")
    assert f"Could not open '{canary}': No such file or directory" in e.value.message
    out = tmp_path / "out.raw"
    out.write_bytes(bytes(1 * MiB))
    with pytest.raises(qemu_img.QemuImgError) as e:
        qemu_img.convert(str(img), str(out), "vmdk", target_is_zero=True)
    assert str(canary) in e.value.message
    assert TOKEN not in out.read_bytes()


def test_confined_qemu_img_cannot_use_a_data_file(tmp_path: Path, canary: Path) -> None:
    """qemu-img info does not open a data file (check_info refuses what it reports); convert would."""
    ext = tmp_path / "ext.qcow2"
    data = tmp_path / "host" / "data.raw"
    crafted.qcow2_with_data_file(str(ext), str(data))
    crafted.make_canary(str(data), TOKEN, 1 * MiB)
    info = qemu_img.info(str(ext), "qcow2")
    assert info.data_file == str(data)
    with pytest.raises(PermanentError) as refused:
        imagecheck.check_info(info, "qcow2")
    assert refused.value.reason == Reason.UNSAFE_IMAGE
    out = tmp_path / "out.raw"
    out.write_bytes(bytes(1 * MiB))
    with pytest.raises(qemu_img.QemuImgError) as e:
        qemu_img.convert(str(ext), str(out), "qcow2", target_is_zero=True)
    assert f"Could not open '{data}': No such file or directory" in e.value.message
    assert "json:" not in e.value.message  # the spec is named "the image"
    assert TOKEN not in out.read_bytes()


def test_unconfined_info_shows_the_extent_and_check_info_refuses_it(
    tmp_path: Path, canary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CDI_IMAGE_SANDBOX=off: qemu-img opens the canary (info reads no data); check_info refuses."""
    monkeypatch.setenv(sandbox.ENV_SWITCH, "off")
    info = qemu_img.info(str(attack_vmdk(tmp_path, canary)), "vmdk")
    assert info.extents == (str(canary),) and info.create_type == "monolithicFlat"
    with pytest.raises(PermanentError) as e:
        imagecheck.check_info(info, "vmdk")
    assert e.value.reason == Reason.UNSAFE_IMAGE and str(canary) in e.value.message


def settings(vol: Path, **kw: object) -> ImportSettings:
    base: dict[str, object] = dict(source="http", image_size=8 * MiB, data_dir=str(vol),
                                   progress_file=str(vol.parent / "progress.json"))
    base.update(kw)
    return ImportSettings(**base)  # type: ignore[arg-type]


def run(source: object, s: ImportSettings) -> WorkerResult:
    return processor.run(source, s, ProgressReporter(s.progress_file, min_interval=0))  # type: ignore[arg-type]


@pytest.mark.parametrize("supports_range", [True, False], ids=["nbdkit", "scratch"])
def test_the_import_fails_without_the_header_checks(
    tmp_path: Path, canary: Path, monkeypatch: pytest.MonkeyPatch, supports_range: bool
) -> None:
    monkeypatch.setattr(imagecheck, "check_head", lambda fmt, head: None)
    vol = tmp_path / "vol"
    vol.mkdir()
    r = run(FileSource(str(attack_vmdk(tmp_path, canary)), supports_range=supports_range), settings(vol))
    assert r.outcome == Outcome.PERMANENT and r.reason == Reason.INVALID_IMAGE, r.message
    assert f"Could not open '{canary}'" in r.message
    assert os.listdir(vol) == []
    no_canary_under(tmp_path / "vol")


def test_the_jail_holds_only_usr_dev_and_what_a_call_names(tmp_path: Path, canary: Path) -> None:
    given = tmp_path / "given.txt"
    given.write_bytes(b"given")
    for network in (False, True):
        with sandbox.Jail(network=network) as jail:
            inside = jail.file(str(given))
            if network:
                jail.etc(sandbox.NETWORK_ETC)
            script = (f"cat {inside}; ls /; for f in {canary} /etc/shadow /etc/passwd /proc/1/environ {tmp_path};"
                      " do test -e $f && echo LEAK $f; done; echo > /usr/x 2>/dev/null && echo LEAK usr; "
                      f"echo > {inside} 2>/dev/null && echo LEAK writable; true")
            p = subprocess.run(jail.command(["sh", "-c", script]), capture_output=True, timeout=30,
                               pass_fds=jail.pass_fds, check=False, env=jail.env)
        assert p.returncode == 0, p.stderr
        out = p.stdout.decode()
        assert out.startswith("given") and "LEAK" not in out, out
        top = set(out.split()[1:])
        assert top <= {"bin", "dev", "lib", "lib64", "run", "sbin", "tmp", "usr", "etc"}, top
        assert ("etc" in top) == network
    assert given.read_bytes() == b"given"


def test_a_proxy_password_reaches_the_tool_but_never_a_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://user:pr0xy-s3cret@127.0.0.1:3128")
    monkeypatch.setenv("CDI_SOMETHING_ELSE", "not-for-the-tool")
    for network in (True, False):
        with sandbox.Jail(network=network) as jail:
            argv = jail.command(["sh", "-c", "env"])
            assert not any("pr0xy-s3cret" in a for a in argv)
            p = subprocess.run(argv, capture_output=True, timeout=30, pass_fds=jail.pass_fds, check=True,
                               env=jail.env, text=True)
        assert ("pr0xy-s3cret" in p.stdout) == network, p.stdout  # only a network tool needs it
        assert "CDI_SOMETHING_ELSE" not in p.stdout and "LC_ALL=C" in p.stdout


def test_nbdkit_serves_only_its_file(tmp_path: Path, canary: Path) -> None:
    src = tmp_path / "img.raw"
    images.make_raw(str(src), 1 * MiB, seed=4)
    with Nbdkit(NbdkitPlan("file", (f"file={src}",))) as uri:
        assert qemu_img.info(uri, "raw").virtual_size == 1 * MiB
    # the file plugin told to serve the canary from a path it was not given: it does not exist there
    kit = Nbdkit(NbdkitPlan("file", ("file=@SECRETS@/../../../" + str(canary).lstrip("/"),)))
    with pytest.raises(TemporaryError) as e:
        kit.start()
    assert "nbdkit exited during start" in str(e.value)
    assert "No such file" in str(e.value) or "does not exist" in str(e.value), str(e.value)  # not there
    assert kit.tmpdir is None


def test_sandbox_unavailable_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_bwrap", lambda: "/nonexistent/bwrap")
    monkeypatch.setattr(sandbox, "_preflight_done", False)
    monkeypatch.setattr(sandbox, "_preflight_error", None)
    img = tmp_path / "d.vmdk"
    raw = tmp_path / "d.raw"
    images.make_raw(str(raw), 1 * MiB, seed=2)
    images.convert(str(raw), str(img), "vmdk")
    vol = tmp_path / "vol"
    vol.mkdir()
    r = run(FileSource(str(img)), settings(vol))
    assert r.outcome == Outcome.PERMANENT and r.reason == Reason.CONFIG_ERROR, r.message
    assert "bubblewrap" in r.message and "imageSandbox: false in config.yaml" in r.message
    assert os.listdir(vol) == []
    monkeypatch.setattr(sandbox, "_preflight_done", False)  # the next test gets a real preflight


def test_target_given_as_an_inherited_directory_descriptor(tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    images.make_raw(str(raw), 2 * MiB, seed=6)
    img = tmp_path / "d.vdi"
    images.convert(str(raw), str(img), "vdi")
    vol = tmp_path / "vol"
    vol.mkdir()
    fd = os.open(vol, os.O_RDONLY | os.O_DIRECTORY)
    try:
        r = run(FileSource(str(img)), settings(Path(f"/proc/self/fd/{fd}")))
    finally:
        os.close(fd)
    assert r.outcome == Outcome.SUCCEEDED, r.message
    assert os.listdir(vol) == ["disk.img"]
    assert images.sha256_of(str(vol / "disk.img"), 2 * MiB) == images.sha256_of(str(raw))


@pytest.mark.root
def test_block_target_given_as_a_descriptor(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup")
    raw = tmp_path / "d.raw"
    images.make_raw(str(raw), 2 * MiB, seed=8)
    img = tmp_path / "d.vhdx"
    images.convert(str(raw), str(img), "vhdx")
    backing = tmp_path / "block.img"
    with open(backing, "wb") as f:
        f.truncate(4 * MiB)
        f.write(b"\xaa" * MiB)
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        fd = os.open(dev, os.O_RDWR)
        try:
            s = ImportSettings(source="http", volume_mode=BLOCK, block_device=f"/proc/self/fd/{fd}", image_size=4 * MiB)
            r = run(FileSource(str(img), supports_range=False), s)
        finally:
            os.close(fd)
        assert r.outcome == Outcome.SUCCEEDED, r.message
        assert images.sha256_of(dev, 4 * MiB) == images.sha256_of(str(raw), 4 * MiB)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


CHILD = """
import json, os, sys
from cdi.api.contract import ImportSettings
from cdi.datapath import processor
from cdi.datapath.filesource import FileSource
from cdi.datapath.progress import ProgressReporter
src, fd, rng = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
s = ImportSettings(source="http", image_size=8 << 20, data_dir=f"/proc/self/fd/{fd}",
                   progress_file=os.path.join(os.path.dirname(src), "progress.json"))
r = processor.run(FileSource(src, supports_range=rng), s, ProgressReporter(s.progress_file, min_interval=0))
print(json.dumps({"uid": os.getuid(), "outcome": str(r.outcome), "reason": r.reason, "message": r.message,
                  "path": r.details.get("path")}))
"""


@pytest.mark.root
@pytest.mark.parametrize("supports_range", [True, False], ids=["nbdkit", "scratch"])
def test_an_unprivileged_worker_with_an_inherited_target(supports_range: bool) -> None:
    """As uid 65534 with the volume directory as an inherited descriptor: imports, and the attack fails."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged uid")
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("needs /usr/bin/python3 (the test venv's python is under /root)")
    work = Path(tempfile.mkdtemp(prefix="cdi-unpriv-", dir="/tmp"))
    try:
        raw = work / "d.raw"
        images.make_raw(str(raw), 2 * MiB, seed=9)
        images.convert(str(raw), str(work / "d.vmdk"), "vmdk")
        (work / "host").mkdir()
        canary = work / "host" / "canary.txt"
        data = crafted.make_canary(str(canary), TOKEN)
        os.chmod(canary, 0o644)  # readable by the uid: only the confinement stands in the way
        (work / "attack.vmdk").write_bytes(
            crafted.sparse_vmdk_with_descriptor(crafted.flat_descriptor(str(canary), 64), capacity=0))
        for name in ("ok", "evil"):
            (work / name).mkdir()
        for owned in [work, *work.iterdir()]:
            if owned.name != "host":
                os.chown(owned, NOBODY, NOBODY)
        results = {}
        for name, img in (("ok", "d.vmdk"), ("evil", "attack.vmdk")):
            fd = os.open(work / name, os.O_RDONLY | os.O_DIRECTORY)
            try:
                env = {"PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd()), "PATH": "/usr/bin:/bin"}
                argv = ["/usr/bin/python3", "-c", CHILD, str(work / img), str(fd), "1" if supports_range else "0"]
                if name == "evil":  # bypass our header checks in the child too
                    argv[2] = CHILD.replace("r = processor.run", "processor.imagecheck.check_head = "
                                            "lambda f, h: None\nr = processor.run")
                p = subprocess.run(argv, user=NOBODY, group=NOBODY, extra_groups=[], env=env, pass_fds=(fd,),
                                   capture_output=True, timeout=60, check=False, cwd=str(work))
            finally:
                os.close(fd)
            assert p.returncode == 0, p.stderr.decode()[-2000:]
            results[name] = json.loads(p.stdout.decode().strip().splitlines()[-1])
        ok, evil = results["ok"], results["evil"]
        assert ok["uid"] == NOBODY and ok["outcome"] == "Succeeded", ok
        assert ok["path"] == ("nbdkit" if supports_range else "scratch")
        disk = work / "ok" / "disk.img"
        assert images.sha256_of(str(disk), 2 * MiB) == images.sha256_of(str(raw))
        assert os.stat(disk).st_uid == NOBODY
        assert evil["reason"] == Reason.INVALID_IMAGE and str(canary) in evil["message"], evil
        assert os.listdir(work / "evil") == []
        no_canary_under(work)
        assert canary.read_bytes() == data
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_sandbox_switch_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, on in (("", True), ("bwrap", True), ("off", False), ("OFF", False), ("yes", True)):
        monkeypatch.setenv(sandbox.ENV_SWITCH, value)
        assert sandbox.enabled() is on
    monkeypatch.delenv(sandbox.ENV_SWITCH)
    assert sandbox.enabled()
