"""The data path's bounds against hostile and degenerate sources (issue 9: holes 3 and 8).

A qcow2 whose tables sit far behind zero padding, a decompression bomb after the last table,
compressed clusters that overlap, an empty source, HTML behind a prologue and a compressed
stream far larger than the volume: each ends Failed with a reason and a message a user can act
on, and the disk the data path uses (target, spool, scratch) stays bounded by the volume. Legit
images whose tables come after their data still import.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import zstandard

from cdi.api.contract import ImportSettings, Outcome, Reason, WorkerResult
from cdi.common.units import MiB
from cdi.datapath import processor, qcow2stream, sparse
from cdi.datapath.filesource import FileSource
from cdi.datapath.progress import ProgressReporter
from tests.peers import images
from tests.peers.qcow2craft import COMPRESSED, Craft, to_zst, zeros_zst

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

GiB = 1 << 30
CAPACITY = 8 * MiB  # usable: round_down(8 MiB / 1.06, 1 MiB) = 7 MiB
USABLE = 7 * MiB
CS = 1 << 16


# --- helpers ----------------------------------------------------------------------------------


class MeasuredSpool(qcow2stream.Spool):
    """A spool that remembers the most it covered and allocated at any time."""

    made: ClassVar[list[MeasuredSpool]] = []

    def __init__(self, make_path: Callable[[], str]) -> None:
        super().__init__(make_path)
        self.max_covered = 0
        self.max_allocated = 0
        MeasuredSpool.made.append(self)

    def put(self, offset: int, view: memoryview) -> None:
        super().put(offset, view)
        self.max_covered = max(self.max_covered, self.covered)
        self.max_allocated = max(self.max_allocated, self.allocated)


@pytest.fixture
def spools(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MeasuredSpool]]:
    MeasuredSpool.made = []
    monkeypatch.setattr(qcow2stream, "Spool", MeasuredSpool)
    yield MeasuredSpool.made


def settings(vol: Path, **kw: object) -> ImportSettings:
    base: dict[str, object] = dict(source="http", image_size=CAPACITY, data_dir=str(vol))
    base.update(kw)
    return ImportSettings(**base)  # type: ignore[arg-type]


def run(path: Path | str, s: ImportSettings, supports_range: bool = True) -> WorkerResult:
    r = processor.run(FileSource(str(path), supports_range), s, ProgressReporter(None))
    WorkerResult.from_json(r.to_json())
    return r


def assert_failed(vol: Path, r: WorkerResult, reason: str, *words: str) -> None:
    assert r.outcome == Outcome.PERMANENT, r
    assert r.reason == reason, r
    for w in words:
        assert w in r.message, r.message
    assert os.listdir(vol) == []  # no disk.img, no .part, no scratch or spool left behind


def feed_zst(dec: qcow2stream.Decoder, path: Path, chunk: int = 1 << 20) -> None:
    """Feed the decompressed content of a .zst file to ``dec`` in chunks."""
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
        while True:
            b = r.read(chunk)
            if not b:
                break
            dec.feed(dec.pos, memoryview(b))


def decoder(tmp_path: Path, head: bytes, capacity: int | None = None) -> tuple[qcow2stream.Decoder, MeasuredSpool]:
    h = qcow2stream.parse_header(head)
    target = sparse.Target.create_file(str(tmp_path / "out.raw"), h.size)
    spool = MeasuredSpool(lambda: str(tmp_path / "spool"))
    return qcow2stream.Decoder(h, target, spool, capacity), spool


def sha(path: Path | str, size: int) -> str:
    return images.sha256_of(str(path), size)


# --- crafted images ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def far_l2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 7 MiB qcow2 whose only L2 table (and data) sit 1 GiB into the file, behind zeros."""
    d = tmp_path_factory.mktemp("far")
    c = Craft(USABLE, l2={0: GiB})
    c.map(0, GiB + CS, random.Random(1).randbytes(CS))
    c.write(str(d / "far.qcow2"))
    size = to_zst(str(d / "far.qcow2"), str(d / "far.qcow2.zst"))
    assert size < 200_000  # a tiny download
    return d / "far.qcow2.zst"


@pytest.fixture(scope="module")
def trailing_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A legit 4 MiB qcow2, then 1 GiB of zeros after its last cluster (compressed: ~40 KB)."""
    d = tmp_path_factory.mktemp("trail")
    raw = d / "src.raw"
    images.make_raw(str(raw), 4 * MiB, seed=8)
    q = d / "img.qcow2"
    images.convert(str(raw), str(q), "qcow2")
    to_zst(str(q), str(d / "bomb.qcow2.zst"), length=GiB)
    return d / "bomb.qcow2.zst"


def test_far_l2_table_behind_zero_padding_is_refused_at_once(
    far_l2: Path, vol: Path, spools: list[MeasuredSpool]
) -> None:
    r = run(far_l2, settings(vol))
    assert_failed(vol, r, Reason.INVALID_IMAGE, "an L2 table at byte 1073741824 (1.0 GiB)", "qemu-img convert")
    assert r.details["path"] == "qcow2-stream"
    # refused when the L1 table was parsed: nothing spooled, the padding never decompressed
    assert all(s.max_allocated <= CS and s.max_covered < MiB for s in spools)  # the header cluster


def test_far_l2_decoder_stops_at_the_l1_table(far_l2: Path, tmp_path: Path) -> None:
    with open(far_l2, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as rd:
        head = rd.read(65536)
    dec, spool = decoder(tmp_path, head)
    try:
        too_far = r"an L2 table at byte 1073741824 .*, past the .* that a qcow2 image of up to 7.0 MiB"
        with pytest.raises(qcow2stream.Qcow2Error, match=too_far):
            feed_zst(dec, far_l2, chunk=4096)
        assert dec.pos <= 3 * CS  # the header and the L1 table, no more
        assert spool.max_allocated <= CS
    finally:
        dec.close()
        spool.close()


def test_far_l1_table_is_refused_before_reading(tmp_path: Path) -> None:
    c = Craft(USABLE, l1_offset=4 * GiB, l2={0: 4 * GiB + CS})
    c.write(str(tmp_path / "l1.qcow2"))
    with open(tmp_path / "l1.qcow2", "rb") as f:
        head = f.read(65536)
    with pytest.raises(qcow2stream.Qcow2Error, match=r"its L1 table at byte 4294967296 \(4.0 GiB\)"):
        decoder(tmp_path, head)


def test_zero_padding_before_the_tables_stays_a_hole_in_the_spool(
    tmp_path: Path, vol: Path, spools: list[MeasuredSpool]
) -> None:
    """Tables after 18 MiB of zeros (inside the limit): the spool covers them but allocates no zeros."""
    data = random.Random(3).randbytes(CS)
    c = Craft(4 * MiB, l1_offset=18 * MiB, l2={0: 18 * MiB + CS})
    c.map(3 * CS, 2 * MiB, data)  # data before its table: kept in the spool, then served from it
    c.write(str(tmp_path / "pad.qcow2"))
    r = run(tmp_path / "pad.qcow2", settings(vol))
    assert r.outcome == Outcome.SUCCEEDED, r.message
    expected = bytearray(USABLE)
    expected[3 * CS : 4 * CS] = data
    assert (vol / "disk.img").read_bytes() == expected
    (s,) = spools
    assert s.max_covered >= 18 * MiB  # every byte before the tables counted...
    assert s.max_allocated <= 2 * CS  # ...but only the data cluster was written
    assert "scratch space" in r.scratch_reason


def test_junk_before_the_tables_is_bounded_by_the_volume(tmp_path: Path) -> None:
    """Random junk up to the tables, then more past the limit: the spool never exceeds the limit,
    and the stream is not read past it."""
    h = qcow2stream.Header(3, 16, USABLE, 0, 1, 0, 0, 0, 0)
    limit = qcow2stream.max_file_size(h, USABLE)
    tables = (limit - 4 * CS) // CS * CS
    c = Craft(USABLE, l1_offset=tables, l2={0: tables + CS})
    c.blobs[CS] = random.Random(4).randbytes(tables - CS)  # junk between the header and the tables
    c.blobs[tables + 2 * CS] = random.Random(5).randbytes(8 * MiB)  # and on past the limit
    c.write(str(tmp_path / "junk.qcow2"))
    data = (tmp_path / "junk.qcow2").read_bytes()
    dec, spool = decoder(tmp_path, data[:65536], USABLE)
    assert dec.limit == limit
    try:
        with pytest.raises(qcow2stream.Qcow2Error, match="goes on past the"):
            for pos in range(0, len(data), 1 << 20):
                dec.feed(pos, memoryview(data)[pos : pos + (1 << 20)])
        assert dec.pos <= limit
        assert spool.max_covered <= limit and spool.max_allocated <= limit + CS
    finally:
        dec.close()
        spool.close()


def test_decompression_bomb_after_the_last_table(trailing_bomb: Path, tmp_path: Path, vol: Path) -> None:
    bomb = trailing_bomb
    r = run(bomb, settings(vol))
    assert_failed(vol, r, Reason.INVALID_IMAGE, "goes on past the", "qemu-img snapshot -l")
    # the decoder got all the data, then read on only up to the limit
    with open(bomb, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as rd:
        head = rd.read(65536)
    dec, spool = decoder(tmp_path, head, USABLE)
    try:
        with pytest.raises(qcow2stream.Qcow2Error, match="goes on past the"):
            feed_zst(dec, bomb)
        assert dec.pos <= dec.limit < 32 * MiB
        assert spool.max_allocated <= MiB  # the header and refcount clusters, never the zeros
    finally:
        dec.close()
        spool.close()


def test_overlapping_compressed_clusters_are_refused(tmp_path: Path) -> None:
    """8192 compressed clusters that all start in the same 64 KiB would be collected at once
    (a GiB of memory): the decoder refuses them past MAX_BUFFERED."""
    size = 512 * MiB
    c = Craft(size, l2={0: 2 * CS})
    for j in range(CS // 8):  # every entry: 256 sectors from host 3 * CS + j
        c.entries[(0, j)] = COMPRESSED | (255 << (62 - 8)) | (3 * CS + j)
    c.blobs[3 * CS] = random.Random(6).randbytes(3 * CS)
    c.write(str(tmp_path / "cz.qcow2"))
    data = (tmp_path / "cz.qcow2").read_bytes()
    dec, spool = decoder(tmp_path, data[:65536])
    try:
        with pytest.raises(qcow2stream.Qcow2Error, match="overlap"):
            for pos in range(0, len(data), CS):  # all of them straddle a chunk boundary
                dec.feed(pos, memoryview(data)[pos : pos + CS])
    finally:
        dec.close()
        spool.close()


def test_l1_entries_sharing_an_l2_table_are_refused(tmp_path: Path) -> None:
    c = Craft(2 * GiB, cluster_bits=12, l2={0: 4 * 4096, 1: 4 * 4096})
    c.write(str(tmp_path / "dup.qcow2"))
    data = (tmp_path / "dup.qcow2").read_bytes()
    dec, spool = decoder(tmp_path, data[:4096])
    try:
        with pytest.raises(qcow2stream.Qcow2Error, match="same L2 table"):
            dec.feed(0, memoryview(data))
    finally:
        dec.close()
        spool.close()


# --- legit images with tables at the end ------------------------------------------------------


@pytest.mark.parametrize("how", ["resize", "amend"])
def test_legit_tables_after_the_data_import_within_the_bound(
    tmp_path: Path, vol: Path, spools: list[MeasuredSpool], how: str
) -> None:
    raw = tmp_path / "src.raw"
    images.make_raw(str(raw), 6 * MiB, seed=9)
    src = tmp_path / "img.qcow2"
    if how == "resize":  # the L1 table moves to the end, after every L2 table and cluster
        images.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", str(raw), str(src)])
        images.run(["qemu-img", "resize", "-q", str(src), "64M"])
        images.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 60M 64k", str(src)])
    else:  # a v2 image amended to v3, grown and written: new tables after the old data
        images.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=0.10", str(raw), str(src)])
        images.run(["qemu-img", "amend", "-f", "qcow2", "-o", "compat=1.1", str(src)])
        images.run(["qemu-img", "resize", "-q", str(src), "64M"])
        images.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5b 40M 1M", str(src)])
    ref = tmp_path / "ref.raw"
    images.run(["qemu-img", "convert", "-O", "raw", str(src), str(ref)])
    s = settings(vol, image_size=72 * MiB)  # usable 67 MiB
    r = run(src, s)
    assert r.outcome == Outcome.SUCCEEDED, r.message
    assert r.details["path"] == "qcow2-stream"
    assert sha(vol / "disk.img", 64 * MiB) == sha(ref, 64 * MiB)
    h = qcow2stream.parse_header(src.read_bytes()[:65536])
    limit = qcow2stream.max_file_size(h, processor.usable_size(s))
    assert os.path.getsize(src) < limit
    for sp in spools:
        assert sp.max_covered <= os.path.getsize(src) <= limit
        assert sp.max_allocated <= os.path.getsize(src)
    if how == "resize":
        assert "scratch space" in r.scratch_reason and spools and spools[0].max_covered > MiB


def test_snapshot_image_larger_than_the_limit_says_how_to_fix_it(tmp_path: Path, vol: Path) -> None:
    """Internal snapshots can make a legit file longer than the volume needs; compressed, it is
    decoded in one pass and fails with advice (uncompressed with Range it goes through nbdkit)."""
    raw = tmp_path / "src.raw"
    images.make_raw(str(raw), 24 * MiB, seed=10)
    src = tmp_path / "snap.qcow2"
    images.convert(str(raw), str(src), "qcow2")
    for n in (1, 2):  # each snapshot keeps the clusters the next full rewrite replaces
        images.run(["qemu-img", "snapshot", "-c", f"s{n}", str(src)])
        images.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {n} 0 24M", str(src)])
    images.compress(str(src), str(src) + ".zst", "zst")
    assert os.path.getsize(src) > 60 * MiB
    r = run(str(src) + ".zst", settings(vol, image_size=26 * MiB))  # usable 24 MiB
    assert_failed(vol, r, Reason.INVALID_IMAGE, "internal snapshots", "qemu-img convert -O qcow2")


# --- empty sources ----------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["kubevirt", "archive"])
@pytest.mark.parametrize("comp", ["", "gz", "zst", "xz"])
def test_empty_source_fails(tmp_path: Path, vol: Path, content_type: str, comp: str) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    src = str(empty)
    if comp:
        images.compress(src, f"{src}.{comp}", comp)
        src = f"{src}.{comp}"
    r = run(src, settings(vol, content_type=content_type))
    words = ("decompresses to nothing (0 bytes)",) if comp else ("the source is empty (0 bytes)",)
    assert_failed(vol, r, Reason.NOT_AN_IMAGE, *words, "check that the URL serves the image file")


def test_empty_source_without_range_fails(tmp_path: Path, vol: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    r = run(tmp_path / "empty", settings(vol), supports_range=False)
    assert_failed(vol, r, Reason.NOT_AN_IMAGE, "empty (0 bytes)")


# --- HTML -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "page",
    [
        b"\xef\xbb\xbf<!DOCTYPE html>\n<html><body>Sign in</body></html>\n",
        b"<!-- cache miss -->\n<html><body>Not found</body></html>\n",
        b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
        b'"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n<html xmlns="http://www.w3.org/1999/xhtml"></html>\n',
        "\ufeff<!DOCTYPE html><html><body>UTF-16</body></html>".encode("utf-16-le"),
    ],
)
def test_html_behind_a_prologue_is_not_an_image(tmp_path: Path, vol: Path, page: bytes) -> None:
    (tmp_path / "page").write_bytes(page * 50)
    r = run(tmp_path / "page", settings(vol))
    assert_failed(vol, r, Reason.NOT_AN_IMAGE, "HTML page")
    images.compress(str(tmp_path / "page"), str(tmp_path / "page.gz"), "gz")
    assert_failed(vol, run(tmp_path / "page.gz", settings(vol)), Reason.NOT_AN_IMAGE, "HTML page")


# --- streams larger than the volume -------------------------------------------------------------


def test_overflow_reports_the_true_size(tmp_path: Path, vol: Path) -> None:
    big = tmp_path / "big.raw.zst"
    zeros_zst(str(big), 4 * GiB)
    r = run(big, settings(vol))
    assert_failed(vol, r, Reason.TOO_SMALL, "image virtual size 4.0 GiB", "request at least 4342Mi")
    assert r.virtual_size == 4 * GiB and r.required_capacity == 4342 * MiB  # 4096 MiB * 1.06, rounded up
    # following the advice works: the capacity it names holds the image
    assert processor.usable_size(settings(vol, image_size=4342 * MiB)) >= 4 * GiB


@pytest.mark.parametrize(("comp", "hint"), [("zst", "zstd -lv"), ("gz", "gzip -l` is wrong above 4 GiB"),
                                            ("xz", "xz -l")])
def test_overflow_past_the_count_budget_says_more_than(
    tmp_path: Path, vol: Path, monkeypatch: pytest.MonkeyPatch, comp: str, hint: str
) -> None:
    monkeypatch.setattr(processor, "COUNT_BYTES", 16 * MiB)
    raw = tmp_path / "big.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
    images.compress(str(raw), f"{raw}.{comp}", comp)
    r = run(f"{raw}.{comp}", settings(vol))
    assert_failed(vol, r, Reason.TOO_SMALL, "the image is more than", "counting stopped after 16.0 MiB", hint)
    assert "request at least" not in r.message
    assert r.required_capacity is None and r.virtual_size is not None and 16 * MiB < r.virtual_size < 64 * MiB


def test_overflow_counting_has_a_time_budget(tmp_path: Path, vol: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processor, "COUNT_SECONDS", 0.0)
    big = tmp_path / "big.raw.zst"
    zeros_zst(str(big), 64 * MiB)
    r = run(big, settings(vol))
    assert_failed(vol, r, Reason.TOO_SMALL, "counting stopped after 0s", "zstd -lv")


def padded_zst(tmp_path: Path, fmt: str, seed: int) -> str:
    """A 4 MiB image of ``fmt`` padded with zeros to 100 MiB, as .zst."""
    raw = tmp_path / "src.raw"
    images.make_raw(str(raw), 4 * MiB, seed=seed)
    img = tmp_path / f"img.{fmt}"
    images.convert(str(raw), str(img), fmt)
    with open(img, "r+b") as f:
        f.truncate(100 * MiB)
    images.compress(str(img), f"{img}.zst", "zst")
    return f"{img}.zst"


def test_scratch_overflow_of_a_padded_container_is_invalid(tmp_path: Path, vol: Path) -> None:
    """A vmdk whose header says 4 MiB, padded with 96 MiB of zeros: more than scratch_limit."""
    assert processor.scratch_limit(USABLE) < 100 * MiB
    r = run(padded_zst(tmp_path, "vmdk", 12), settings(vol))
    assert_failed(vol, r, Reason.INVALID_IMAGE, "the vmdk image file is 100.0 MiB", "virtual size 4.0 MiB")


def test_scratch_overflow_of_a_vhdx_says_how_to_learn_its_size(tmp_path: Path, vol: Path) -> None:
    """A vhdx's header does not tell its virtual size: the message says how to find out."""
    r = run(padded_zst(tmp_path, "vhdx", 14), settings(vol))
    assert_failed(vol, r, Reason.TOO_SMALL, "the vhdx image file is 100.0 MiB", "qemu-img info <file>",
                  "if not, the file is padded")
    assert r.required_capacity is None and "request at least" not in r.message


def test_spool_reads_back_what_it_kept(tmp_path: Path) -> None:
    """Zero runs are holes, data is kept, a run that ends in zeros still reads back in full."""
    sp = qcow2stream.Spool(lambda: str(tmp_path / "spool"))
    try:
        rnd = random.Random(13)
        data = rnd.randbytes(1000) + bytes(300_000) + rnd.randbytes(70_000) + bytes(200_000)
        sp.put(5000, memoryview(data))
        assert sp.covered == len(data)
        assert sp.get(5000, 5000 + len(data)) == data
        assert sp.allocated <= 4 * 65536 + 2 * 4096
        assert hashlib.sha256(sp.get(6000, 306_000)).digest() == hashlib.sha256(bytes(300_000)).digest()
    finally:
        sp.close()
    assert not (tmp_path / "spool").exists()


def test_max_file_size_holds_real_images(tmp_path: Path) -> None:
    """qemu-img's own layouts (metadata preallocated, 512-byte clusters, full preallocation) fit."""
    for opts in (["cluster_size=512", "preallocation=metadata"], ["preallocation=metadata"],
                 ["preallocation=falloc", "cluster_size=2M"],
                 ["refcount_bits=64", "cluster_size=512", "preallocation=metadata"]):
        path = tmp_path / "x.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", ",".join(opts), str(path), "8M"], check=True)
        data = path.read_bytes()
        h = qcow2stream.parse_header(data[:65536])
        assert len(data) <= qcow2stream.max_file_size(h, h.size), opts
        (refcount_order,) = struct.unpack_from(">I", data, 96)
        assert refcount_order <= 6


def test_scattered_data_behind_its_tables_is_refused_past_the_pending_cap(
    tmp_path: Path, vol: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every table first, then data scattered so that no two clusters coalesce: the needs known at
    once are capped (the cap is lowered here; it is a million in real life)."""
    monkeypatch.setattr(qcow2stream, "MAX_PENDING", 8)
    c = Craft(4 * MiB, l1_offset=CS, l2={0: 2 * CS})
    rnd = random.Random(6)
    for i in range(16):  # guest clusters 0, 2, 4, ... stored in reverse order: nothing coalesces
        c.map(2 * i * CS, (40 - 2 * i) * CS, rnd.randbytes(CS))
    c.write(str(tmp_path / "scattered.qcow2"))
    r = run(tmp_path / "scattered.qcow2", settings(vol))
    assert_failed(vol, r, "InvalidImage", "separate pieces of data", "qemu-img convert -O qcow2")
    monkeypatch.setattr(qcow2stream, "MAX_PENDING", 64)
    r = run(tmp_path / "scattered.qcow2", settings(vol))
    assert r.outcome == Outcome.SUCCEEDED, r.message


def test_a_device_target_reads_zeros_where_no_cluster_was_written(tmp_path: Path) -> None:
    """A target that is not known to be zero (a device) holds old data: it is zeroed first."""
    c = Craft(2 * MiB, l1_offset=CS, l2={0: 2 * CS})
    data = random.Random(7).randbytes(CS)
    c.map(5 * CS, 3 * CS, data)
    c.write(str(tmp_path / "one.qcow2"))
    out = tmp_path / "old.raw"
    out.write_bytes(b"\xaa" * (2 * MiB))  # stale bytes everywhere
    fd = os.open(out, os.O_RDWR)
    target = sparse.Target(str(out), fd, 2 * MiB, False, False, False)  # not prezeroed, like a device
    try:
        head = (tmp_path / "one.qcow2").read_bytes()
        dec = qcow2stream.Decoder(qcow2stream.parse_header(head[:65536]), target,
                                  qcow2stream.Spool(lambda: str(tmp_path / "spool")))
        dec.feed(0, memoryview(head))
        dec.finish()
        dec.close()
    finally:
        target.close()
    expected = bytearray(2 * MiB)
    expected[5 * CS : 6 * CS] = data
    assert out.read_bytes() == expected


def test_a_zstd_cluster_that_inflates_to_a_gigabyte_costs_one_cluster(tmp_path: Path) -> None:
    """A compressed cluster holds at most one cluster: a zstd frame of 1 GiB of zeros (32 KB) in
    place of a real cluster is cut at the cluster size while inflating, not after."""
    raw = tmp_path / "one.raw"
    data = random.Random(8).randbytes(40 << 10)  # compresses, but to more than the bomb's 32 KB
    raw.write_bytes(data + bytes(MiB - len(data)))
    img = tmp_path / "bomb.qcow2"
    images.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd",
                str(raw), str(img)])
    blob = bytearray(img.read_bytes())
    l1_offset, = struct.unpack_from(">Q", blob, 40)
    l2_offset = struct.unpack_from(">Q", blob, l1_offset)[0] & qcow2stream.OFFSET_MASK
    entry, = struct.unpack_from(">Q", blob, l2_offset)
    assert entry & COMPRESSED
    x = 62 - (16 - 8)
    coff = entry & ((1 << x) - 1)
    room = (((entry >> x) & 0xFF) + 1) * 512 - (coff & 511)
    small_window = zstandard.ZstdCompressionParameters.from_level(19, window_log=17)
    bomb = zstandard.ZstdCompressor(compression_params=small_window).compress(bytes(1 << 30))
    assert len(bomb) <= room  # the bomb fits where the cluster's compressed data was
    blob[coff : coff + len(bomb)] = bomb
    img.write_bytes(blob)
    vol = tmp_path / "v"
    vol.mkdir()
    outcome, maxrss_kib = _import_in_a_child(img, vol)
    assert outcome == "Succeeded"
    assert int(maxrss_kib) < 200 * 1024  # KiB: nowhere near the gigabyte the frame stands for
    assert (vol / "disk.img").read_bytes()[:MiB] == bytes(MiB)  # the cluster reads as the frame's zeros
    # a frame that asks for a 128 MiB window (zstd would allocate it) is refused, not decoded
    wide = zstandard.ZstdCompressor(level=19).compress(bytes(1 << 30))
    blob[coff : coff + len(wide)] = wide
    img.write_bytes(blob)
    (vol / "disk.img").unlink()
    outcome, maxrss_kib = _import_in_a_child(img, vol)
    assert outcome == "PermanentFailure" and int(maxrss_kib) < 200 * 1024


def _import_in_a_child(img: Path, vol: Path) -> tuple[str, str]:
    """Import ``img`` into ``vol`` in a child process: (its outcome, its peak RSS in KiB: VmHWM, not
    ru_maxrss, which also counts the parent's memory at the fork)."""
    probe = (
        "import sys\n"
        "from cdi.api.contract import ImportSettings\n"
        "from cdi.datapath import processor\n"
        "from cdi.datapath.filesource import FileSource\n"
        "from cdi.datapath.progress import ProgressReporter\n"
        f"r = processor.run(FileSource({str(img)!r}), ImportSettings(source='http', image_size={CAPACITY}, "
        f"data_dir={str(vol)!r}), ProgressReporter(None))\n"
        "hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "print(r.outcome, hwm)\n"
    )
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.returncode == 0, p.stderr
    outcome, maxrss_kib = p.stdout.split()
    return outcome, maxrss_kib
