"""Hand-made qcow2 files for attacks on the streaming decoder (qemu-img would never write them).

``Craft`` lays out a qcow2 v3 image at chosen host offsets: the header, an L1 table, L2 tables
and data clusters, with whatever the test wants in between (zero padding kept as a hole, random
junk, trailing bytes). The file is written sparse, so gigabytes of zero padding cost nothing on
disk; ``to_zst`` compresses it while streaming (1 GiB of zeros becomes about 40 KB).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import zstandard

MAGIC = b"QFI\xfb"
COPIED = 1 << 63
COMPRESSED = 1 << 62


@dataclass
class Craft:
    virtual_size: int
    cluster_bits: int = 16
    l1_offset: int = 1 << 16
    l2: dict[int, int] = field(default_factory=dict)  # L1 index -> host offset of its L2 table
    # (L1 index, L2 index) -> L2 entry (a plain host offset gets COPIED; pass flags yourself otherwise)
    entries: dict[tuple[int, int], int] = field(default_factory=dict)
    blobs: dict[int, bytes] = field(default_factory=dict)  # host offset -> bytes (data, junk)
    length: int = 0  # the file's length (at least what the parts need)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l1_size(self) -> int:
        per_l2 = self.cluster_size * (self.cluster_size // 8)
        return -(-self.virtual_size // per_l2)

    def map(self, guest: int, host: int, data: bytes) -> None:
        """Guest cluster at byte ``guest`` reads ``data`` (one cluster) stored at ``host``."""
        cs = self.cluster_size
        assert guest % cs == 0 and host % cs == 0 and len(data) == cs
        per_l2 = cs // 8
        index = guest // cs
        self.entries[(index // per_l2, index % per_l2)] = host | COPIED
        self.blobs[host] = data

    def header(self) -> bytes:
        h = bytearray(self.cluster_size)
        struct.pack_into(
            ">4sIQIIQIIQQIIQQQQII",
            h,
            0,
            MAGIC,
            3,  # version
            0,  # backing file offset
            0,  # backing file size
            self.cluster_bits,
            self.virtual_size,
            0,  # crypt method
            self.l1_size,
            self.l1_offset,
            0,  # refcount table offset (the decoder does not read refcounts)
            0,  # refcount table clusters
            0,  # snapshots
            0,  # snapshots offset
            0,  # incompatible features
            0,  # compatible features
            0,  # autoclear features
            4,  # refcount order
            104,  # header length
        )
        return bytes(h)

    def parts(self) -> dict[int, bytes]:
        cs = self.cluster_size
        parts = {0: self.header()}
        l1 = bytearray(-(-self.l1_size * 8 // cs) * cs)
        for i, off in self.l2.items():
            struct.pack_into(">Q", l1, i * 8, off | COPIED)
        parts[self.l1_offset] = bytes(l1)
        for i, off in self.l2.items():
            table = bytearray(cs)
            for (li, j), entry in self.entries.items():
                if li == i:
                    struct.pack_into(">Q", table, j * 8, entry)
            parts[off] = bytes(table)
        parts.update(self.blobs)
        return parts

    def write(self, path: str) -> int:
        """Write the file (sparse); returns its length."""
        parts = self.parts()
        end = max([off + len(b) for off, b in parts.items()] + [self.length])
        with open(path, "wb") as f:
            f.truncate(end)
            for off, b in sorted(parts.items()):
                f.seek(off)
                f.write(b)
        return end


def to_zst(src: str, dst: str, length: int | None = None, level: int = 3) -> int:
    """Compress ``src`` (then zeros up to ``length``) to ``dst`` with zstd; returns the compressed size.

    Holes are not read: the file's data extents are found with SEEK_DATA/SEEK_HOLE, so a sparse
    file of gigabytes costs only the compression of its zeros (a fraction of a second per GiB).
    """
    cctx = zstandard.ZstdCompressor(level=level)
    zeros = bytes(4 << 20)
    size = os.path.getsize(src)
    total = max(size, length or 0)
    with open(src, "rb") as fin, open(dst, "wb") as fout, cctx.stream_writer(fout, closefd=False) as w:

        def put_zeros(n: int) -> None:
            while n:
                k = min(n, len(zeros))
                w.write(zeros[:k])
                n -= k

        pos = 0
        fd = fin.fileno()
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # no data after pos
                data = size
            put_zeros(data - pos)
            if data >= size:
                pos = size
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            os.lseek(fd, data, os.SEEK_SET)
            left = hole - data
            while left:
                chunk = fin.read(min(left, 4 << 20))
                w.write(chunk)
                left -= len(chunk)
            pos = hole
        put_zeros(total - pos)
    return os.path.getsize(dst)


def zeros_zst(dst: str, size: int, level: int = 3) -> int:
    """A .zst of ``size`` zero bytes, made without a file of that size; returns the compressed size."""
    cctx = zstandard.ZstdCompressor(level=level)
    chunk = bytes(4 << 20)
    with open(dst, "wb") as fout, cctx.stream_writer(fout, size=size, closefd=False) as w:
        left = size
        while left:
            n = min(left, len(chunk))
            w.write(chunk[:n])
            left -= n
    return os.path.getsize(dst)
