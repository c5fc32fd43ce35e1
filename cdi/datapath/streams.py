"""Stream layers: counting/hashing of the bytes as served, a replayable head, decompression.

Every layer implements ``cdi.datapath.source.Stream`` (``readinto`` + ``close``), so the
processor stacks them: source stream -> Metered (count, hash) -> Peek (sniff) -> decoder ->
Peek -> ... Decoders turn codec failures into ``PermanentError(InvalidImage)`` and let the
source's own ``TemporaryError``/``PermanentError`` through unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from cdi.api.contract import Reason
from cdi.api.values import Checksum
from cdi.common.errors import CDIError, PermanentError, ValidationError
from cdi.datapath import formats
from cdi.datapath.source import Stream

log = logging.getLogger(__name__)

CHUNK = 4 << 20
PIPE_SIZE = 1 << 20


def invalid(what: str, err: BaseException | str) -> PermanentError:
    return PermanentError(f"{what}: {err}; the image is corrupt or truncated", reason=Reason.INVALID_IMAGE)


def parse_checksum(spec: str) -> tuple[str, str]:
    """``"sha256:abcd..."`` -> ("sha256", "abcd..."); PermanentError(ConfigError) otherwise.

    The rule is :meth:`cdi.api.values.Checksum.parse`, the one admission applies.
    """
    try:
        c = Checksum.parse(spec)
    except ValidationError as e:
        raise PermanentError(e.message, reason=Reason.CONFIG_ERROR) from None
    return c.algorithm, c.digest


def read_full(stream: Stream, size: int) -> bytes:
    """``size`` bytes of ``stream`` (fewer only at its end)."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = stream.readinto(view[got:])
        if n == 0:
            break
        got += n
    return bytes(view[:got])


class Metered:
    """Counts (and optionally hashes) the bytes as served; calls ``on_bytes(total)`` per read."""

    def __init__(
        self, inner: Stream, start: int = 0, hasher: Any = None, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        self.inner = inner
        self.start = start
        self.count = start
        self.hasher = hasher
        self.on_bytes = on_bytes

    def readinto(self, buf: memoryview) -> int:
        n = self.inner.readinto(buf)
        if n:
            if self.hasher is not None:
                self.hasher.update(buf[:n])
            self.count += n
            if self.on_bytes is not None:
                self.on_bytes(self.count)
        return n

    def close(self) -> None:
        self.inner.close()


class Peek:
    """Reads the first ``size`` bytes (fewer at end of stream) and replays them before the rest."""

    def __init__(self, inner: Stream, size: int = formats.HEAD_SIZE) -> None:
        self.inner = inner
        self.head = read_full(inner, size)
        self._pos = 0

    def readinto(self, buf: memoryview) -> int:
        if self._pos < len(self.head):
            n = min(len(buf), len(self.head) - self._pos)
            buf[:n] = self.head[self._pos : self._pos + n]
            self._pos += n
            return n
        return self.inner.readinto(buf)

    def close(self) -> None:
        self.inner.close()


class _FileAdapter(io.RawIOBase):
    """A Stream as a read-only raw file object, for codecs that want ``read``."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        return self.stream.readinto(memoryview(buf).cast("B"))


class GzipStream:
    """gzip (all members) with ISA-L's inflate."""

    def __init__(self, inner: Stream) -> None:
        from isal import igzip

        self.inner = inner
        self._file = igzip.GzipFile(fileobj=io.BufferedReader(_FileAdapter(inner), CHUNK), mode="rb")  # type: ignore[no-untyped-call]

    def readinto(self, buf: memoryview) -> int:
        try:
            return self._file.readinto(buf)
        except CDIError:
            raise
        except (OSError, EOFError, ValueError) as e:
            raise invalid("gz data cannot be decompressed", e) from e

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self.inner.close()


class ZstdFrames:
    """Follows the frame layout of a zstd stream (RFC 8878) as its compressed bytes go by.

    The binding's stream reader ends quietly when its input stops inside a frame, so a cut
    download would pass for a complete image. Frame headers, block headers (3 bytes each, then the
    block's content is skipped), checksums and skippable frames cost a few operations per block;
    ``complete`` says whether the input stopped between frames.
    """

    MAGIC = 0xFD2FB528
    _FCS_SIZES = (0, 2, 4, 8)
    _DICT_SIZES = (0, 1, 2, 4)

    def __init__(self) -> None:
        self.frames = 0
        self.broken = False  # not zstd framing: the decompressor reports that itself
        self._state = "magic"
        self._need = 4
        self._field = bytearray()
        self._skip = 0
        self._checksum = False
        self._last = False

    @property
    def complete(self) -> bool:
        return self.broken or (self._state == "magic" and not self._field and not self._skip and self.frames > 0)

    def feed(self, view: memoryview) -> None:
        i, n = 0, len(view)
        while i < n and not self.broken:
            if self._skip:
                k = min(self._skip, n - i)
                self._skip -= k
                i += k
                if not self._skip:
                    self._skipped()
                continue
            k = min(self._need - len(self._field), n - i)
            self._field += view[i : i + k]
            i += k
            if len(self._field) == self._need:
                field = bytes(self._field)
                self._field.clear()
                self._parsed(field)

    def _expect(self, state: str, need: int) -> None:
        self._state, self._need = state, need

    def _parsed(self, f: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(f, "little")
            if magic == self.MAGIC:
                self._expect("descriptor", 1)
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._expect("skippable", 4)
            else:
                self.broken = True
        elif state == "descriptor":
            d = f[0]
            single = (d >> 5) & 1
            self._checksum = bool((d >> 2) & 1)
            fcs = self._FCS_SIZES[d >> 6] or single
            rest = (0 if single else 1) + self._DICT_SIZES[d & 3] + fcs
            if rest:
                self._expect("header", rest)
            else:
                self._expect("block", 3)
        elif state == "header":
            self._expect("block", 3)
        elif state == "block":
            h = int.from_bytes(f, "little")
            self._last = bool(h & 1)
            kind, size = (h >> 1) & 3, h >> 3
            if kind == 3:
                self.broken = True
                return
            self._skip = 1 if kind == 1 else size
            if not self._skip:
                self._skipped()
        elif state == "checksum":
            self._frame_done()
        elif state == "skippable":
            self._state = "skipping"
            self._skip = int.from_bytes(f, "little")
            if not self._skip:
                self._skipped()

    def _skipped(self) -> None:
        if self._state == "skipping":
            self._expect("magic", 4)
        elif not self._last:
            self._expect("block", 3)
        elif self._checksum:
            self._expect("checksum", 4)
        else:
            self._frame_done()

    def _frame_done(self) -> None:
        self.frames += 1
        self._expect("magic", 4)


class _Watched:
    """A Stream whose bytes are also shown to ``frames``."""

    def __init__(self, inner: Stream, frames: ZstdFrames) -> None:
        self.inner, self.frames = inner, frames

    def readinto(self, buf: memoryview) -> int:
        n = self.inner.readinto(buf)
        self.frames.feed(buf[:n])
        return n

    def close(self) -> None:
        self.inner.close()


class ZstdStream:
    """zstd (all frames) with the ``zstandard`` binding; a stream cut inside a frame is an error."""

    def __init__(self, inner: Stream) -> None:
        import zstandard

        self.inner = inner
        self.frames = ZstdFrames()
        self._reader = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(
            _FileAdapter(_Watched(inner, self.frames)),  # type: ignore[arg-type]
            read_size=1 << 20,
            read_across_frames=True,
            closefd=False,
        )
        self._error = zstandard.ZstdError

    def readinto(self, buf: memoryview) -> int:
        try:
            n = int(self._reader.readinto(buf))
        except CDIError:
            raise
        except (self._error, OSError, ValueError) as e:
            raise invalid("zst data cannot be decompressed", e) from e
        if n == 0 and not self.frames.complete:
            raise invalid("zst data ends inside a frame", "the download was cut short")
        return n

    def close(self) -> None:
        try:
            self._reader.close()  # type: ignore[no-untyped-call]
        finally:
            self.inner.close()


class XzStream:
    """xz through ``xz -d -T2`` (multi-threaded for multi-block files), fed by a thread."""

    def __init__(self, inner: Stream, threads: int = 2) -> None:
        self.inner = inner
        self._proc = subprocess.Popen(
            ["xz", "-d", "-c", f"-T{threads}", "-q", "--memlimit=1GiB"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        for pipe in (self._proc.stdin, self._proc.stdout):  # fewer, larger pipe transfers
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # type: ignore[union-attr]
        self._feed_error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, name="xz-feed", daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        assert self._proc.stdin is not None
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while True:
                n = self.inner.readinto(view)
                if n == 0:
                    break
                self._proc.stdin.write(view[:n])
        except BrokenPipeError:
            pass  # xz stopped (bad data or close()); readinto reports its error
        except BaseException as e:
            self._feed_error = e
        finally:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()

    def readinto(self, buf: memoryview) -> int:
        assert self._proc.stdout is not None
        n: int = self._proc.stdout.readinto(buf)  # type: ignore[attr-defined]
        if n:
            return n
        self._feeder.join()
        if self._feed_error is not None:
            raise self._feed_error
        assert self._proc.stderr is not None
        err = self._proc.stderr.read().decode(errors="replace").strip()
        rc = self._proc.wait()
        if rc != 0:
            raise invalid("xz data cannot be decompressed", err or f"xz exited with {rc}")
        return 0

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for f in (self._proc.stdout, self._proc.stderr):
            if f is not None:
                f.close()
        self.inner.close()
        self._feeder.join(timeout=5)


DECODERS: dict[str, Callable[[Stream], Stream]] = {
    formats.GZ: GzipStream,
    formats.XZ: XzStream,
    formats.ZST: ZstdStream,
}


ReadAt = Callable[[int, int], bytes]


def _xz_decoder(top: Stream, random_access: tuple[ReadAt, int] | None) -> Stream:
    """In-process parallel decoding when the index can be read first; else ``xz -d -T2``."""
    if random_access is not None:
        from cdi.datapath import xzpar

        read_at, size = random_access
        try:
            lay = xzpar.layout(read_at, size)
        except CDIError as e:
            log.warning("cannot read the xz index with Range (%s); decoding with xz -T2", e)
            lay = None
        if lay is not None:
            log.info(
                "xz: %d blocks in %d stream(s); decoding them in parallel in-process",
                lay.block_count,
                len(lay.streams),
            )
            return xzpar.ParallelXzStream(top, lay, invalid)
        log.info("xz: not a multi-block file with small blocks; decoding with xz -T2")
    return XzStream(top)


def peel(
    stream: Stream, max_layers: int = 4, random_access: tuple[ReadAt, int] | None = None
) -> tuple[Peek, list[str], str]:
    """Strip compression layers while streaming; returns (stream, layers, inner format).

    ``random_access`` = (read_at(offset, n) -> bytes, size) of the stream as served, when it can
    be read at offsets (Range); it lets an outermost xz layer be decoded in parallel.
    """
    layers: list[str] = []
    top = Peek(stream)
    fmt = formats.sniff(top.head)
    while fmt in formats.COMPRESSIONS:
        if len(layers) >= max_layers:
            raise PermanentError(
                f"more than {max_layers} nested compression layers ({'+'.join(layers)}); refusing",
                reason=Reason.INVALID_IMAGE,
            )
        outer = not layers
        layers.append(fmt)
        if fmt == formats.XZ:
            decoder = _xz_decoder(top, random_access if outer else None)
        else:
            decoder = DECODERS[fmt](top)
        top = Peek(decoder)
        fmt = formats.sniff(top.head)
    return top, layers, fmt
