"""Sparse-aware targets and the streaming pump (reader thread -> bounded queue -> writer).

A target is a regular file (holes come from truncating it to its final size first) or a block
device (zero ranges are punched/zeroed with fallocate or BLKZEROOUT, never written as zero
buffers). The pump reads a stream into a small pool of reused buffers on a thread, and the
caller's thread detects zero segments, coalesces them, pwrites the data, and syncs in bounded
steps so the page cache does not balloon.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import queue
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cdi.common.units import human_bytes
from cdi.datapath.source import Stream

log = logging.getLogger(__name__)

CHUNK = 2 << 20  # bytes per read; a multiple of SEGMENT
SEGMENT = 64 << 10  # zero-detection granularity
POOL = 4  # buffers in flight (POOL * CHUNK bounds the pump's memory; 4 x 2 MiB is as fast as 4 x 4)
SYNC_STEP = 256 << 20  # fdatasync at least this often (bytes of output offset)
WRITEBACK_STEP = 32 << 20  # start writeback of this much at a time

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4
DROP_BEHIND = True  # drop written-back pages from the page cache (see Target._bounded_sync)

try:
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc: find_library runs ldconfig, so only as a fallback
    _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range back now (non-blocking; best effort)."""
    _libc.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def write_and_drop(fd: int, offset: int, length: int) -> None:
    """Wait until a range is on disk, then drop it from the page cache (best effort).

    Pages we wrote are charged to our memory cgroup; left in the cache they make a limited
    worker reclaim (kernel CPU in the writer) and crowd out the page cache of everything else.
    """
    _libc.sync_file_range(
        fd, offset, length, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
    )
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def device_size(fd: int) -> int:
    try:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return int(struct.unpack("Q", buf)[0])
    except OSError:
        return os.lseek(fd, 0, os.SEEK_END)


def allocated_bytes(path: str) -> int:
    return os.stat(path).st_blocks * 512


class Target:
    """Where the decoded image goes: ``write`` data, ``zero`` ranges, ``sync`` durably."""

    def __init__(
        self, path: str, fd: int, size: int, is_block: bool, prezeroed: bool, preallocated: bool
    ) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.is_block = is_block
        self.prezeroed = prezeroed  # a freshly truncated file reads zeros everywhere
        self.preallocated = preallocated
        self.data_bytes = 0
        self._synced_to = 0
        self._writeback_from = 0
        self._dropped_to = 0
        self._zero_fallback_logged = False

    @classmethod
    def create_file(cls, path: str, size: int, preallocate: bool = False) -> Target:
        """A new file of ``size`` bytes (all holes, or allocated if ``preallocate``)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o660)
        try:
            os.ftruncate(fd, size)
            if preallocate and size:
                fallocate(fd, 0, 0, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, size, is_block=False, prezeroed=True, preallocated=preallocate)

    @classmethod
    def open_block(cls, path: str, preallocate: bool = False) -> Target:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.ENOTBLK, f"{path} is not a block device")
        return cls(path, fd, device_size(fd), is_block=True, prezeroed=False, preallocated=preallocate)

    def write(self, offset: int, data: memoryview) -> None:
        end = offset + len(data)
        while offset < end:
            n = os.pwrite(self.fd, data[len(data) - (end - offset) :], offset)
            offset += n
        self.data_bytes += len(data)
        self._bounded_sync(end)

    def zero(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros without writing zero buffers if possible."""
        if length <= 0 or self.prezeroed:
            return
        if self.is_block:
            mode = FALLOC_FL_ZERO_RANGE if self.preallocated else FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            try:
                fallocate(self.fd, mode, offset, length)
                return
            except OSError:
                pass
            try:
                fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
                return
            except OSError:
                pass
        else:
            try:
                fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
                return
            except OSError:
                pass
        if not self._zero_fallback_logged:
            log.warning("%s: cannot punch or zero ranges; writing zeros", self.path)
            self._zero_fallback_logged = True
        zeros = bytes(min(length, 32 << 20))
        end = offset + length
        while offset < end:
            n = min(len(zeros), end - offset)
            os.pwrite(self.fd, memoryview(zeros)[:n], offset)
            offset += n

    def _bounded_sync(self, end: int) -> None:
        if end - self._writeback_from >= WRITEBACK_STEP:
            start_writeback(self.fd, self._writeback_from, end - self._writeback_from)
            if DROP_BEHIND and self._dropped_to < self._writeback_from:
                # the window before this one has been writing back for a while: wait for it
                # and drop it, so the cache holds at most ~2 windows of our data
                write_and_drop(self.fd, self._dropped_to, self._writeback_from - self._dropped_to)
                self._dropped_to = self._writeback_from
            self._writeback_from = end
        if end - self._synced_to >= SYNC_STEP:
            os.fdatasync(self.fd)
            self._synced_to = end

    def sync(self) -> None:
        os.fsync(self.fd)
        if DROP_BEHIND and self._dropped_to < self._writeback_from:
            with contextlib.suppress(OSError):
                os.posix_fadvise(self.fd, self._dropped_to, 0, os.POSIX_FADV_DONTNEED)
            self._dropped_to = self._writeback_from

    def finish_size(self, size: int) -> None:
        """Files: set the final size (growing keeps holes); block devices keep theirs."""
        if not self.is_block:
            os.ftruncate(self.fd, size)
            if self.preallocated and size:
                fallocate(self.fd, 0, 0, size)
            self.size = size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Overflow(Exception):
    """The stream produced more than the target may hold.

    ``produced`` is the stream's whole length when ``complete``; otherwise a lower bound, and
    ``stopped`` says why counting stopped (budget spent, or the stream failed).
    """

    def __init__(self, produced: int, complete: bool = False, stopped: str = "") -> None:
        super().__init__(produced)
        self.produced = produced
        self.complete = complete
        self.stopped = stopped


@dataclass(frozen=True)
class CountBudget:
    """How far ``pump`` goes on reading (counting, writing nothing) after an overflow."""

    seconds: float
    bytes: int


@dataclass
class PumpResult:
    end: int  # output offset after the last byte
    data_bytes: int  # non-zero bytes written


HANDOVER_SECONDS = 0.5
_ZEROS = bytearray(SEGMENT)  # bytearray == memoryview is a memcmp; memoryview == bytes is not
BLOCK = 4 << 10  # finer zero detection inside data segments of files
_ZERO_BLOCK = bytearray(BLOCK)


class ChunkReader:
    """Reads a stream on a thread into a pool of POOL reused CHUNK buffers.

    ``get()`` returns the next ``(buffer, length)`` or None at the end of the stream, and
    re-raises what the stream raised (after every chunk read before it); ``release(buffer)``
    gives a buffer back. Memory is bounded by POOL * CHUNK. Use as a context manager.
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(POOL):
            self._free.put(bytearray(CHUNK))
        self._full: queue.Queue[tuple[bytearray, int] | BaseException | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chunk-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stream, free, full = self._stream, self._free, self._full
        try:
            while not self._stop.is_set():
                buf = free.get()
                if self._stop.is_set():
                    return
                view = memoryview(buf)
                got = 0
                eof = False
                started = time.monotonic()
                try:
                    while got < CHUNK:
                        n = stream.readinto(view[got:])
                        if n == 0:
                            eof = True
                            break
                        got += n
                        # A slow source hands over what it has, so that progress and the
                        # durable (resume) offset keep moving; a fast one fills whole chunks.
                        if time.monotonic() - started > HANDOVER_SECONDS:
                            break
                except BaseException:
                    if got:  # what arrived before the error is written, so resume offsets are exact
                        full.put((buf, got))
                    raise
                if got:
                    full.put((buf, got))
                else:
                    free.put(buf)
                if eof:
                    full.put(None)
                    return
        except BaseException as e:
            full.put(e)

    def get(self) -> tuple[bytearray, int] | None:
        item = self._full.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def release(self, buf: bytearray) -> None:
        self._free.put(buf)

    def close(self) -> None:
        self._stop.set()
        for _ in range(POOL):
            self._free.put(bytearray(0))
        self._thread.join(timeout=2)  # a reader stuck in a stalled read is abandoned; the caller closes its stream

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def segments(offset: int, view: memoryview) -> Iterator[tuple[int, int, bool]]:
    """``(start, end, is_zero)`` of ``view``'s zero-detection segments (indexes into ``view``),
    aligned to the absolute ``offset`` of its first byte, not to the view."""
    n = len(view)
    seg = 0
    while seg < n:
        seg_end = min(n, seg + SEGMENT - (offset + seg) % SEGMENT)
        yield seg, seg_end, (_ZEROS if seg_end - seg == SEGMENT else bytearray(seg_end - seg)) == view[seg:seg_end]
        seg = seg_end


class SparseWriter:
    """Writes ``view``s to a target: data segments are written, runs of zero segments become
    one ``target.zero`` (coalesced across calls while the offsets follow on)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.data_bytes = 0  # non-zero bytes written
        self._zero_start = -1  # a pending run of zeros: [start, end)
        self._zero_end = -1

    def write(self, offset: int, view: memoryview) -> None:
        target = self.target
        zero_start, zero_end = self._zero_start, self._zero_end
        if zero_start >= 0 and offset != zero_end:
            target.zero(zero_start, zero_end - zero_start)
            zero_start = -1
        n = len(view)
        data_start = -1
        fine = target.prezeroed
        try:
            # segments (and blocks) are aligned to the target's offsets, not to this call's
            for seg, seg_end, zero in segments(offset, view):
                if zero:
                    if data_start >= 0:
                        target.write(offset + data_start, view[data_start:seg])
                        self.data_bytes += seg - data_start
                        data_start = -1
                    if zero_start < 0:
                        zero_start = offset + seg
                    zero_end = offset + seg_end
                else:
                    if zero_start >= 0:
                        target.zero(zero_start, offset + seg - zero_start)
                        zero_start = -1
                    if fine:
                        # a file reads zeros where nothing was written: whole zero blocks inside
                        # a data segment stay holes too (as with qemu-img's 4 KiB granularity)
                        blk = seg
                        while blk < seg_end:
                            blk_end = min(seg_end, blk + BLOCK - (offset + blk) % BLOCK)
                            if blk_end - blk == BLOCK and _ZERO_BLOCK == view[blk:blk_end]:  # noqa: SIM300 (memcmp)
                                if data_start >= 0:
                                    target.write(offset + data_start, view[data_start:blk])
                                    self.data_bytes += blk - data_start
                                    data_start = -1
                            elif data_start < 0:
                                data_start = blk
                            blk = blk_end
                    elif data_start < 0:
                        data_start = seg
            if data_start >= 0:
                target.write(offset + data_start, view[data_start:n])
                self.data_bytes += n - data_start
        finally:
            self._zero_start, self._zero_end = zero_start, zero_end

    def flush(self) -> None:
        """Zero the pending run of zeros (before a sync, the end, or after an error)."""
        if self._zero_start >= 0:
            start, self._zero_start = self._zero_start, -1
            self.target.zero(start, self._zero_end - start)


def pump(
    stream: Stream,
    target: Target,
    offset: int,
    limit: int,
    on_written: Callable[[int], None] | None = None,
    count: CountBudget | None = None,
) -> PumpResult:
    """Copy ``stream`` to ``target`` from ``offset``; zero segments become holes/zeroed ranges.

    Raises what the stream raises (after everything read before it is written) and ``Overflow``
    when output would pass ``limit``. With ``count``, an overflowing stream is read on (nothing
    written) until it ends, so that ``Overflow`` tells its true length, or until the budget is
    spent (a lower bound then). Memory is bounded by POOL * CHUNK.
    """
    pos = offset
    writer = SparseWriter(target)
    reader = ChunkReader(stream)
    try:
        while True:
            item = reader.get()
            if item is None:
                break
            buf, n = item
            if pos + n > limit:
                reader.release(buf)
                raise _count_rest(reader, pos + n, count)
            writer.write(pos, memoryview(buf)[:n])
            pos += n
            reader.release(buf)
            if on_written is not None:
                on_written(pos)
        writer.flush()
        return PumpResult(pos, writer.data_bytes)
    finally:
        with contextlib.suppress(OSError):  # zeros seen before an error count, so resume offsets stay exact
            writer.flush()
        reader.close()


def _count_rest(reader: ChunkReader, produced: int, count: CountBudget | None) -> Overflow:
    """The Overflow for a stream that has produced ``produced`` bytes, counted on within ``count``."""
    if count is None:
        return Overflow(produced, stopped="the stream was not read further")
    log.info("the stream passed the limit at %d bytes; counting the rest without writing it", produced)
    deadline = time.monotonic() + count.seconds
    while produced <= count.bytes and time.monotonic() < deadline:
        try:
            item = reader.get()
        except Exception as e:  # the size is then unknown; the overflow is still what to report
            log.info("counting the stream stopped at %d bytes: %s", produced, e)
            return Overflow(produced, stopped="the stream failed while it was counted")
        if item is None:
            return Overflow(produced, complete=True)
        produced += item[1]
        reader.release(item[0])
    spent = f"{count.seconds:.0f}s" if produced <= count.bytes else human_bytes(count.bytes)
    return Overflow(produced, stopped=f"counting stopped after {spent}")
