"""Parallel in-process xz decoding for multi-block .xz files served with Range.

An .xz file ends with an index that lists every block's compressed and uncompressed size
(``xz -T``, ``pixz`` and ``xz --block-size`` write several blocks). With the index read from the
end of the file first (two small Range reads), the sequential stream can be cut into blocks
while it arrives, and the blocks decoded on ``threads`` threads: Python's ``lzma`` releases the
GIL while liblzma works, so two blocks decode at once on two cores, with no pipe copies to and
from an ``xz`` subprocess. Outputs are handed on in order.

Each block is decoded as a tiny single-block .xz stream (the file's stream header + the block
+ a one-record index + a footer), so liblzma checks the block's header, its integrity check
(CRC32/CRC64/SHA-256) and both sizes against the index, exactly as for the whole file. The
index and footer read sequentially must equal the ones read with Range (a file that changed
between the two reads is an error, not a splice).

``layout()`` returns None (the caller falls back to ``xz -d -T2``) when the file has fewer than
two blocks, a block larger than ``MAX_BLOCK`` (memory stays bounded), or anything unexpected at
its end; real corruption is then reported by the fallback.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import lzma
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from cdi.common.errors import CDIError, PermanentError
from cdi.datapath.source import Stream

HEADER_MAGIC = b"\xfd7zXZ\x00"
FOOTER_MAGIC = b"YZ"
MIN_SIZE = 8 << 20  # smaller files: not worth the two extra requests
MAX_BLOCK = 16 << 20  # larger blocks (e.g. xz -9 -T: 192 MiB) go to the xz subprocess
MAX_INDEX = 16 << 20
MAX_PADDING = 1 << 20  # stream padding we are willing to skip when reading backwards
TAIL_READ = 64 << 10
MEMLIMIT = 256 << 20  # per block decoder; blocks are at most MAX_BLOCK anyway

ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Block:
    total: int  # bytes in the file: header + compressed data + padding + check
    unpadded: int  # as recorded in the index
    uncompressed: int


@dataclass(frozen=True)
class XzStreamLayout:
    offset: int  # of the stream header
    header: bytes  # 12 bytes
    blocks: tuple[Block, ...]
    tail: bytes  # index + footer, as read with Range
    padding: int  # stream padding (zero bytes) after the footer


@dataclass(frozen=True)
class Layout:
    streams: tuple[XzStreamLayout, ...]
    size: int

    @property
    def block_count(self) -> int:
        return sum(len(s.blocks) for s in self.streams)

    @property
    def uncompressed(self) -> int:
        return sum(b.uncompressed for s in self.streams for b in s.blocks)


class _NotParallel(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        if pos >= len(buf):
            raise _NotParallel("index ends inside a number")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, pos
    raise _NotParallel("number longer than 9 bytes in the index")


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _round4(n: int) -> int:
    return (n + 3) & ~3


def _check_size(flags: bytes) -> int:
    check = flags[1] & 0x0F
    if flags[0] != 0 or flags[1] & 0xF0:
        raise _NotParallel("unsupported stream flags")
    if check == 0:
        return 0
    return 4 << ((check - 1) // 3)  # 1-3: 4, 4-6: 8, 7-9: 16, 10-12: 32 (as in liblzma)


def _parse_index(index: bytes, check_size: int) -> tuple[Block, ...]:
    if not index or index[0] != 0:
        raise _NotParallel("no index indicator")
    if struct.unpack("<I", index[-4:])[0] != zlib.crc32(index[:-4]):
        raise _NotParallel("index CRC32 mismatch")
    count, pos = _varint(index, 1)
    blocks = []
    for _ in range(count):
        unpadded, pos = _varint(index, pos)
        uncompressed, pos = _varint(index, pos)
        if unpadded < 5 + check_size or unpadded > (1 << 63):
            raise _NotParallel("invalid block size in the index")
        blocks.append(Block(_round4(unpadded), unpadded, uncompressed))
    if _round4(pos) != len(index) - 4 or any(index[pos : len(index) - 4]):
        raise _NotParallel("index has trailing data")
    return tuple(blocks)


def layout(read_at: ReadAt, size: int) -> Layout | None:
    """The streams and blocks of the .xz file of ``size`` bytes, or None (use the subprocess)."""
    try:
        return _layout(read_at, size)
    except _NotParallel:
        return None


def _layout(read_at: ReadAt, size: int) -> Layout:
    streams: list[XzStreamLayout] = []
    pos = size
    cache_at = max(0, size - TAIL_READ)
    cache = read_at(cache_at, size - cache_at)

    def read(offset: int, n: int) -> bytes:
        nonlocal cache_at, cache
        if offset < cache_at or offset + n > cache_at + len(cache):
            start = max(0, min(offset, offset + n - TAIL_READ))
            cache_at, cache = start, read_at(start, max(n, offset + n - start))
        return cache[offset - cache_at : offset - cache_at + n]

    while pos > 0:
        padding = 0
        while True:
            if pos < 12 or padding > MAX_PADDING:
                raise _NotParallel("no stream footer")
            word = read(pos - 4, 4)
            if word != b"\0\0\0\0":
                break
            pos -= 4
            padding += 4
        footer = read(pos - 12, 12)
        if footer[10:] != FOOTER_MAGIC:
            raise _NotParallel("no stream footer magic")
        if struct.unpack("<I", footer[:4])[0] != zlib.crc32(footer[4:10]):
            raise _NotParallel("footer CRC32 mismatch")
        flags = footer[8:10]
        check_size = _check_size(flags)
        index_size = (struct.unpack("<I", footer[4:8])[0] + 1) * 4
        if index_size > MAX_INDEX or index_size + 24 > pos:
            raise _NotParallel("index too large")
        index = read(pos - 12 - index_size, index_size)
        blocks = _parse_index(index, check_size)
        blocks_total = sum(b.total for b in blocks)
        start = pos - 12 - index_size - blocks_total - 12
        if start < 0 or (start % 4):
            raise _NotParallel("stream sizes do not add up")
        header = read(start, 12)
        if header[:6] != HEADER_MAGIC or header[6:8] != flags:
            raise _NotParallel("no matching stream header")
        if struct.unpack("<I", header[8:12])[0] != zlib.crc32(header[6:8]):
            raise _NotParallel("header CRC32 mismatch")
        for b in blocks:
            if b.total > MAX_BLOCK or b.uncompressed > MAX_BLOCK:
                raise _NotParallel("a block is too large to decode in memory")
        streams.append(XzStreamLayout(start, header, blocks, index + footer, padding))
        pos = start
    streams.reverse()
    lay = Layout(tuple(streams), size)
    if lay.block_count < 2:
        raise _NotParallel("fewer than two blocks")
    return lay


def _single_block_tail(header: bytes, block: Block) -> bytes:
    """Index (one record) + footer of a single-block stream for ``block``."""
    body = b"\x00" + _encode_varint(1) + _encode_varint(block.unpadded) + _encode_varint(block.uncompressed)
    body += b"\0" * (_round4(len(body)) - len(body))
    index = body + struct.pack("<I", zlib.crc32(body))
    backward = struct.pack("<I", len(index) // 4 - 1) + header[6:8]
    return index + struct.pack("<I", zlib.crc32(backward)) + backward + FOOTER_MAGIC


class _Liblzma:
    """``lzma_stream_buffer_decode`` through ctypes: decodes a whole (single-block) .xz stream
    straight into a caller's buffer, without the GIL, and without the growing output buffers
    and the final join copy of ``lzma.LZMADecompressor``."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("liblzma.so.5")
        except OSError:  # find_library runs ldconfig (a fork): only as a fallback
            lib = ctypes.CDLL(ctypes.util.find_library("lzma") or "liblzma.so")
        f = lib.lzma_stream_buffer_decode
        f.argtypes = [
            ctypes.POINTER(ctypes.c_uint64),
            ctypes.c_uint32,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.c_size_t,
        ]
        f.restype = ctypes.c_int
        self._decode = f

    def decode(self, src: bytearray, src_len: int, dst: bytearray) -> int:
        memlimit = ctypes.c_uint64(MEMLIMIT)
        in_pos = ctypes.c_size_t(0)
        out_pos = ctypes.c_size_t(0)
        src_p = (ctypes.c_char * len(src)).from_buffer(src)
        dst_p = (ctypes.c_char * len(dst)).from_buffer(dst)
        try:
            ret = self._decode(
                ctypes.byref(memlimit),
                0,
                None,
                ctypes.addressof(src_p),
                ctypes.byref(in_pos),
                src_len,
                ctypes.addressof(dst_p),
                ctypes.byref(out_pos),
                len(dst),
            )
        finally:
            del src_p, dst_p
        if ret != 0:
            raise lzma.LZMAError(_LZMA_ERRORS.get(ret, f"liblzma error {ret}"))
        if in_pos.value != src_len:
            raise lzma.LZMAError("trailing data after a block")
        return out_pos.value


_LZMA_ERRORS = {
    5: "out of memory",
    6: "memory limit reached",
    7: "not an xz stream",
    8: "unsupported options",
    9: "corrupt data",
    10: "output larger than the indexed size",
    11: "internal error",
}

_liblzma: _Liblzma | bool | None = None
_liblzma_lock = threading.Lock()


def _lib() -> _Liblzma | None:
    global _liblzma
    with _liblzma_lock:
        if _liblzma is None:
            try:
                _liblzma = _Liblzma()
            except (OSError, AttributeError, TypeError):
                _liblzma = False
        return _liblzma if isinstance(_liblzma, _Liblzma) else None


def decode_block(src: bytearray, src_len: int, dst: bytearray, expect: int) -> int:
    """Decode the single-block stream ``src[:src_len]`` into ``dst``; returns the size."""
    lib = _lib()
    if lib is not None:
        n = lib.decode(src, src_len, dst)
    else:
        out = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=MEMLIMIT).decompress(memoryview(src)[:src_len])
        n = len(out)
        if n <= len(dst):
            dst[:n] = out
    if n != expect:
        raise lzma.LZMAError("block does not decode to its indexed size")
    return n


class _Pool:
    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def get(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def put(self, buf: bytearray) -> None:
        with self._lock:
            self._free.append(buf)


class ParallelXzStream:
    """Decodes a multi-block .xz ``inner`` (read front to back) on ``threads`` threads.

    At most ``window`` blocks are read ahead; output buffers are pooled, so memory is at most
    about window * largest compressed block + (window + 1) * largest decoded block.
    """

    def __init__(
        self,
        inner: Stream,
        lay: Layout,
        invalid: Callable[[str, BaseException | str], PermanentError],
        threads: int = 2,
        window: int = 2,
    ) -> None:
        self.inner = inner
        self.layout = lay
        self._invalid = invalid
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="xz-decode")
        self._window = max(window, threads)
        max_out = max(b.uncompressed for s in lay.streams for b in s.blocks)
        self._outputs = _Pool(max_out)
        self._pending: collections.deque[tuple[Future[int], bytearray, bytearray]] = collections.deque()
        self._jobs = self._plan()
        self._cur: bytearray | None = None
        self._out = memoryview(b"")
        self._done = False

    def _plan(self) -> Iterator[tuple[bytearray, int, int]]:
        """Yields (input buffer, input length, decoded size) per block, checking what lies between."""
        for s in self.layout.streams:
            header = self._read_exact(12)
            if header != s.header:
                raise self._invalid(
                    "xz data cannot be decompressed",
                    "the stream header differs from the one read with Range; the file changed while it was read",
                )
            for b in s.blocks:
                tail = _single_block_tail(s.header, b)
                end = 12 + b.total + len(tail)
                buf = bytearray(end)
                buf[:12] = s.header
                self._read_into(memoryview(buf)[12 : 12 + b.total])
                buf[12 + b.total :] = tail
                yield buf, end, b.uncompressed
            tail = self._read_exact(len(s.tail))
            if tail != s.tail:
                raise self._invalid(
                    "xz data cannot be decompressed",
                    "the index differs from the one read with Range; the file changed while it was read",
                )
            if s.padding and any(self._read_exact(s.padding)):
                raise self._invalid("xz data cannot be decompressed", "non-zero stream padding")
        if self.inner.readinto(memoryview(bytearray(1))):
            raise self._invalid("xz data cannot be decompressed", "data after the last stream")

    def _read_into(self, view: memoryview) -> None:
        got = 0
        n = len(view)
        while got < n:
            k = self.inner.readinto(view[got:])
            if k == 0:
                raise self._invalid(
                    "xz data cannot be decompressed",
                    f"unexpected end of the file inside a block ({got} of {n} bytes)",
                )
            got += k

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        self._read_into(memoryview(buf))
        return bytes(buf)

    def _fill(self) -> None:
        while len(self._pending) < self._window:
            job = next(self._jobs, None)
            if job is None:
                return
            src, src_len, expect = job
            dst = self._outputs.get()
            self._pending.append((self._pool.submit(decode_block, src, src_len, dst, expect), src, dst))

    def readinto(self, buf: memoryview) -> int:
        if len(buf) == 0:
            return 0
        while not self._out:
            if self._cur is not None:
                self._outputs.put(self._cur)
                self._cur = None
            if self._done:
                return 0
            self._fill()
            if not self._pending:
                self._done = True
                return 0
            fut, src, dst = self._pending.popleft()
            try:
                n = fut.result()
            except CDIError:
                raise
            except (lzma.LZMAError, ValueError, EOFError) as e:
                raise self._invalid("xz data cannot be decompressed", e) from e
            del src
            self._cur = dst
            self._out = memoryview(dst)[:n]
            self._fill()  # keep the decoders busy while the caller copies
        n = min(len(buf), len(self._out))
        buf[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        for fut, _, _ in self._pending:
            fut.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        self._out = memoryview(b"")
        self.inner.close()
