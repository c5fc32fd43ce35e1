"""A zstd stream cut inside a frame is an error, not a shorter image (the binding ends quietly)."""

from __future__ import annotations

import random
import struct

import pytest
import zstandard

from cdi.common.errors import PermanentError
from cdi.datapath.streams import ZstdFrames, ZstdStream
from tests.unit.datapath.helpers import BytesStream

DATA = random.Random(1).randbytes(300_000) + bytes(700_000) + random.Random(2).randbytes(50_000)


def _frames(*, checksum: bool, content_size: bool, pieces: int = 1, skippable: bool = False) -> bytes:
    c = zstandard.ZstdCompressor(level=3, write_checksum=checksum, write_content_size=content_size)
    step = -(-len(DATA) // pieces)
    out = b""
    for i in range(pieces):
        if skippable:
            out += struct.pack("<II", 0x184D2A5A, 5) + b"skip!"
        out += c.compress(DATA[i * step : (i + 1) * step])
    return out


def _read_all(blob: bytes) -> bytes:
    s = ZstdStream(BytesStream(blob))
    out = bytearray()
    buf = memoryview(bytearray(1 << 16))
    while n := s.readinto(buf):
        out += buf[:n]
    return bytes(out)


LAYOUTS = {
    "plain": dict(checksum=False, content_size=False),
    "checksum": dict(checksum=True, content_size=True),
    "frames": dict(checksum=True, content_size=False, pieces=5),
    "skippable": dict(checksum=False, content_size=True, pieces=3, skippable=True),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_whole_streams_decompress(layout: str) -> None:
    assert _read_all(_frames(**LAYOUTS[layout])) == DATA  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_stream_cut_anywhere_inside_a_frame_is_refused(layout: str) -> None:
    blob = _frames(**LAYOUTS[layout])  # type: ignore[arg-type]
    for cut in sorted({1, 3, 5, 6, 9, len(blob) // 3, len(blob) // 2, len(blob) - 4, len(blob) - 1}):
        with pytest.raises(PermanentError, match="zst data"):
            _read_all(blob[:cut])


def test_a_cut_between_frames_is_not_noticed_by_framing_alone() -> None:
    """What framing can tell: a stream that stops between two whole frames looks complete (a
    checksum over the image, when given, covers that case)."""
    c = zstandard.ZstdCompressor(level=1)
    first = c.compress(DATA[:1000])
    f = ZstdFrames()
    f.feed(memoryview(first + c.compress(DATA[1000:])))
    assert f.complete and f.frames == 2
    g = ZstdFrames()
    g.feed(memoryview(first))
    assert g.complete and g.frames == 1
    h = ZstdFrames()
    h.feed(memoryview(first[:-1]))
    assert not h.complete


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fields_split_across_reads_are_followed(layout: str) -> None:
    """Over HTTP a header or a checksum arrives in pieces: byte by byte it must come out the same."""
    blob = _frames(**LAYOUTS[layout])  # type: ignore[arg-type]
    f = ZstdFrames()
    for i in range(len(blob)):
        f.feed(memoryview(blob)[i : i + 1])
        if i == len(blob) - 2:
            assert not f.complete
    assert f.complete
    whole = ZstdFrames()
    whole.feed(memoryview(blob))
    assert f.frames == whole.frames >= 1
