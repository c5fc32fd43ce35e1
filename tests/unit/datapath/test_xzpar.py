"""Parallel in-process xz decoding: layout from the index, block decoding, fallbacks, corruption."""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess

import pytest

from cdi.common.errors import PermanentError
from cdi.datapath import streams, xzpar
from tests.unit.datapath.helpers import BytesStream as _Bytes

pytestmark = pytest.mark.timeout(60)


def _read_at(data: bytes):  # type: ignore[no-untyped-def]
    return lambda off, n: data[off : off + n]


def _multiblock(payload: bytes, block: int = 64 << 10, check: int = lzma.CHECK_CRC64) -> bytes:
    if shutil.which("xz"):
        p = subprocess.run(
            [
                "xz",
                "-1",
                "-c",
                f"--block-size={block}",
                f"--check={ {lzma.CHECK_CRC32: 'crc32', lzma.CHECK_CRC64: 'crc64', lzma.CHECK_SHA256: 'sha256', lzma.CHECK_NONE: 'none'}[check] }",
            ],
            input=payload,
            capture_output=True,
            check=True,
        )
        return p.stdout
    # without xz: concatenated single-block streams (still several blocks, several streams)
    return b"".join(lzma.compress(payload[i : i + block], check=check) for i in range(0, len(payload), block))


def _decode_all(data: bytes) -> bytes:
    lay = xzpar.layout(_read_at(data), len(data))
    assert lay is not None
    st = xzpar.ParallelXzStream(_Bytes(data), lay, streams.invalid)
    out = bytearray()
    buf = memoryview(bytearray(100_000))
    while True:
        n = st.readinto(buf)
        if not n:
            break
        out += buf[:n]
    st.close()
    return bytes(out)


PAYLOAD = os.urandom(300_000) + bytes(400_000) + b"text like data " * 20_000


@pytest.mark.parametrize("check", [lzma.CHECK_NONE, lzma.CHECK_CRC32, lzma.CHECK_CRC64, lzma.CHECK_SHA256])
def test_multiblock_decodes_to_the_same_bytes(check: int) -> None:
    data = _multiblock(PAYLOAD, check=check)
    lay = xzpar.layout(_read_at(data), len(data))
    assert lay is not None and lay.block_count >= 10 and lay.uncompressed == len(PAYLOAD)
    assert _decode_all(data) == PAYLOAD


def test_concatenated_streams_with_padding() -> None:
    a, b = PAYLOAD[:200_000], PAYLOAD[200_000:]
    data = _multiblock(a) + b"\0" * 8 + _multiblock(b) + b"\0" * 4
    lay = xzpar.layout(_read_at(data), len(data))
    assert lay is not None and len(lay.streams) == 2
    assert _decode_all(data) == PAYLOAD


def test_single_block_and_garbage_fall_back() -> None:
    one = lzma.compress(PAYLOAD)
    assert xzpar.layout(_read_at(one), len(one)) is None
    junk = b"\xfd7zXZ\0" + os.urandom(5000)
    assert xzpar.layout(_read_at(junk), len(junk)) is None


def test_corrupt_block_is_invalid_image() -> None:
    data = bytearray(_multiblock(PAYLOAD))
    lay = xzpar.layout(_read_at(bytes(data)), len(data))
    assert lay is not None
    data[12 + lay.streams[0].blocks[0].total // 2] ^= 0xFF  # inside the first block
    with pytest.raises(PermanentError, match="xz data cannot be decompressed"):
        _decode_all_with_layout(bytes(data), lay)


def test_file_changed_between_index_and_stream_is_an_error() -> None:
    data = _multiblock(PAYLOAD)
    other = _multiblock(PAYLOAD[::-1])
    lay = xzpar.layout(_read_at(other), len(other))
    assert lay is not None
    with pytest.raises(PermanentError):
        _decode_all_with_layout(data, lay)


def _decode_all_with_layout(data: bytes, lay: xzpar.Layout) -> bytes:
    st = xzpar.ParallelXzStream(_Bytes(data), lay, streams.invalid)
    out = bytearray()
    buf = memoryview(bytearray(1 << 20))
    try:
        while True:
            n = st.readinto(buf)
            if not n:
                return bytes(out)
            out += buf[:n]
    finally:
        st.close()


def test_peel_uses_the_parallel_decoder_with_random_access() -> None:
    data = _multiblock(PAYLOAD)
    top, layers, _fmt = streams.peel(_Bytes(data), random_access=(_read_at(data), len(data)))
    assert layers == ["xz"]
    assert isinstance(top.inner, xzpar.ParallelXzStream)
    out = bytearray()  # Peek replays its head
    buf = memoryview(bytearray(1 << 20))
    while n := top.readinto(buf):
        out += buf[:n]
    top.close()
    assert bytes(out) == PAYLOAD
