"""imagecheck: our own header checks on crafted bytes, and qemu-img-made images that must pass."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from cdi.api.contract import Reason
from cdi.common.errors import PermanentError
from cdi.datapath import formats, imagecheck
from cdi.datapath.qemu_img import ImageInfo
from tests.peers import crafted

HEAD = formats.HEAD_SIZE
SANE = (
    b'# Disk DescriptorFile\nversion=1\nCID=6ae8d056\nparentCID=ffffffff\ncreateType="monolithicSparse"\n\n'
    b'# Extent description\nRW 6144 SPARSE "disk.vmdk"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = "ide"\n'
)


def refused(fn: Callable[[], object], *needles: str) -> str:
    with pytest.raises(PermanentError) as e:
        fn()
    assert e.value.reason == Reason.UNSAFE_IMAGE, e.value.message
    assert "CDI imports self-contained images only" in e.value.message
    for n in needles:
        assert n in e.value.message, e.value.message
    return e.value.message


def vmdk(desc: bytes, capacity: int = 6144) -> bytes:
    return crafted.sparse_vmdk_with_descriptor(desc, capacity)


# --- images qemu-img makes pass ----------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    d = tmp_path_factory.mktemp("made")
    raw = d / "r.raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(256 * 1024))
        f.seek(3 << 20)
        f.write(b"end")
    for name, args in {
        "sparse.vmdk": ["-O", "vmdk"],
        "stream.vmdk": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
        "img.vdi": ["-O", "vdi"],
        "fixed.vdi": ["-O", "vdi", "-o", "static=on"],
        "dyn.vhd": ["-O", "vpc", "-o", "subformat=dynamic"],
        "fixed.vhd": ["-O", "vpc", "-o", "subformat=fixed"],
        "img.vhdx": ["-O", "vhdx"],
        "img.qcow2": ["-O", "qcow2"],
        "v2.qcow2": ["-O", "qcow2", "-o", "compat=0.10"],
        "xl2.qcow2": ["-O", "qcow2", "-o", "extended_l2=on"],
        "c.qcow2": ["-O", "qcow2", "-c"],
        "bitmap.qcow2": ["-O", "qcow2"],
    }.items():
        subprocess.run(["qemu-img", "convert", "-f", "raw", *args, str(raw), str(d / name)], check=True)
    subprocess.run(["qemu-img", "bitmap", "--add", str(d / "bitmap.qcow2"), "b0"], check=True)
    return d


def head_of(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD)


def file_reader(path: Path) -> imagecheck.ReadAt:
    data = path.read_bytes()
    return lambda off, n: data[off:off + n]


@pytest.mark.parametrize("name", ["sparse.vmdk", "stream.vmdk", "img.vdi", "fixed.vdi", "dyn.vhd", "fixed.vhd",
                                  "img.vhdx", "img.qcow2", "v2.qcow2", "xl2.qcow2", "c.qcow2", "bitmap.qcow2"])
def test_qemu_img_made_images_pass(made: Path, name: str) -> None:
    head = head_of(made / name)
    fmt = formats.sniff(head)
    assert fmt in formats.CONTAINERS or name == "fixed.vhd"
    formats.check_header(fmt, head)
    imagecheck.check_head(fmt, head)
    if fmt == formats.VHDX:
        imagecheck.check_vhdx(file_reader(made / name))


def test_qemu_descriptors_parse_as_one_sparse_extent(made: Path) -> None:
    for name, ctype in (("sparse.vmdk", "monolithicSparse"), ("stream.vmdk", "streamOptimized")):
        d = imagecheck.parse_descriptor(crafted.embedded_descriptor(str(made / name)))
        assert d.create_type == ctype and d.create_types == 1 and d.parent_cid == 0xFFFFFFFF
        assert [(e.access, e.type, e.filename, e.matches) for e in d.extents] == [("RW", "SPARSE", name, 4)]


# --- vmdk --------------------------------------------------------------------------------------


def test_the_reported_attack_capacity_zero_with_an_embedded_flat_descriptor() -> None:
    img = vmdk(crafted.flat_descriptor("/etc/shadow", 4), capacity=0)
    msg = refused(lambda: imagecheck.check_head(formats.VMDK, img), "capacity 0", "monolithicFlat",
                  "FLAT '/etc/shadow' 0", "qemu-img convert")
    assert msg.startswith("the vmdk header says capacity 0, so qemu would read its embedded descriptor")


def test_capacity_zero_is_refused_whatever_the_descriptor() -> None:
    refused(lambda: imagecheck.check_head(formats.VMDK, vmdk(SANE, capacity=0)), "capacity 0")
    no_desc = crafted.vmdk_header(0, desc_offset=0, desc_size=0).ljust(HEAD, b"\0")
    refused(lambda: imagecheck.check_head(formats.VMDK, no_desc), "capacity 0")


def test_a_sane_descriptor_passes_also_with_blank_lines_and_crlf() -> None:
    imagecheck.check_head(formats.VMDK, vmdk(SANE))
    imagecheck.check_head(formats.VMDK, vmdk(SANE.replace(b"\n# Extent description\n", b"\n\n\n  \n")))
    imagecheck.check_head(formats.VMDK, vmdk(SANE.replace(b"\n", b"\r\n")))
    stream = SANE.replace(b"monolithicSparse", b"streamOptimized")
    imagecheck.check_head(formats.VMDK, vmdk(stream))
    # some exporters (VirtualBox OVA) mark the one extent of a streamOptimized vmdk read-only
    imagecheck.check_head(formats.VMDK, vmdk(stream.replace(b"RW 6144", b"RDONLY 6144")))


@pytest.mark.parametrize("ctype", ["monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "vmfs",
                                   "vmfsSparse", "seSparse", "fullDevice", "MonolithicSparse", ""])
def test_other_create_types_are_refused(ctype: str) -> None:
    desc = SANE.replace(b"monolithicSparse", ctype.encode())
    refused(lambda: imagecheck.check_head(formats.VMDK, vmdk(desc)), f"createType '{ctype}'")


@pytest.mark.parametrize("line", [
    b'RW 4 FLAT "/etc/shadow" 0',
    b'RW 4 VMFS "/dev/vda"',
    b'RW 4 VMFSSPARSE "other.vmdk"',
    b'RW 4 SESPARSE "other.vmdk"',
    b"RW 4 ZERO",
    b'NOACCESS 4 SPARSE "disk.vmdk"',
    b'Rw 4 SPARSE "disk.vmdk"',
    b'RW 0 SPARSE "disk.vmdk"',
    b'RW 4 SPARSE "disk.vmdk" 0',
])
def test_an_extent_other_than_one_rw_sparse_is_refused(line: bytes) -> None:
    desc = SANE.replace(b'RW 6144 SPARSE "disk.vmdk"', line)
    refused(lambda: imagecheck.check_head(formats.VMDK, vmdk(desc)), "extent(s)")


@pytest.mark.parametrize("extra", [
    b'RW 4 FLAT "/etc/shadow" 0',
    b' \t RW\t4 FLAT "/etc/shadow" 0',  # leading whitespace
    b'RW\n4\nFLAT\n"/etc/shadow"\n0',  # sscanf reads across newlines
    b'RW 4 SPARSE "disk-s002.vmdk"',  # twoGbMaxExtentSparse: a second sparse extent
    b'rw 4 flat "/etc/shadow" 0',  # a case qemu skips: refused anyway
])
def test_a_second_extent_is_refused_however_it_is_written(extra: bytes) -> None:
    desc = SANE.replace(b'SPARSE "disk.vmdk"\n', b'SPARSE "disk.vmdk"\n' + extra + b"\n")
    refused(lambda: imagecheck.check_head(formats.VMDK, vmdk(desc)), "lists 2 extent(s)")


def test_comments_do_not_count_as_extents_but_hidden_createtypes_do() -> None:
    commented = SANE.replace(b"# Extent description", b'# RW 4 FLAT "/etc/shadow" 0')
    imagecheck.check_head(formats.VMDK, vmdk(commented))
    # qemu's strstr takes the first "createType", even in a comment: two of them are refused
    twice = SANE.replace(b"version=1\n", b'version=1\n# createType="monolithicSparse"\n')
    refused(lambda: imagecheck.check_head(formats.VMDK, vmdk(twice.replace(b'createType="monolithicSparse"\n\n',
                                                                            b'createType="vmfs"\n\n'))), "createType")
    other_case = SANE.replace(b"version=1\n", b'version=1\nCREATETYPE="monolithicFlat"\n')
    refused(lambda: imagecheck.check_head(formats.VMDK, vmdk(other_case)), "2 createType entries")


def test_a_parent_is_refused() -> None:
    hint = SANE.replace(b"parentCID=ffffffff\n", b'parentCID=ffffffff\nparentFileNameHint="/var/lib/base.vmdk"\n')
    msg = refused(lambda: imagecheck.check_head(formats.VMDK, vmdk(hint)), "backing file", "/var/lib/base.vmdk")
    assert msg.startswith("image has a backing file ")
    cid = SANE.replace(b"parentCID=ffffffff", b"parentCID=1234abcd")
    refused(lambda: imagecheck.check_head(formats.VMDK, vmdk(cid)), "parentCID 1234abcd")
    bad = SANE.replace(b"parentCID=ffffffff", b"parentCID=zz")
    refused(lambda: imagecheck.check_head(formats.VMDK, vmdk(bad)), "parentCID unreadable")


def test_the_parent_area_qemu_reads_is_checked_wherever_the_descriptor_is() -> None:
    """qemu reads parentFileNameHint at offset 512 even when the header puts the descriptor elsewhere."""
    img = bytearray(HEAD)
    img[:512] = crafted.vmdk_header(6144, desc_offset=8, desc_size=20)
    img[8 * 512:8 * 512 + len(SANE)] = SANE
    imagecheck.check_head(formats.VMDK, bytes(img))
    img[512:600] = b'parentFileNameHint="/dev/vda"\n'.ljust(88, b"\0")
    refused(lambda: imagecheck.check_head(formats.VMDK, bytes(img)), "/dev/vda")


def test_descriptor_outside_the_head_or_missing_is_refused() -> None:
    img = bytearray(HEAD)
    img[:512] = crafted.vmdk_header(6144, desc_offset=127, desc_size=20)  # ends past 64 KiB
    refused(lambda: imagecheck.check_head(formats.VMDK, bytes(img)), "outside the first 64 KiB")
    img[:512] = crafted.vmdk_header(6144, desc_offset=0, desc_size=0)
    refused(lambda: imagecheck.check_head(formats.VMDK, bytes(img)), "no embedded descriptor")
    refused(lambda: imagecheck.check_head(formats.VMDK, vmdk(b"# Disk DescriptorFile\nversion=1\n")),
            "no createType")
    refused(lambda: imagecheck.check_head(formats.VMDK, b"KDMV" + bytes(20)), "truncated")


def test_descriptor_text_ends_at_the_first_nul() -> None:
    cut = SANE.replace(b"# Extent description", b"\0# Extent description")
    refused(lambda: imagecheck.check_head(formats.VMDK, vmdk(cut)), "lists 0 extent(s)")


def test_messages_show_attacker_text_bounded_and_printable() -> None:
    evil = "/tmp/" + "\x1b[31m" + "x" * 400
    msg = refused(lambda: imagecheck.check_head(formats.VMDK, vmdk(crafted.flat_descriptor(evil, 4), 0)))
    assert "\x1b" not in msg and "x" * 60 in msg and "x" * 100 not in msg


@pytest.mark.parametrize(("text", "matches", "fields"), [
    (b'RW 4 FLAT "/f" 0', 5, ("RW", 4, "FLAT", "/f", 0)),
    (b'RW 4 SPARSE "a b.vmdk"', 4, ("RW", 4, "SPARSE", "a b.vmdk", None)),
    (b"RW 4 ZERO", 3, ("RW", 4, "ZERO", None, None)),
    (b"RW x", 1, ("RW", None, "", None, None)),
    (b'RWRWRWRWRWRW 4 FLAT "/f" 0', 1, ("RWRWRWRWRW", None, "", None, None)),  # %10s stops after 10
    (b'RW +4 FLATFLATFLAT "/f" 0', 3, ("RW", 4, "FLATFLATFL", None, None)),
    (b'\n\n  RW\t-1 FLAT "/f"\n0', 5, ("RW", -1, "FLAT", "/f", 0)),
])
def test_extent_lines_scan_like_qemus_sscanf(text: bytes, matches: int, fields: tuple[object, ...]) -> None:
    found = imagecheck.scan_extent(text, 0)
    assert found is not None
    ext = found[1]
    assert ext.matches == matches
    assert (ext.access, ext.sectors, ext.type, ext.filename, ext.offset) == fields


# --- qcow2 -------------------------------------------------------------------------------------


def qcow2_head(extensions: list[tuple[int, bytes]], *, version: int = 3, cluster_bits: int = 16) -> bytes:
    header_len = 104 if version >= 3 else 72
    h = bytearray(2 * HEAD)
    struct.pack_into(">4sIQIIQ", h, 0, b"QFI\xfb", version, 0, 0, cluster_bits, 1 << 20)
    if version >= 3:
        struct.pack_into(">I", h, 100, header_len)
    off = header_len
    for magic, data in extensions:
        struct.pack_into(">II", h, off, magic, len(data))
        h[off + 8:off + 8 + len(data)] = data
        off += 8 + ((len(data) + 7) & ~7)
    struct.pack_into(">II", h, off, 0, 0)
    return bytes(h[:HEAD])


def test_a_data_file_extension_is_refused_even_without_the_bit() -> None:
    for version in (2, 3):
        head = qcow2_head([(0x6803F857, bytes(48)), (0x44415441, b"/dev/vda")], version=version)
        formats.check_header(formats.QCOW2, head)  # the bit is not set: the old check let it pass
        msg = refused(partial(imagecheck.check_head, formats.QCOW2, head), "'/dev/vda'", "data-file header extension")
        assert msg.startswith("image has an external data file ")


def test_known_qcow2_extensions_pass_and_the_end_marker_stops_the_walk() -> None:
    imagecheck.check_head(formats.QCOW2, qcow2_head([(0xE2792ACA, b"qcow2"), (0x6803F857, bytes(96)),
                                                     (0x23852875, bytes(24)), (0x12345678, b"unknown")]))
    head = bytearray(qcow2_head([]))
    head[120:128] = struct.pack(">II", 0x44415441, 4)  # after the end marker: qemu never reads it
    imagecheck.check_head(formats.QCOW2, bytes(head))


def test_extensions_past_the_head_are_refused() -> None:
    pad = [(0x11111111, bytes(16000))] * 5  # 80 KB of unknown extensions in a 2 MiB cluster
    refused(lambda: imagecheck.check_head(formats.QCOW2, qcow2_head(pad, cluster_bits=21)), "run past the first 64 KiB")
    refused(lambda: imagecheck.check_head(formats.QCOW2, qcow2_head([(0x11111111, bytes(70000))], cluster_bits=16)),
            "longer than the header cluster")


def test_qcow2_backing_and_data_file_bit_are_refused(made: Path, tmp_path: Path) -> None:
    child = tmp_path / "child.qcow2"
    crafted.qemu_img("create", "-f", "qcow2", "-b", str(made / "img.qcow2"), "-F", "qcow2", str(child))
    refused(lambda: formats.check_header(formats.QCOW2, head_of(child)), "backing file", str(made / "img.qcow2"))
    ext = tmp_path / "ext.qcow2"
    crafted.qcow2_with_data_file(str(ext), str(tmp_path / "data.raw"))
    refused(lambda: formats.check_header(formats.QCOW2, head_of(ext)), "external data file")
    refused(lambda: imagecheck.check_head(formats.QCOW2, head_of(ext)), str(tmp_path / "data.raw"))
    crafted.clear_qcow2_data_file_bits(str(ext))
    refused(lambda: imagecheck.check_head(formats.QCOW2, head_of(ext)), str(tmp_path / "data.raw"))


# --- vdi, vhd, vhdx ----------------------------------------------------------------------------


def copy(made: Path, name: str, tmp_path: Path) -> Path:
    out = tmp_path / name
    shutil.copyfile(made / name, out)
    return out


def test_vdi_differencing_and_parents_are_refused(made: Path, tmp_path: Path) -> None:
    p = copy(made, "img.vdi", tmp_path)
    crafted.vdi_differencing(str(p), uuid.UUID(int=1))
    refused(lambda: imagecheck.check_head(formats.VDI, head_of(p)), "differencing image")
    p = copy(made, "img.vdi", tmp_path)
    crafted.vdi_with_parent_uuid(str(p), uuid.UUID(int=7))
    refused(lambda: imagecheck.check_head(formats.VDI, head_of(p)), "parent image", str(uuid.UUID(int=7)))
    undo = bytearray(head_of(made / "img.vdi"))
    undo[0x4C:0x50] = struct.pack("<I", 3)
    refused(lambda: imagecheck.check_head(formats.VDI, bytes(undo)), "undo image")


def test_vhd_differencing_and_parent_locators_are_refused(made: Path, tmp_path: Path) -> None:
    p = copy(made, "dyn.vhd", tmp_path)
    crafted.vhd_differencing(str(p))
    refused(lambda: imagecheck.check_head(formats.VHD, head_of(p)), "differencing disk")
    p = copy(made, "dyn.vhd", tmp_path)
    crafted.vhd_with_parent_locator(str(p), "C:\\base.vhd")
    refused(lambda: imagecheck.check_head(formats.VHD, head_of(p)), "names a parent disk")
    far = bytearray(head_of(made / "dyn.vhd"))
    far[16:24] = struct.pack(">Q", 1 << 20)
    refused(lambda: imagecheck.check_head(formats.VHD, bytes(far)), "dynamic header lies outside")


@pytest.mark.parametrize(("has_parent", "locator", "needle"), [
    (True, False, "HasParent is set"), (False, True, "parent locator"), (True, True, "differencing image"),
])
def test_vhdx_differencing_is_refused(made: Path, tmp_path: Path, has_parent: bool, locator: bool,
                                      needle: str) -> None:
    p = copy(made, "img.vhdx", tmp_path)
    crafted.vhdx_differencing(str(p), has_parent=has_parent, locator=locator)
    imagecheck.check_head(formats.VHDX, head_of(p))  # the metadata lies beyond the head
    refused(lambda: imagecheck.check_vhdx(file_reader(p)), needle)


def test_vhdx_without_region_table_is_refused(made: Path) -> None:
    data = bytearray((made / "img.vhdx").read_bytes())
    for off in (192 * 1024, 256 * 1024):
        data[off:off + 4] = b"xxxx"
    refused(lambda: imagecheck.check_vhdx(lambda o, n: bytes(data[o:o + n])), "no region table")


# --- what qemu-img info says -------------------------------------------------------------------


def info(**kw: object) -> ImageInfo:
    base: dict[str, object] = dict(format="vmdk", virtual_size=1 << 20, filename="/run/cdi/1/image",
                                   extents=("/run/cdi/1/image",), create_type="monolithicSparse")
    base.update(kw)
    return ImageInfo(**base)  # type: ignore[arg-type]


def test_check_info() -> None:
    imagecheck.check_info(info(), formats.VMDK)
    imagecheck.check_info(info(format="qcow2", extents=(), create_type=None), formats.QCOW2)
    refused(lambda: imagecheck.check_info(info(extents=("/etc/shadow",)), formats.VMDK), "'/etc/shadow'")
    refused(lambda: imagecheck.check_info(info(extents=("/run/cdi/1/image", "/dev/vda")), formats.VMDK),
            "2 extent(s)")
    refused(lambda: imagecheck.check_info(info(extents=()), formats.VMDK), "0 extent(s)")
    refused(lambda: imagecheck.check_info(info(create_type="monolithicFlat"), formats.VMDK), "monolithicFlat")
    refused(lambda: imagecheck.check_info(info(backing_filename="base.qcow2"), formats.QCOW2), "backing file")
    refused(lambda: imagecheck.check_info(info(data_file="/dev/vda", extents=()), formats.QCOW2), "data file")


def test_repeated_vhdx_tables_cost_a_few_reads_not_millions(made: Path) -> None:
    """Each region table may list the metadata region once and the metadata its file parameters
    once (qemu refuses more too): a crafted header cannot multiply our reads (Range requests)."""
    data = bytearray((made / "img.vhdx").read_bytes())
    reads: list[tuple[int, int]] = []

    def read_at(off: int, n: int) -> bytes:
        reads.append((off, n))
        return bytes(data[off:off + n])

    imagecheck.check_vhdx(read_at)
    assert len(reads) <= 6
    table = 192 * 1024
    (count,) = struct.unpack_from("<I", data, table + 8)
    entries = [bytes(data[table + 16 + 32 * i: table + 48 + 32 * i]) for i in range(count)]
    meta = next(e for e in entries if e[:16] == imagecheck.VHDX_METADATA_REGION)
    data[table + 16 + 32 * count: table + 48 + 32 * count] = meta  # the metadata region listed twice
    struct.pack_into("<I", data, table + 8, count + 1)
    reads.clear()
    refused(lambda: imagecheck.check_vhdx(read_at), "lists the metadata region 2 times")
    assert len(reads) <= 2


def test_a_descriptor_of_blank_lines_is_scanned_in_linear_time() -> None:
    import time

    t = time.monotonic()
    assert imagecheck.parse_descriptor(b"\n" * 65536).extents == []
    d = imagecheck.parse_descriptor(b'RW 4 SPARSE "a.vmdk"\n' + b"\n" * 65536 + b'RW 8\n\n\nFLAT "/x" 0\n')
    assert [(e.sectors, e.type) for e in d.extents] == [(4, "SPARSE"), (8, "FLAT")]  # across lines, like sscanf
    assert time.monotonic() - t < 2.0  # quadratic was minutes at this size
