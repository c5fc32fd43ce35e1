"""The sparse writer on a real file: zero 64 KiB segments and zero 4 KiB blocks stay holes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdi.datapath import sparse


def _fs_block_size(path: Path) -> int:
    return os.statvfs(path).f_bsize


def test_zero_blocks_inside_data_segments_stay_holes(tmp_path: Path) -> None:
    if _fs_block_size(tmp_path) > 4096:
        pytest.skip("the filesystem allocates in blocks larger than 4 KiB")
    half_zero = (os.urandom(4096) + bytes(4096)) * 8  # a 64 KiB segment, half zero 4 KiB blocks
    data = half_zero * 16 + bytes(1 << 20) + os.urandom(1 << 20) + half_zero[:5000]
    path = tmp_path / "disk.img"
    target = sparse.Target.create_file(str(path), len(data))
    writer = sparse.SparseWriter(target)
    view = memoryview(data)
    for off in range(0, len(data), 300_000):  # odd call sizes: runs continue across calls
        writer.write(off, view[off : off + 300_000])
    writer.flush()
    target.sync()
    target.close()
    assert path.read_bytes() == data
    expected = 16 * 32 * 1024 + (1 << 20) + 5000  # the data blocks; the short last block is written whole
    # a zero block cut by a call boundary is written (as two short pieces)
    slack = 4096 * (len(data) // 300_000)
    assert expected <= writer.data_bytes <= expected + slack
    assert os.stat(path).st_blocks * 512 <= expected + slack + 8192
    # aligned calls: exactly the data blocks
    target = sparse.Target.create_file(str(path), len(data))
    writer = sparse.SparseWriter(target)
    for off in range(0, len(data), 1 << 20):
        writer.write(off, view[off : off + (1 << 20)])
    writer.flush()
    target.close()
    assert path.read_bytes() == data and writer.data_bytes == expected
