"""Streaming qcow2 -> raw: decode a qcow2 that is read once, front to back, with no scratch copy.

A qcow2 file is a header, an L1 table naming the L2 tables, L2 tables mapping each guest cluster
to a host offset (plain, compressed, zero or unallocated), and the data clusters. Images written
by ``qemu-img convert`` (and most others) place every L2 table before the clusters it maps, so
a reader that follows the file in order knows where each data cluster goes when it arrives.

``Decoder.feed(pos, view)`` takes the file's bytes in order. It keeps a heap of the byte ranges
it still needs (the L1 table, L2 tables, data runs, compressed clusters), keyed by host offset:

- the L1 and L2 tables are collected in memory and parsed when complete, which adds needs;
- plain data runs are written straight to the target (zero segments become holes);
- compressed clusters (zlib, or zstd) are collected and inflated into the target;
- bytes nobody needs *yet* are kept in a sparse spool file (at their host offset) while some
  table is still unread, because a later table may point back at them. Needs that point behind
  the read position are then served from the spool. Images laid out in order spool only a few
  refcount clusters; the rest is reported as scratch use (``spooled_used``).

Bounds (a hostile image must not make the decoder write, read or hold much more than the volume):

- The file may be at most ``max_file_size(header, capacity)`` bytes long, ``capacity`` being the
  guest data the volume can take (its usable size): every cluster of that much data once, plus the
  largest metadata a qcow2 of that size can have (L1, L2 and 64-bit refcount tables) and a slack
  for header extensions, bitmaps and a few leaked clusters. A table entry that points past it is
  refused as soon as the table is parsed (a far L2 table behind gigabytes of compressed zero
  padding is refused before the padding is downloaded), and the stream is not read past it.
  Bytes after the last one needed (refcount blocks, a snapshot table, a decompression bomb) are
  still read, because a checksum covers every byte, an upload's body is read to its end and a
  compression layer checks its data at its end, but only up to that same limit. A legitimate
  image without internal snapshots is never that long; one whose snapshots make it longer fails
  with advice (delete the snapshots or write a copy with ``qemu-img convert``); served plainly
  with Range and no checksum, such an image goes through nbdkit instead and reads only what it
  needs.
- So the spool holds only bytes below that limit. Zero runs are not written into it (the sparse
  file reads zeros there), but they count: what it may cover is bounded, not just what it
  allocates.
- Memory: the bytes collected for tables and compressed clusters at a time are capped
  (``MAX_BUFFERED``: a real image has one table and a compressed cluster or two in flight; many
  at once means they overlap one another), two L1 entries may not share an L2 table, and about
  one L2 table's worth of needs is pending for images in order. Images whose tables all come
  first hold a need per data run at once: at most ``MAX_PENDING`` of them (about 100 MiB); past
  that the image is refused with the advice to write it in order. Which guest ranges were written
  is not tracked: a target that is not known to read zeros (a device) is zeroed first.

Images the decoder cannot stream (extended L2 entries, encryption, unknown incompatible
features) are named by ``not_streamable`` so that the caller can use qemu-img instead.
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import contextlib
import heapq
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdi.api.contract import Reason
from cdi.common.errors import PermanentError
from cdi.common.units import human_bytes
from cdi.datapath import sparse

log = logging.getLogger(__name__)

MAGIC = b"QFI\xfb"
OFFSET_MASK = 0x00FFFFFFFFFFFE00
COMPRESSED = 1 << 62
ZERO_FLAG = 1
INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE = 1, 2, 4
INCOMPAT_COMPRESSION, INCOMPAT_EXTL2 = 8, 16
KNOWN_INCOMPAT = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
ZLIB, ZSTD = 0, 1
MAX_TABLE = 32 << 20  # an L1 table larger than this is not a sane image (4 PiB at 64 KiB clusters)
INFLATE_THREADS = 2  # zlib and zstd release the GIL: compressed clusters inflate in parallel
INFLATE_INFLIGHT = 64  # compressed clusters queued or inflating at once (bounds memory)
SLACK = 16 << 20  # header extensions, a snapshot table, bitmaps, leaked clusters (see max_file_size)


class Qcow2Error(PermanentError):
    reason = Reason.INVALID_IMAGE


@dataclass(frozen=True)
class Header:
    version: int
    cluster_bits: int
    size: int  # virtual size
    crypt_method: int
    l1_size: int
    l1_offset: int
    nb_snapshots: int
    incompatible: int
    compression: int

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // 8


def parse_header(head: bytes) -> Header:
    """The header fields the decoder needs; ``Qcow2Error`` for a header that makes no sense."""
    if len(head) < 72 or not head.startswith(MAGIC):
        raise Qcow2Error("not a qcow2 image (bad magic or short header)")
    version, _bf_off, _bf_len, cluster_bits, size, crypt, l1_size, l1_off = struct.unpack_from(
        ">IQIIQIIQ", head, 4
    )
    (nb_snapshots,) = struct.unpack_from(">I", head, 60)
    incompatible = 0
    compression = ZLIB
    if version not in (2, 3):
        raise Qcow2Error(f"qcow2 version {version} is not supported (2 and 3 are)")
    if version >= 3:
        if len(head) < 104:
            raise Qcow2Error("qcow2 v3 header is truncated")
        (incompatible,) = struct.unpack_from(">Q", head, 72)
        (header_length,) = struct.unpack_from(">I", head, 100)
        if header_length > 104 and len(head) > 104:
            compression = head[104]
    if not 9 <= cluster_bits <= 21:
        raise Qcow2Error(f"qcow2 cluster_bits {cluster_bits} out of range (9-21)")
    if l1_off % (1 << cluster_bits):
        raise Qcow2Error(f"qcow2 L1 table offset {l1_off} is not cluster aligned")
    if l1_size * 8 > MAX_TABLE:
        raise Qcow2Error(f"qcow2 L1 table of {l1_size} entries is too large")
    return Header(version, cluster_bits, size, crypt, l1_size, l1_off, nb_snapshots, incompatible, compression)


def max_file_size(h: Header, capacity: int) -> int:
    """The longest a qcow2 file with ``h``'s cluster size and L1 table can legitimately be when it
    maps at most ``capacity`` bytes of guest data and has no internal snapshots.

    Every data cluster once, the header cluster, the L1 table (the header's; ``parse_header``
    caps it at ``MAX_TABLE``), one L2 table per ``l2_entries`` data clusters, refcount blocks at
    the widest refcount width (8 bytes per host cluster, twice over as the blocks count
    themselves) and their table; then ``capacity // 256`` for persistent bitmaps and eight
    clusters plus ``SLACK`` for header extensions, a snapshot table and leaked clusters.
    """
    cs = h.cluster_size
    data = -(-capacity // cs)
    l2 = -(-data // h.l2_entries)
    l1 = -(-max(h.l1_size, l2) * 8 // cs)
    meta = 1 + l1 + l2
    blocks = 2 * -(-(data + meta) * 8 // cs)
    table = -(-blocks * 8 // cs)
    return (data + meta + blocks + table + 8) * cs + capacity // 256 + SLACK


def not_streamable(h: Header) -> str:
    """Why ``h`` cannot be decoded here ("" if it can)."""
    if h.crypt_method:
        return "the qcow2 image is encrypted"
    if h.incompatible & ~KNOWN_INCOMPAT:
        return f"the qcow2 image has unknown incompatible features ({h.incompatible:#x})"
    if h.incompatible & INCOMPAT_EXTL2:
        return "the qcow2 image uses extended L2 entries (subclusters)"
    if h.incompatible & INCOMPAT_DATA_FILE:
        return "the qcow2 image has an external data file"
    if h.incompatible & INCOMPAT_CORRUPT:
        return "the qcow2 image is marked corrupt"
    if h.compression not in (ZLIB, ZSTD):
        return f"the qcow2 image uses unknown compression type {h.compression}"
    return ""


# need kinds, in the order they are handled when several start at the same offset
L1, L2, DATA, CZ = 0, 1, 2, 3
KIND_NAMES = {L1: "its L1 table", L2: "an L2 table", DATA: "a data cluster", CZ: "a compressed cluster"}
MAX_BUFFERED = MAX_TABLE + (16 << 20)  # bytes collected for pending tables/compressed clusters
MAX_PENDING = 1 << 20  # needs known at once (about 100 MiB of them): tables far ahead of scattered data


@dataclass(order=True, slots=True)
class _Need:
    start: int  # host offset of the next byte wanted
    seq: int
    kind: int = field(compare=False)
    end: int = field(compare=False)  # host offset after the last byte wanted
    dest: int = field(compare=False)  # DATA: guest offset of ``start``; CZ: guest offset; L2: first guest cluster
    buf: bytearray | None = field(default=None, compare=False)  # L1/L2/CZ: what arrived so far


class Spool:
    """Bytes kept at their host offset in a sparse file, made on first use.

    Zero segments are not written: the file reads zeros there (a hole). ``covered`` counts every
    byte kept, zeros included; what the file allocates is at most that.
    """

    def __init__(self, make_path: Callable[[], str]) -> None:
        self._make_path = make_path
        self.path = ""
        self._fd = -1
        self._size = 0  # the file's size (grown with ftruncate when it ends in a zero run)
        self._ranges: list[list[int]] = []  # sorted, merged [start, end)

    def put(self, offset: int, view: memoryview) -> None:
        n = len(view)
        if not n:
            return
        if self._fd < 0:
            self.path = self._make_path()
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        end = offset + n
        data_start = -1  # start of the pending run of non-zero segments
        for seg, _seg_end, zero in sparse.segments(offset, view):
            if zero:
                if data_start >= 0:
                    self._write(offset + data_start, view[data_start:seg])
                    data_start = -1
            elif data_start < 0:
                data_start = seg
        if data_start >= 0:
            self._write(offset + data_start, view[data_start:n])
        if end > self._size:
            os.ftruncate(self._fd, end)
            self._size = end
        r = self._ranges
        if r and r[-1][1] == offset:  # the usual case: right after the last piece
            r[-1][1] = end
            return
        i = bisect.bisect(r, [offset, end])
        r.insert(i, [offset, end])
        # merge with overlapping or touching neighbours
        j = max(i - 1, 0)
        while j + 1 < len(r):
            if r[j + 1][0] <= r[j][1]:
                r[j][1] = max(r[j][1], r[j + 1][1])
                del r[j + 1]
            elif j >= i:
                break
            else:
                j += 1

    def _write(self, offset: int, view: memoryview) -> None:
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)
        self._size = max(self._size, offset + len(view))

    @property
    def covered(self) -> int:
        """Bytes kept (zero runs included)."""
        return sum(end - start for start, end in self._ranges)

    @property
    def allocated(self) -> int:
        """Bytes of disk the spool file uses."""
        return os.fstat(self._fd).st_blocks * 512 if self._fd >= 0 else 0

    def covers(self, start: int, end: int) -> bool:
        i = bisect.bisect(self._ranges, [start, end + 1]) - 1
        return i >= 0 and self._ranges[i][0] <= start and self._ranges[i][1] >= end

    def get(self, start: int, end: int) -> bytes:
        if not self.covers(start, end):
            raise Qcow2Error(
                f"qcow2 metadata points at bytes {start}-{end} that were not kept; the image is "
                "inconsistent (check it with qemu-img check)"
            )
        data = os.pread(self._fd, end - start, start)
        if len(data) != end - start:  # cannot happen: the file is grown to cover every range
            raise OSError(f"short read from the qcow2 spool at {start}")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class Decoder:
    """Feed a qcow2's bytes in order; the guest data lands in ``target``."""

    def __init__(self, header: Header, target: sparse.Target, spool: Spool, capacity: int | None = None) -> None:
        """``capacity``: the guest data the volume can take (default: the virtual size); it sets
        ``limit``, the longest the file may be (see ``max_file_size``)."""
        reason = not_streamable(header)
        if reason:
            raise Qcow2Error(reason)
        self.h = header
        self.capacity = max(capacity or 0, header.size)
        self.limit = max_file_size(header, self.capacity)
        self._buffered = 0  # bytes collected in the buffers of pending needs
        self._l2_offsets: set[int] = set()
        self.target = target
        self.spool = spool
        self.pos = 0  # host offset of the next byte expected
        self._writer = sparse.SparseWriter(target)
        self.spooled_used = 0  # bytes of needs served from the spool
        self._heap: list[_Need] = []
        self._seq = 0
        self._l2_pending = 0  # L2 tables known but not yet read
        self._l1_done = header.l1_size == 0
        self._zstd: Any = None  # the zstandard module, for zstd-compressed clusters
        if header.compression == ZSTD:
            import zstandard

            self._zstd = zstandard
        self._local = threading.local()  # a zstd decompressor per inflate thread (they are not thread-safe)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflating: collections.deque[tuple[concurrent.futures.Future[bytes], int]] = collections.deque()
        if header.l1_size:
            self._add(L1, header.l1_offset, header.l1_offset + header.l1_size * 8, 0)
        # what no cluster writes must read as zeros: a device is zeroed first (one discard or
        # write-zeroes call; not for a header refused above), rather than tracking every written
        # range of a scattered image
        target.zero(0, header.size)

    # --- needs ------------------------------------------------------------------------------

    def _too_long(self, what: str) -> Qcow2Error:
        return Qcow2Error(
            f"{what} past the {human_bytes(self.limit)} that a qcow2 image of up to "
            f"{human_bytes(self.capacity)} (the volume's usable size) can span with all its metadata; the "
            "image is malformed or padded, or it has internal snapshots: check it with `qemu-img check` "
            "and `qemu-img snapshot -l`, and import a compact copy made with `qemu-img convert -O qcow2`"
        )

    def _add(self, kind: int, start: int, end: int, dest: int) -> None:
        if end > self.limit:
            raise self._too_long(f"the qcow2 image has {KIND_NAMES[kind]} at byte {start} ({human_bytes(start)}),")
        if len(self._heap) >= MAX_PENDING:
            raise Qcow2Error(
                f"the qcow2 image maps more than {MAX_PENDING} separate pieces of data ahead of where they are "
                "stored (its tables come long before scattered data); write it in order with "
                "qemu-img convert -O qcow2 and import that copy"
            )
        self._seq += 1
        need = _Need(start, self._seq, kind, end, dest, bytearray() if kind != DATA else None)
        if start < self.pos:
            # it points behind the chunk being fed: only the spool can have those bytes
            behind = min(end, self.pos)
            data = memoryview(self.spool.get(start, behind))
            self.spooled_used += behind - start
            if behind == end:
                self._consume(need, data, start)
                return
            self._collect(need, data)
            need.start = behind
        heapq.heappush(self._heap, need)

    def _wanted_later(self) -> bool:
        """Could bytes passed without a need still be referenced by a table not yet read?"""
        return not self._l1_done or self._l2_pending > 0

    def feed(self, pos: int, view: memoryview) -> None:
        """The file's bytes at ``pos`` (which must be where the previous feed ended)."""
        if pos != self.pos:
            raise ValueError(f"feed at {pos}, expected {self.pos}")
        end = pos + len(view)
        if end > self.limit:
            raise self._too_long("the qcow2 image goes on")
        cursor = pos  # bytes before this are accounted for (needed or spooled)
        heap = self._heap
        while heap and heap[0].start < end:
            need = heapq.heappop(heap)
            if need.start > cursor and self._wanted_later():
                self.spool.put(cursor, view[cursor - pos : need.start - pos])
            cursor = max(cursor, need.start)
            stop = min(need.end, end)
            piece = view[need.start - pos : stop - pos]
            if stop < need.end:
                self._collect(need, piece)
                need.start = stop
                heapq.heappush(heap, need)  # it starts at ``end`` now: done with this chunk
                cursor = max(cursor, stop)
                continue
            self._consume(need, piece, need.start)
            cursor = max(cursor, stop)
        if cursor < end and self._wanted_later():
            self.spool.put(cursor, view[cursor - pos :])
        self.pos = end

    def _collect(self, need: _Need, piece: memoryview) -> None:
        if need.kind == DATA:
            self._write(need.dest, piece)
            need.dest += len(piece)
        else:
            assert need.buf is not None
            need.buf += piece
            self._buffered += len(piece)
            if self._buffered > MAX_BUFFERED:
                raise Qcow2Error(
                    f"the qcow2 image's tables and compressed clusters overlap one another (more than "
                    f"{human_bytes(MAX_BUFFERED)} of them pending at byte {self.pos}); the image is "
                    "corrupt: check it with `qemu-img check`"
                )

    def _consume(self, need: _Need, piece: memoryview, at: int) -> None:
        """The last bytes of ``need`` (from host offset ``at``) have arrived."""
        if need.kind == DATA:
            self._write(need.dest, piece)
            return
        assert need.buf is not None
        self._buffered -= len(need.buf)  # what _collect counted
        need.buf += piece
        if need.kind == CZ and at >= self.pos and self._wanted_later():
            # A compressed cluster's range is rounded up to a whole sector, so its last sector
            # may hold the start of the next compressed cluster, whose table may come later.
            tail = min(512, len(need.buf))
            self.spool.put(need.end - tail, memoryview(need.buf)[len(need.buf) - tail :])
        if need.kind == L1:
            self._parse_l1(need.buf)
        elif need.kind == L2:
            self._l2_pending -= 1
            self._parse_l2(need.buf, need.dest)
        else:
            self._inflate(need.buf, need.dest)

    # --- tables -----------------------------------------------------------------------------

    def _parse_l1(self, buf: bytearray) -> None:
        h = self.h
        self._l1_done = True
        guest_clusters = -(-h.size // h.cluster_size)
        n = min(h.l1_size, -(-guest_clusters // h.l2_entries))
        for i, entry in enumerate(struct.unpack_from(f">{n}Q", buf)):
            off = entry & OFFSET_MASK
            if not off:
                continue
            if off % h.cluster_size:
                raise Qcow2Error(f"qcow2 L1 entry {i} points at unaligned offset {off}")
            if off in self._l2_offsets:
                raise Qcow2Error(
                    f"qcow2 L1 entry {i} points at the same L2 table (offset {off}) as an earlier entry; "
                    "the image is corrupt: check it with `qemu-img check`"
                )
            self._l2_offsets.add(off)
            self._l2_pending += 1
            self._add(L2, off, off + h.cluster_size, i * h.l2_entries)

    def _parse_l2(self, buf: bytearray, first: int) -> None:
        h = self.h
        cs = h.cluster_size
        count = min(h.l2_entries, -(-h.size // cs) - first)
        entries = struct.unpack_from(f">{count}Q", buf)
        x = 62 - (h.cluster_bits - 8)
        cz_off_mask = (1 << x) - 1
        cz_sec_mask = (1 << (h.cluster_bits - 8)) - 1
        run_host = run_guest = run_len = 0
        for i, entry in enumerate(entries):
            guest = (first + i) * cs
            if entry & COMPRESSED:
                coff = entry & cz_off_mask
                csize = (((entry >> x) & cz_sec_mask) + 1) * 512 - (coff & 511)
                self._add(CZ, coff, coff + csize, guest)
                continue
            off = entry & OFFSET_MASK
            if not off or entry & ZERO_FLAG:  # unallocated or zero cluster: reads as zeros
                continue
            if off % cs:
                raise Qcow2Error(f"qcow2 L2 entry for guest offset {guest} points at unaligned offset {off}")
            length = min(cs, h.size - guest)
            if run_len and off == run_host + run_len and guest == run_guest + run_len:
                run_len += length
                continue
            if run_len:
                self._add(DATA, run_host, run_host + run_len, run_guest)
            run_host, run_guest, run_len = off, guest, length
        if run_len:
            self._add(DATA, run_host, run_host + run_len, run_guest)

    # --- data -------------------------------------------------------------------------------

    def _inflate(self, data: bytearray, guest: int) -> None:
        """Queue a compressed cluster; the oldest finished ones are written (bounded in flight)."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(INFLATE_THREADS, thread_name_prefix="qcow2-inflate")
        # ``data`` is the finished need's own buffer: nothing else touches it, so no copy
        self._inflating.append((self._pool.submit(self._decompress, data, guest), guest))
        while len(self._inflating) > INFLATE_INFLIGHT or (self._inflating and self._inflating[0][0].done()):
            self._write_inflated()

    def _write_inflated(self) -> None:
        future, guest = self._inflating.popleft()
        out = future.result()
        self._write(guest, memoryview(out)[: min(self.h.cluster_size, self.h.size - guest)])

    def _decompress(self, data: bytearray, guest: int) -> bytes:
        cs = self.h.cluster_size
        try:
            if self._zstd is not None:
                dctx = getattr(self._local, "dctx", None)
                if dctx is None:
                    # a cluster is compressed on its own: its frame needs no window larger than the
                    # cluster (zstd would otherwise allocate what the frame asks, up to 128 MiB a thread)
                    dctx = self._local.dctx = self._zstd.ZstdDecompressor(max_window_size=max(cs, 1 << 20))
                # at most one cluster: a few KB of zstd may stand for gigabytes (decompressobj has no limit)
                reader = dctx.stream_reader(data)
                out = b""
                while len(out) < cs and (more := reader.read(cs - len(out))):
                    out += more
            else:
                out = zlib.decompressobj(-12).decompress(data, cs)
        except Exception as e:
            raise Qcow2Error(f"qcow2 compressed cluster at guest offset {guest} does not decompress: {e}") from None
        if len(out) < cs:
            raise Qcow2Error(f"qcow2 compressed cluster at guest offset {guest} is short ({len(out)} bytes)")
        return out

    @property
    def data_bytes(self) -> int:
        """Non-zero bytes written to the target."""
        return self._writer.data_bytes

    def close(self) -> None:
        """Stop the inflate threads (what they had not written is dropped)."""
        if self._pool is not None:
            for future, _ in self._inflating:
                future.cancel()
            self._inflating.clear()
            self._pool.shutdown(wait=True)
            self._pool = None

    def _write(self, guest: int, piece: memoryview) -> None:
        if not len(piece):
            return
        self._writer.write(guest, piece)

    def finish(self) -> None:
        """The file ended: check nothing is missing (what no cluster wrote reads as zeros)."""
        for need in sorted(self._heap):
            if need.kind == CZ and need.buf:
                # the sector count rounds up: the last compressed cluster may end before it
                self._inflate(need.buf, need.dest)
                continue
            raise Qcow2Error(
                f"the qcow2 image is truncated: it ends at {self.pos} bytes, but its tables refer to "
                f"bytes {need.start}-{need.end}"
            )
        self._heap.clear()
        while self._inflating:
            self._write_inflated()
        self._writer.flush()
        if not self._l1_done:
            raise Qcow2Error(f"the qcow2 image is truncated: it ends at {self.pos} bytes, before its L1 table")
