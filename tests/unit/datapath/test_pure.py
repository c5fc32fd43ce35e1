"""Pure parts of the data path: magic bytes, header facts, regexes, sizes, progress, tar checks."""

from __future__ import annotations

import json
import pathlib
import struct
import tarfile

import pytest

from cdi.api.contract import BLOCK, ImportSettings, Progress, Reason
from cdi.common.errors import PermanentError
from cdi.common.units import MiB
from cdi.datapath import archive, formats, qemu_img, streams
from cdi.datapath.processor import TooSmallError, required_capacity, usable_size
from cdi.datapath.progress import ProgressReporter
from tests.unit.datapath.helpers import BytesStream as _Bytes

pytestmark = pytest.mark.timeout(10)


def _at(offset: int, magic: bytes, size: int = 64 << 10) -> bytes:
    b = bytearray(size)
    b[offset : offset + len(magic)] = magic
    return bytes(b)


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"\x1f\x8b\x08\x00" + bytes(100), formats.GZ),
        (b"\xfd7zXZ\x00" + bytes(100), formats.XZ),
        (b"\x28\xb5\x2f\xfd" + bytes(100), formats.ZST),
        (b"QFI\xfb" + bytes(100), formats.QCOW2),
        (b"KDMV" + bytes(100), formats.VMDK),
        (b"# Disk DescriptorFile\nversion=1\n", formats.VMDK_DESCRIPTOR),
        (_at(0x40, b"\x7f\x10\xda\xbe"), formats.VDI),
        (b"conectix" + bytes(100), formats.VHD),
        (b"vhdxfile" + bytes(100), formats.VHDX),
        (_at(257, b"ustar"), formats.TAR),
        (_at(0x8001, b"CD001"), formats.ISO),
        (b"  \n<!DOCTYPE HTML PUBLIC>", formats.HTML),
        (b"<html><body>", formats.HTML),
        (b"<HTML>", formats.HTML),
        (bytes(4096), formats.RAW),
        (b"", formats.RAW),
        (b"hello <html>", formats.RAW),
    ],
)
def test_sniff(head: bytes, fmt: str) -> None:
    assert formats.sniff(head) == fmt


def _qcow2_header(size: int, backing: bytes = b"", incompatible: int = 0) -> bytes:
    h = bytearray(4096)
    struct.pack_into(">4sIQI", h, 0, b"QFI\xfb", 3, 512 if backing else 0, len(backing))
    struct.pack_into(">Q", h, 24, size)
    struct.pack_into(">Q", h, 72, incompatible)
    h[512 : 512 + len(backing)] = backing
    return bytes(h)


def test_qcow2_header_facts_and_refusals() -> None:
    assert formats.check_header(formats.QCOW2, _qcow2_header(10 * MiB)).virtual_size == 10 * MiB
    with pytest.raises(PermanentError) as e:
        formats.check_header(formats.QCOW2, _qcow2_header(MiB, b"base.qcow2"))
    assert e.value.reason == Reason.UNSAFE_IMAGE
    assert "backing file base.qcow2" in e.value.message and "qemu-img convert" in e.value.message
    with pytest.raises(PermanentError, match="external data file"):
        formats.check_header(formats.QCOW2, _qcow2_header(MiB, incompatible=0x4))


@pytest.mark.parametrize(
    ("data", "pct"),
    [
        (b"    (0.00/100%)\r", 0.0),
        (b"    (12.50/100%)\r    (13.01/100%)\r", 13.01),
        (b"    (100.00/100%)\r\n", 100.0),
        (b"no progress here", None),
    ],
)
def test_qemu_img_progress_regex(data: bytes, pct: float | None) -> None:
    assert qemu_img.parse_progress(data) == pct


def test_parse_checksum() -> None:
    assert streams.parse_checksum("SHA256:" + "AB" * 32) == ("sha256", "ab" * 32)
    assert streams.parse_checksum("md5:" + "0" * 32) == ("md5", "0" * 32)
    # the admission rule: four algorithms, their digest lengths
    for bad in ("sha256", "nope:abcd", "sha256:xyz", "sha256:", "sha256:abcd", "sha3_256:" + "0" * 64):
        with pytest.raises(PermanentError) as e:
            streams.parse_checksum(bad)
        assert e.value.reason == Reason.CONFIG_ERROR


def test_sizes() -> None:
    s = ImportSettings(source="http", image_size=1 << 30, data_dir="/x", filesystem_overhead=0.06)
    assert usable_size(s) == (int((1 << 30) / 1.06) // MiB) * MiB
    assert required_capacity(1 << 30, s) == 1086 * MiB  # 1024 MiB * 1.06 = 1085.44 -> 1086
    assert required_capacity(1, ImportSettings(source="http", volume_mode=BLOCK, block_device="/d")) == MiB
    e = TooSmallError(2 << 30, 1 << 30, 2172 * MiB)
    assert e.reason == Reason.TOO_SMALL
    # an exact quantity (2.1 GiB would be too little: following the advice must succeed)
    assert e.message == (
        "DataVolume too small: image virtual size 2.0 GiB, usable 1.0 GiB; request at least 2172Mi"
    )


def test_progress_reporter_throttles_and_counts_resumes(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "progress.json")
    r = ProgressReporter(path, min_interval=3600)
    r.update(1, 100)
    first = Progress.read(path)
    assert first is not None and first.bytes_done == 1
    r.update(50, 100)  # throttled
    assert Progress.read(path).bytes_done == 1  # type: ignore[union-attr]
    r.update(60, 100, stage="Converting")  # a stage change is written at once
    assert Progress.read(path).stage == "Converting"  # type: ignore[union-attr]
    r.update(70, 100, stage="Converting")
    r.resumed()
    p = Progress.read(path)
    assert p is not None and p.resumes == 1 and p.bytes_done == 70
    r.update(80, 100, stage="Converting")
    r.flush()
    assert json.loads(pathlib.Path(path).read_text())["bytes_done"] == 80
    ProgressReporter(None).update(1, 2)  # no file: no error


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = kind
    m.linkname = link
    return m


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_member("/etc/passwd"), "absolute"),
        (_member("a/../../x"), "'..'"),
        (_member("dev", tarfile.CHRTYPE), "device"),
        (_member("fifo", tarfile.FIFOTYPE), "device"),
        (_member("l", tarfile.SYMTYPE, "/etc/shadow"), "symlink"),
        (_member("d/l", tarfile.SYMTYPE, "../../x"), "symlink"),
        (_member("h", tarfile.LNKTYPE, "../x"), "hard link"),
    ],
)
def test_tar_member_refusals(member: tarfile.TarInfo, why: str) -> None:
    with pytest.raises(PermanentError, match=why) as e:
        archive.check_member(member)
    assert e.value.reason == Reason.UNSAFE_IMAGE
    assert repr(member.name) in e.value.message


def test_tar_member_allowed() -> None:
    for m in (_member("a/b"), _member("d/l", tarfile.SYMTYPE, "../b"), _member("h", tarfile.LNKTYPE, "a/b")):
        archive.check_member(m)


def test_peek_replays_head() -> None:
    p = streams.Peek(_Bytes(b"abcdef" * 1000), size=10)
    assert p.head == b"abcdefabcd"
    out = bytearray()
    buf = memoryview(bytearray(7))
    while n := p.readinto(buf):
        out += buf[:n]
    assert bytes(out) == b"abcdef" * 1000
