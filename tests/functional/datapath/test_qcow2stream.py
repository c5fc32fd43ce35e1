"""The streaming qcow2 decoder against images real qemu-img/qemu-io made, fed in odd chunk sizes."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
from pathlib import Path

import pytest

from cdi.common.units import MiB
from cdi.datapath import qcow2stream, sparse

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

SIZE = 24 * MiB


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


def _raw(path: Path, seed: int = 7) -> Path:
    """Mixed data: random, text-like, zero clusters, half-zero 4 KiB blocks, a hole and an odd tail."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for off in range(0, SIZE - 3 * MiB, 3 * MiB):
            kind = rnd.randrange(3)
            if kind == 0:
                data = rnd.randbytes(MiB + 4096)
            elif kind == 1:
                data = (b"the quick brown fox %d\n" % off) * 40000
            else:
                data = (rnd.randbytes(2048) + bytes(2048)) * 200
            f.seek(off + rnd.randrange(0, 64) * 4096)
            f.write(data[: 2 * MiB])
        f.seek(SIZE - 1000)
        f.write(b"tail" * 250)
    return path


def _sha(path: Path | str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left:
            b = f.read(min(left, MiB))
            if not b:
                h.update(bytes(left))
                break
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def _decode(src: Path, out: Path, spool_dir: Path, chunk: int | str = "random") -> qcow2stream.Decoder:
    data = src.read_bytes()
    header = qcow2stream.parse_header(data[:65536])
    target = sparse.Target.create_file(str(out), header.size)
    spool = qcow2stream.Spool(lambda: str(spool_dir / "spool"))
    dec = qcow2stream.Decoder(header, target, spool)
    try:
        rnd = random.Random(1)
        pos = 0
        view = memoryview(data)
        while pos < len(data):
            n = rnd.choice([1, 7, 512, 4096, 65535, 65536, 1 << 20, 3 << 20]) if chunk == "random" else int(chunk)
            n = min(n, len(data) - pos)
            dec.feed(pos, view[pos : pos + n])
            pos += n
        dec.finish()
        target.sync()
    finally:
        dec.close()
        target.close()
        spool.close()
    return dec


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _raw(tmp_path_factory.mktemp("q") / "src.raw")


CASES = {
    "default": ["-O", "qcow2"],
    "compressed": ["-O", "qcow2", "-c"],
    "zstd": ["-O", "qcow2", "-c", "-o", "compression_type=zstd"],
    "v2": ["-O", "qcow2", "-o", "compat=0.10"],
    "v2-compressed": ["-O", "qcow2", "-c", "-o", "compat=0.10"],
    "cluster512": ["-O", "qcow2", "-o", "cluster_size=512"],
    "cluster2M": ["-O", "qcow2", "-o", "cluster_size=2M"],
    "cluster4k-compressed": ["-O", "qcow2", "-c", "-o", "cluster_size=4096"],
    "prealloc-metadata": ["-O", "qcow2", "-o", "preallocation=metadata"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layouts_decode_to_the_same_bytes(raw: Path, tmp_path: Path, case: str) -> None:
    src = tmp_path / "img.qcow2"
    _run("qemu-img", "convert", "-f", "raw", *CASES[case], str(raw), str(src))
    out = tmp_path / "out.raw"
    dec = _decode(src, out, tmp_path)
    assert _sha(out, SIZE) == _sha(raw, SIZE)
    assert os.path.getsize(out) == SIZE
    # the data went straight to the target: at most the odd compressed cluster that shares a
    # host cluster with data before the next L2 table came back from the spool
    assert dec.spooled_used <= os.path.getsize(src) // 100
    # holes stay holes
    assert os.stat(out).st_blocks * 512 < SIZE * 0.75


@pytest.mark.parametrize("chunk", [512, 4096, 65536])
def test_compressed_clusters_that_start_before_their_table(raw: Path, tmp_path: Path, chunk: int) -> None:
    """With small clusters, a compressed cluster is often written before the L2 table that maps it,
    starting inside the last (rounded-up) sector of the compressed cluster before it."""
    src = tmp_path / "img.qcow2"
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "cluster_size=4096", str(raw), str(src))
    out = tmp_path / "out.raw"
    dec = _decode(src, out, tmp_path, chunk=chunk)
    assert _sha(out, SIZE) == _sha(raw, SIZE)
    assert dec.spooled_used > 0


def test_l1_after_the_data_goes_through_the_spool(raw: Path, tmp_path: Path) -> None:
    """Growing an image past its L1 table moves the table to the end of the file."""
    src = tmp_path / "img.qcow2"
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", str(raw), str(src))
    _run("qemu-img", "resize", str(src), "1G")
    _run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 900M 64k", str(src))
    out = tmp_path / "out.raw"
    dec = _decode(src, out, tmp_path)
    ref = tmp_path / "ref.raw"
    _run("qemu-img", "convert", "-O", "raw", str(src), str(ref))
    assert _sha(out, 1 << 30) == _sha(ref, 1 << 30)
    assert dec.spooled_used > 0


def test_clusters_written_out_of_order(tmp_path: Path) -> None:
    """qemu-io writes in a random order; discard and rewrite puts data before its table."""
    src = tmp_path / "img.qcow2"
    _run("qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=65536", str(src), "2G")
    rnd = random.Random(3)
    cmds = []
    for i in range(40):
        off = rnd.randrange(0, (2 << 30) // 65536) * 65536
        cmds += ["-c", f"write -P {i + 1} {off} {rnd.choice([4096, 65536, 196608])}"]
    cmds += ["-c", "discard 0 1G", "-c", "write -P 0x77 1500M 1M", "-c", "write -z 1600M 1M",
             "-c", "write -P 0x78 100M 64k"]
    _run("qemu-io", "-f", "qcow2", *cmds, str(src))
    out = tmp_path / "out.raw"
    _decode(src, out, tmp_path)
    ref = tmp_path / "ref.raw"
    _run("qemu-img", "convert", "-O", "raw", str(src), str(ref))
    assert _sha(out, 2 << 30) == _sha(ref, 2 << 30)


def test_internal_snapshot_data_is_not_current(raw: Path, tmp_path: Path) -> None:
    src = tmp_path / "img.qcow2"
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(src))
    _run("qemu-img", "snapshot", "-c", "before", str(src))
    _run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 2M", str(src))
    out = tmp_path / "out.raw"
    _decode(src, out, tmp_path, chunk=1 << 20)
    ref = tmp_path / "ref.raw"
    _run("qemu-img", "convert", "-O", "raw", str(src), str(ref))
    assert _sha(out, SIZE) == _sha(ref, SIZE)


def test_truncated_image_is_refused(raw: Path, tmp_path: Path) -> None:
    src = tmp_path / "img.qcow2"
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(src))
    with open(src, "r+b") as f:
        f.truncate(os.path.getsize(src) // 2)
    with pytest.raises(qcow2stream.Qcow2Error, match="truncated"):
        _decode(src, tmp_path / "out.raw", tmp_path)


def test_garbage_compressed_cluster_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "text.raw"
    text.write_bytes(b"".join(b"line %08d of some compressible text\n" % i for i in range(100000)))
    src = tmp_path / "img.qcow2"
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", str(text), str(src))
    data = bytearray(src.read_bytes())
    h = qcow2stream.parse_header(bytes(data[:65536]))
    (l2_off,) = struct.unpack_from(">Q", data, h.l1_offset)
    (entry,) = struct.unpack_from(">Q", data, (l2_off & qcow2stream.OFFSET_MASK) + 8 * 10)
    assert entry & qcow2stream.COMPRESSED
    coff = entry & ((1 << (62 - (h.cluster_bits - 8))) - 1)
    data[coff + 100 : coff + 1100] = random.Random(5).randbytes(1000)  # inside guest cluster 10's stream
    src.write_bytes(bytes(data))
    with pytest.raises(qcow2stream.Qcow2Error, match=r"decompress|short"):
        _decode(src, tmp_path / "out.raw", tmp_path)


def test_extended_l2_is_not_streamable(tmp_path: Path) -> None:
    src = tmp_path / "img.qcow2"
    _run("qemu-img", "create", "-f", "qcow2", "-o", "extended_l2=on", str(src), "16M")
    header = qcow2stream.parse_header(src.read_bytes()[:65536])
    assert "extended L2" in qcow2stream.not_streamable(header)


@pytest.mark.parametrize(
    "offset, value, reason",
    [(32, (2).to_bytes(4, "big"), "encrypted"), (72, (1 << 40).to_bytes(8, "big"), "unknown incompatible")],
)
def test_header_flags_that_are_not_streamable(tmp_path: Path, offset: int, value: bytes, reason: str) -> None:
    src = tmp_path / "img.qcow2"
    _run("qemu-img", "create", "-f", "qcow2", str(src), "16M")
    head = bytearray(src.read_bytes()[:65536])
    head[offset : offset + len(value)] = value
    assert reason in qcow2stream.not_streamable(qcow2stream.parse_header(bytes(head)))
