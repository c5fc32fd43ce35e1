"""processor.run end to end with real files, qemu-img, nbdkit, compressors and loop devices."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdi.api.contract import BLOCK, ImportSettings, Outcome, Progress, Reason, WorkerResult
from cdi.common.errors import TemporaryError
from cdi.common.units import MiB
from cdi.datapath import formats, processor, qemu_img
from cdi.datapath.filesource import FileSource
from cdi.datapath.nbdkit import Nbdkit
from cdi.datapath.progress import ProgressReporter
from cdi.datapath.source import NbdkitPlan, SourceInfo, Stream
from tests.peers import images

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

RAW_SIZE = 4 * MiB
CAPACITY = 8 * MiB  # usable: round_down(8 MiB / 1.06, 1 MiB) = 7 MiB
USABLE = 7 * MiB


@dataclass
class Images:
    dir: Path
    raw: str
    data_bytes: int

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def derived(self, fmt: str, comp: str = "", qemu_compressed: bool = False) -> str:
        """The raw image as ``fmt`` (raw/qcow2/vmdk/vdi/vpc/vhdx/iso), then compressed with ``comp``."""
        base = self.raw if fmt == "raw" else self.path(f"img{'-c' if qemu_compressed else ''}.{fmt}")
        if not os.path.exists(base):
            images.convert(self.raw, base, fmt, compressed=qemu_compressed)
        if not comp:
            return base
        out = f"{base}.{comp}"
        if not os.path.exists(out):
            for layer in comp.split("."):
                images.compress(base, f"{base}.{layer}", layer)
                base = f"{base}.{layer}"
        return out


@pytest.fixture(scope="module")
def imgs(tmp_path_factory: pytest.TempPathFactory) -> Images:
    d = tmp_path_factory.mktemp("images")
    raw = str(d / "img.raw")
    data = images.make_raw(raw, RAW_SIZE, seed=3)
    return Images(d, raw, data)


def settings(vol: Path, **kw: object) -> ImportSettings:
    base: dict[str, object] = dict(
        source="http", image_size=CAPACITY, data_dir=str(vol), progress_file=str(vol.parent / "progress.json")
    )
    base.update(kw)
    return ImportSettings(**base)  # type: ignore[arg-type]


def do_run(source: object, s: ImportSettings) -> WorkerResult:
    r = processor.run(source, s, ProgressReporter(s.progress_file, min_interval=0))  # type: ignore[arg-type]
    WorkerResult.from_json(r.to_json())  # always a valid termination message
    return r


def assert_imported(vol: Path, expected_src: str, r: WorkerResult, data_bytes: int | None = None) -> None:
    assert r.outcome == Outcome.SUCCEEDED, r.message
    assert r.reason == Reason.IMPORT_COMPLETE
    disk = vol / "disk.img"
    assert sorted(os.listdir(vol)) == ["disk.img"]  # no .part, no staging, no scratch left behind
    assert disk.stat().st_size == USABLE
    assert images.sha256_of(str(disk)) == images.sha256_of(expected_src, USABLE)
    if data_bytes is not None:  # holes stay holes
        alloc = images.allocated_bytes(str(disk))
        assert data_bytes <= alloc <= data_bytes + 512 * 1024, (alloc, data_bytes)


@pytest.mark.parametrize(
    ("fmt", "comp", "path"),
    [
        ("raw", "", "stream"),
        ("raw", "gz", "stream"),
        ("raw", "xz", "stream"),
        ("raw", "zst", "stream"),
        ("raw", "xz.gz", "stream"),  # nested layers are peeled repeatedly
        ("qcow2", "", "qcow2-stream"),
        ("vmdk", "", "nbdkit"),
        ("vdi", "", "nbdkit"),
        ("vpc", "", "nbdkit"),
        ("vhdx", "", "nbdkit"),
        ("qcow2", "gz", "qcow2-stream"),  # decoded, then decoded again: no scratch
        ("vmdk", "zst", "scratch"),
        ("vhdx", "xz", "scratch"),
    ],
)
def test_formats_and_compressions(imgs: Images, vol: Path, fmt: str, comp: str, path: str) -> None:
    src = imgs.derived(fmt, comp)
    r = do_run(FileSource(src), settings(vol))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert r.details["path"] == path
    assert r.virtual_size is not None and r.virtual_size >= RAW_SIZE
    assert r.usable_size == USABLE
    if path == "scratch":
        assert r.scratch_used and "compressed" in r.scratch_reason
        p = Progress.read(str(vol.parent / "progress.json"))
        assert p is not None and p.note.startswith("scratch space used: ")
    else:
        assert not r.scratch_used
    if path == "stream":
        assert r.bytes_transferred == os.path.getsize(src)


def test_compressed_qcow2_clusters(imgs: Images, vol: Path) -> None:
    r = do_run(FileSource(imgs.derived("qcow2", qemu_compressed=True)), settings(vol))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)


def test_fixed_vhd_found_by_footer(imgs: Images, vol: Path) -> None:
    src = imgs.path("fixed.vhd")
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed", imgs.raw, src], check=True
    )
    r = do_run(FileSource(src), settings(vol))
    assert_imported(vol, imgs.raw, r)
    assert r.details["format"] == "vhd"


def test_iso_is_raw(imgs: Images, vol: Path, tmp_path: Path) -> None:
    iso = str(tmp_path / "x.iso")
    images.make_iso(iso, {"hello.txt": b"hello\n" * 1000}, str(tmp_path))
    r = do_run(FileSource(iso), settings(vol))
    assert r.details["format"] == "iso"
    assert_imported(vol, iso, r)


def test_no_range_uses_scratch_for_containers(imgs: Images, vol: Path) -> None:
    r = do_run(FileSource(imgs.derived("vmdk"), supports_range=False), settings(vol))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert r.scratch_used and r.scratch_reason == "the source does not support Range requests"


@pytest.mark.parametrize("compressed", [False, True])
def test_qcow2_streams_without_range_or_scratch(imgs: Images, vol: Path, compressed: bool) -> None:
    src = imgs.derived("qcow2", qemu_compressed=compressed)
    r = do_run(FileSource(src, supports_range=False), settings(vol, checksum=f"sha256:{images.sha256_of(src)}"))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert r.details["path"] == "qcow2-stream"
    assert not r.scratch_used and r.bytes_transferred == os.path.getsize(src)
    assert [n for n in os.listdir(vol) if n.startswith(".cdi-scratch")] == []


def test_qcow2_with_snapshots_reads_current_clusters_through_nbdkit(imgs: Images, vol: Path, tmp_path: Path) -> None:
    src = str(tmp_path / "snap.qcow2")
    shutil.copy(imgs.derived("qcow2"), src)
    subprocess.run(["qemu-img", "snapshot", "-c", "s1", src], check=True)
    r = do_run(FileSource(src), settings(vol))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert r.details["path"] == "nbdkit"
    r = do_run(FileSource(src, supports_range=False), settings(vol))  # no Range: decoded in one pass
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert r.details["path"] == "qcow2-stream"


class NoPlanSource(FileSource):
    def nbdkit_plan(self) -> NbdkitPlan | None:
        return None


def test_no_nbdkit_plan_uses_scratch(imgs: Images, vol: Path) -> None:
    r = do_run(NoPlanSource(imgs.derived("vhdx")), settings(vol))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert r.scratch_reason == "the source cannot be served through nbdkit"


def test_no_range_raw_streams(imgs: Images, vol: Path) -> None:
    r = do_run(FileSource(imgs.derived("raw", "zst"), supports_range=False), settings(vol))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)


def test_scratch_dir_setting(imgs: Images, vol: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    r = do_run(FileSource(imgs.derived("vdi", "gz")), settings(vol, scratch_dir=str(scratch)))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert os.listdir(scratch) == []


# --- refusals ----------------------------------------------------------------------------------


def assert_failed(vol: Path, r: WorkerResult, reason: str, outcome: Outcome = Outcome.PERMANENT) -> None:
    assert r.outcome == outcome, r.message
    assert r.reason == reason, r.message
    assert "disk.img" not in os.listdir(vol)
    assert "disk.img.part" not in os.listdir(vol)


@pytest.mark.parametrize(("fmt", "comp"), [("raw", ""), ("qcow2", ""), ("raw", "gz"), ("qcow2", "xz")])
def test_too_small(imgs: Images, vol: Path, fmt: str, comp: str) -> None:
    s = settings(vol, image_size=3 * MiB)  # usable 2 MiB
    r = do_run(FileSource(imgs.derived(fmt, comp)), s)
    assert_failed(vol, r, Reason.TOO_SMALL)
    assert r.usable_size == 2 * MiB
    assert r.virtual_size is not None and r.virtual_size > 2 * MiB
    assert r.required_capacity is not None and r.required_capacity >= 5 * MiB
    assert r.message.startswith("DataVolume too small: image virtual size ")
    assert "usable 2.0 MiB; request at least " in r.message
    if not comp:
        assert r.virtual_size == RAW_SIZE and r.required_capacity == 5 * MiB  # 4 MiB * 1.06 -> 5 MiB


def test_qcow2_backing_file_refused_before_download(imgs: Images, vol: Path, tmp_path: Path) -> None:
    child = str(tmp_path / "child.qcow2")
    images.make_child(imgs.derived("qcow2"), "qcow2", child, "qcow2")
    for src in (child, _gz(child, tmp_path)):
        r = do_run(FileSource(src), settings(vol))
        assert_failed(vol, r, Reason.UNSAFE_IMAGE)
        assert r.message.startswith("image has a backing file ")
        assert "flatten it with qemu-img convert" in r.message
        assert r.bytes_transferred < 1 * MiB  # refused from the header, nothing downloaded


def _gz(path: str, tmp_path: Path) -> str:
    out = str(tmp_path / (os.path.basename(path) + ".gz"))
    images.compress(path, out, "gz")
    return out


def test_vmdk_parent_refused(imgs: Images, vol: Path, tmp_path: Path) -> None:
    parent = imgs.derived("vmdk")
    child = str(tmp_path / "child.vmdk")
    images.make_child(parent, "vmdk", child, "vmdk")
    for src in (FileSource(child), FileSource(child, supports_range=False)):
        r = do_run(src, settings(vol))
        assert_failed(vol, r, Reason.UNSAFE_IMAGE)
        assert "image has a backing file" in r.message and parent in r.message


def test_vmdk_descriptor_refused(vol: Path, tmp_path: Path) -> None:
    desc = tmp_path / "d.vmdk"
    desc.write_text(
        '# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 8 FLAT "/etc/passwd" 0\n'
    )
    r = do_run(FileSource(str(desc)), settings(vol))
    assert_failed(vol, r, Reason.UNSAFE_IMAGE)


@pytest.mark.parametrize(
    "page", [b"<!DOCTYPE html><html><body>Login</body></html>", b"\n  <HTML>oops</HTML>"]
)
def test_html_is_not_an_image(vol: Path, tmp_path: Path, page: bytes) -> None:
    p = tmp_path / "index.html"
    p.write_bytes(page)
    r = do_run(FileSource(str(p)), settings(vol))
    assert_failed(vol, r, Reason.NOT_AN_IMAGE)
    assert r.message == "the server returned an HTML page, not a disk image; check the URL"


def test_corrupt_gz_is_invalid(imgs: Images, vol: Path, tmp_path: Path) -> None:
    data = Path(imgs.derived("raw", "gz")).read_bytes()
    bad = tmp_path / "bad.gz"
    bad.write_bytes(bytes(data[: len(data) // 2]) + b"\xff" * 4096)
    r = do_run(FileSource(str(bad)), settings(vol))
    assert_failed(vol, r, Reason.INVALID_IMAGE)


# --- checksum ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "comp"), [("raw", ""), ("raw", "gz"), ("qcow2", ""), ("vdi", "")])
def test_checksum_ok(imgs: Images, vol: Path, fmt: str, comp: str) -> None:
    src = imgs.derived(fmt, comp)
    r = do_run(FileSource(src), settings(vol, checksum=f"sha256:{images.sha256_of(src)}"))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    if fmt == "vdi":  # qemu-img reads a vdi out of order: the checksum needs the bytes in order first
        assert r.scratch_reason == "a checksum was requested"
    else:
        assert not r.scratch_used


@pytest.mark.parametrize(("fmt", "comp"), [("raw", ""), ("raw", "xz"), ("qcow2", "")])
def test_checksum_mismatch(imgs: Images, vol: Path, fmt: str, comp: str) -> None:
    src = imgs.derived(fmt, comp)
    want = "0" * 64
    r = do_run(FileSource(src), settings(vol, checksum=f"sha256:{want}"))
    assert_failed(vol, r, Reason.CHECKSUM_ERROR)
    assert r.message == f"checksum mismatch: expected sha256:{want}, got sha256:{images.sha256_of(src)}"


# --- preallocation, block ------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "comp"), [("raw", "gz"), ("qcow2", "")])
def test_preallocation(imgs: Images, vol: Path, fmt: str, comp: str) -> None:
    r = do_run(FileSource(imgs.derived(fmt, comp)), settings(vol, preallocation=True))
    assert_imported(vol, imgs.raw, r)
    assert r.preallocation_applied
    assert images.allocated_bytes(str(vol / "disk.img")) >= USABLE


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup")
    backing = tmp_path / "block.img"
    with open(backing, "wb") as f:
        f.truncate(6 * MiB)
        f.write(b"\xaa" * MiB)  # old data that the import must zero
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.mark.root
@pytest.mark.parametrize(
    ("fmt", "comp"), [("raw", ""), ("raw", "gz"), ("qcow2", ""), ("qcow2", "xz"), ("vmdk", "zst")]
)
def test_block_target(imgs: Images, tmp_path: Path, loopdev: str, fmt: str, comp: str) -> None:
    s = ImportSettings(source="http", volume_mode=BLOCK, block_device=loopdev, image_size=6 * MiB)
    r = do_run(FileSource(imgs.derived(fmt, comp)), s)
    assert r.outcome == Outcome.SUCCEEDED, r.message
    assert r.usable_size == 6 * MiB
    assert images.sha256_of(loopdev) == images.sha256_of(imgs.raw, 6 * MiB)
    assert stat.S_ISBLK(os.stat(loopdev).st_mode)


@pytest.mark.root
def test_block_too_small(imgs: Images, tmp_path: Path, loopdev: str) -> None:
    big = str(tmp_path / "big.raw")
    images.make_raw(big, 7 * MiB, seed=5)
    s = ImportSettings(source="http", volume_mode=BLOCK, block_device=loopdev, image_size=6 * MiB)
    r = do_run(FileSource(big), s)
    assert r.outcome == Outcome.PERMANENT and r.reason == Reason.TOO_SMALL
    assert r.required_capacity == 7 * MiB


# --- resume ------------------------------------------------------------------------------------


class FlakySource(FileSource):
    """A FileSource whose streams raise TemporaryError after ``fail_after`` bytes, ``failures`` times."""

    def __init__(self, path: str, fail_after: int, failures: int = 1, supports_range: bool = True) -> None:
        super().__init__(path, supports_range)
        self.fail_after = fail_after
        self.failures = failures
        self.opens: list[int] = []

    def open(self, offset: int = 0) -> Stream:
        inner = super().open(offset)
        self.opens.append(offset)
        outer = self

        class S:
            served = 0

            def readinto(self, buf: memoryview) -> int:
                if outer.failures > 0 and self.served >= outer.fail_after:
                    outer.failures -= 1
                    raise TemporaryError("connection reset by peer", reason=Reason.TRANSIENT)
                n = inner.readinto(buf[: max(1, min(len(buf), 100_000))])
                self.served += n
                return n

            def close(self) -> None:
                inner.close()

        return S()


def test_resume_raw_at_offset(imgs: Images, vol: Path) -> None:
    src = FlakySource(imgs.raw, fail_after=1_500_000)
    r = do_run(src, settings(vol, checksum=f"sha256:{images.sha256_of(imgs.raw)}"))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert r.resumes == 1
    assert src.opens[0] == 0 and src.opens[-1] > 1_000_000  # resumed where it stopped
    assert r.bytes_transferred == RAW_SIZE
    p = Progress.read(str(vol.parent / "progress.json"))
    assert p is not None and p.resumes == 1


@pytest.mark.parametrize("comp", ["gz", "xz", "zst"])
def test_resume_compressed_restarts(imgs: Images, vol: Path, comp: str) -> None:
    gz = imgs.derived("raw", comp)
    src = FlakySource(gz, fail_after=os.path.getsize(gz) // 2, failures=2)
    r = do_run(src, settings(vol, checksum=f"sha256:{images.sha256_of(gz)}"))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert r.resumes == 2 and src.opens == [0, 0, 0]


def test_resume_scratch(imgs: Images, vol: Path) -> None:
    src = FlakySource(imgs.derived("vdi"), fail_after=300_000, supports_range=False)
    r = do_run(src, settings(vol))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert r.resumes == 1


@pytest.mark.parametrize("compressed", [False, True])
def test_resume_qcow2_at_offset(imgs: Images, vol: Path, compressed: bool) -> None:
    q = imgs.derived("qcow2", qemu_compressed=compressed)
    src = FlakySource(q, fail_after=os.path.getsize(q) // 3, failures=2)
    r = do_run(src, settings(vol, checksum=f"sha256:{images.sha256_of(q)}"))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert r.resumes == 2 and r.details["path"] == "qcow2-stream"
    assert src.opens[0] == 0 and all(o > 0 for o in src.opens[1:])  # never started over
    assert r.bytes_transferred == os.path.getsize(q)


def test_resume_qcow2_without_range_restarts(imgs: Images, vol: Path) -> None:
    q = imgs.derived("qcow2")
    src = FlakySource(q, fail_after=os.path.getsize(q) // 2, supports_range=False)
    r = do_run(src, settings(vol))
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert r.resumes == 1 and src.opens == [0, 0]


def test_resume_budget_exhausted(imgs: Images, vol: Path) -> None:
    src = FlakySource(imgs.raw, fail_after=500_000, failures=100)
    r = do_run(src, settings(vol, max_resumes=2))
    assert_failed(vol, r, Reason.TRANSIENT, Outcome.TEMPORARY)
    assert r.resumes == 2


# --- archive -----------------------------------------------------------------------------------


def test_archive_extracts(vol: Path, tmp_path: Path) -> None:
    tar = str(tmp_path / "a.tar")
    images.make_tar(
        tar,
        [
            ("dir", "etc", b""),
            ("file", "etc/hosts", b"127.0.0.1 localhost\n"),
            ("file", "disk.raw", os.urandom(300_000)),
            ("symlink", "etc/link", "hosts"),
            ("hardlink", "disk2.raw", "disk.raw"),
        ],
    )
    gz = _gz(tar, tmp_path)
    r = do_run(
        FileSource(gz), settings(vol, content_type="archive", checksum=f"sha256:{images.sha256_of(gz)}")
    )
    assert r.outcome == Outcome.SUCCEEDED, r.message
    assert sorted(os.listdir(vol)) == ["disk.raw", "disk2.raw", "etc"]
    assert (vol / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert os.readlink(vol / "etc" / "link") == "hosts"
    assert (vol / "disk2.raw").read_bytes() == (vol / "disk.raw").read_bytes()


@pytest.mark.parametrize(
    ("entries", "bad"),
    [
        ([("file", "/abs", b"x")], "/abs"),
        ([("file", "a/../../escape", b"x")], "a/../../escape"),
        ([("symlink", "evil", "/etc")], "evil"),
        ([("symlink", "evil", "../../etc")], "evil"),
        ([("symlink", "here", "."), ("symlink", "up", "here/..")], "up"),
        ([("symlink", "lnk", "."), ("file", "lnk/../../x", b"x")], "lnk/../../x"),
        ([("hardlink", "h", "/etc/passwd")], "h"),
        ([("chr", "null", b"")], "null"),
        ([("fifo", "pipe", b"")], "pipe"),
    ],
)
def test_archive_unsafe(
    vol: Path, tmp_path: Path, entries: list[tuple[str, str, bytes | str]], bad: str
) -> None:
    tar = str(tmp_path / "bad.tar")
    images.make_tar(tar, [("file", "ok.txt", b"fine"), *entries])
    r = do_run(FileSource(tar), settings(vol, content_type="archive"))
    assert r.outcome == Outcome.PERMANENT and r.reason == Reason.UNSAFE_IMAGE, r.message
    assert repr(bad) in r.message
    assert os.listdir(vol) == []  # nothing moved into place, staging removed
    assert not os.path.exists(tmp_path / "escape") and not os.path.exists(tmp_path / "x")


def test_archive_needs_tar(imgs: Images, vol: Path) -> None:
    r = do_run(FileSource(imgs.derived("qcow2")), settings(vol, content_type="archive"))
    assert r.outcome == Outcome.PERMANENT and r.reason == Reason.INVALID_IMAGE
    assert "needs a tar archive, but the source is qcow2" in r.message


def test_archive_too_big(vol: Path, tmp_path: Path) -> None:
    tar = str(tmp_path / "big.tar")
    images.make_tar(tar, [("file", "a", bytes(2 * MiB)), ("file", "b", bytes(2 * MiB))])
    r = do_run(FileSource(tar), settings(vol, content_type="archive", image_size=4 * MiB))  # usable 3 MiB
    assert r.outcome == Outcome.PERMANENT and r.reason == Reason.TOO_SMALL
    assert "'b'" in r.message and os.listdir(vol) == []


def test_archive_checksum_mismatch_moves_nothing(vol: Path, tmp_path: Path) -> None:
    tar = str(tmp_path / "a.tar")
    images.make_tar(tar, [("file", "f", b"data")])
    r = do_run(FileSource(tar), settings(vol, content_type="archive", checksum="sha256:" + "1" * 64))
    assert r.reason == Reason.CHECKSUM_ERROR and os.listdir(vol) == []


# --- tools -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "ours"), [("qcow2", "qcow2"), ("vmdk", "vmdk"), ("vdi", "vdi"), ("vpc", "vhd")]
)
def test_header_facts_agree_with_qemu_img(imgs: Images, fmt: str, ours: str) -> None:
    path = imgs.derived(fmt)
    with open(path, "rb") as f:
        head = f.read(formats.HEAD_SIZE)
    assert formats.sniff(head) == ours
    assert formats.header_facts(ours, head).virtual_size == qemu_img.info(path, fmt).virtual_size


def test_nbdkit_secret_files_are_private_and_removed(imgs: Images) -> None:
    content = Path(imgs.raw).read_bytes()
    plan = NbdkitPlan("file", ("file=@SECRETS@/image",), secret_files={"image": content})
    kit = Nbdkit(plan)
    with kit as uri:
        assert kit.tmpdir is not None
        secret = os.path.join(kit.tmpdir, "image")
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(kit.tmpdir).st_mode) == 0o700
        assert qemu_img.info(uri, "raw").virtual_size == RAW_SIZE
        tmpdir = kit.tmpdir
    assert not os.path.exists(tmpdir)


def test_qemu_img_error_has_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + bytes(100))
    with pytest.raises(qemu_img.QemuImgError) as e:
        qemu_img.info(str(bad), "qcow2")
    assert e.value.reason == Reason.INVALID_IMAGE and e.value.stderr


def test_filesource_info(imgs: Images) -> None:
    assert FileSource(imgs.raw).info() == SourceInfo(size=RAW_SIZE, supports_range=True, description=imgs.raw)
    assert FileSource(imgs.raw, supports_range=False).nbdkit_plan() is None


def test_missing_source_is_not_found(vol: Path, tmp_path: Path) -> None:
    r = do_run(FileSource(str(tmp_path / "nope")), settings(vol))
    assert r.outcome == Outcome.PERMANENT and r.reason == Reason.NOT_FOUND


def test_tar_kubevirt_content_is_raw(vol: Path, tmp_path: Path) -> None:
    tar = str(tmp_path / "a.tar")
    images.make_tar(tar, [("file", "f", b"data")], fmt=tarfile.USTAR_FORMAT)
    r = do_run(FileSource(tar), settings(vol))
    assert r.outcome == Outcome.SUCCEEDED and r.details["format"] == "tar"


@pytest.mark.parametrize("supports_range", [True, False])
def test_multiblock_xz_parallel_or_subprocess(
    imgs: Images, vol: Path, supports_range: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Multi-block xz with Range decodes in-process in parallel; without Range through xz -T2."""
    import subprocess

    from cdi.datapath import xzpar

    monkeypatch.setattr(xzpar, "MIN_SIZE", 0)
    xz = str(vol.parent / "multi.raw.xz")
    with open(imgs.raw, "rb") as f, open(xz, "wb") as out:
        subprocess.run(["xz", "-1", "-c", "--block-size=256KiB"], stdin=f, stdout=out, check=True)
    used: list[str] = []
    real = xzpar.ParallelXzStream.__init__

    def spy(self: xzpar.ParallelXzStream, *a: object, **kw: object) -> None:
        used.append("parallel")
        real(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(xzpar.ParallelXzStream, "__init__", spy)
    r = do_run(
        FileSource(xz, supports_range=supports_range),
        settings(vol, checksum=f"sha256:{images.sha256_of(xz)}"),
    )
    assert_imported(vol, imgs.raw, r, imgs.data_bytes)
    assert r.bytes_transferred == os.path.getsize(xz)
    assert used == (["parallel"] if supports_range else [])
