"""The import state machine: one source, one target, one WorkerResult.

``run(source, settings, reporter)`` probes the source, peels compression while streaming,
detects the format and walks explicit phases::

    PROBE -> STREAM_RAW ------------------------------------> FINALIZE -> DONE
          -> STREAM_QCOW2 (qcow2 decoded in one pass) -------> FINALIZE
          -> CONVERT_DIRECT (nbdkit + qemu-img, no scratch) -> FINALIZE
          -> STREAM_SCRATCH -> CONVERT_SCRATCH ------------> FINALIZE
          -> EXTRACT (tar, contentType archive) ------------> DONE

Expected failures never escape: ``CDIError`` becomes a TEMPORARY/PERMANENT result with the
error's reason. Filesystem targets are written as ``disk.img.part`` and renamed to ``disk.img``
only once complete, resized and synced.

Bounds: nothing the source sends makes the data path write much more than the volume can hold.
The target takes at most the usable size; the qcow2 spool covers at most the longest qcow2 file
for that size (``qcow2stream.max_file_size``); the scratch copy of a container at most
``scratch_limit(usable)``. An empty source (0 bytes, or compressed data that holds none) fails
as NotAnImage instead of making a blank disk. A stream that overflows the target is read on,
counting and writing nothing, for at most ``COUNT_SECONDS`` and ``COUNT_BYTES``, so that the
DataVolumeTooSmall message names a capacity that fits; past that budget it says "more than"
and how to learn the size instead.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdi.api.contract import BLOCK, ImportSettings, Outcome, Reason, WorkerResult
from cdi.common.errors import CDIError, PermanentError, TemporaryError
from cdi.common.units import MiB, format_quantity, human_bytes, round_down, round_up
from cdi.datapath import archive, formats, imagecheck, qcow2stream, qemu_img, sparse, streams, xzpar
from cdi.datapath.nbdkit import Nbdkit
from cdi.datapath.progress import ProgressReporter
from cdi.datapath.source import Source, SourceInfo

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
ARCHIVE = "archive"
RESUME_BACKOFF = 0.5  # seconds, times the resumes so far
# After an overflow: how long, and how far, a stream is read on to learn its size. Counting
# writes nothing; it costs the download of the rest and its decompression (gz and zst decode
# gigabytes per second, xz a few hundred MB/s), and gives way to the first error.
COUNT_SECONDS = 60.0
COUNT_BYTES = 1 << 40
SCRATCH_SLACK = 64 * MiB
MEASURE_HINTS = {
    formats.XZ: "`xz -l <file>` shows it (Uncompressed)",
    formats.ZST: "`zstd -lv <file>` shows it (Decompressed Size; if unknown, `zstd -dc <file> | wc -c` counts it)",
    formats.GZ: "`zcat <file> | wc -c` counts it (`gzip -l` is wrong above 4 GiB)",
}


class Phase(enum.Enum):
    PROBE = "Probe"
    STREAM_RAW = "StreamRaw"
    STREAM_QCOW2 = "StreamQcow2"
    CONVERT_DIRECT = "ConvertDirect"
    STREAM_SCRATCH = "StreamScratch"
    CONVERT_SCRATCH = "ConvertScratch"
    EXTRACT = "Extract"
    FINALIZE = "Finalize"
    DONE = "Done"


class TooSmallError(PermanentError):
    """The image does not fit the volume; carries the sizes for the result.

    ``required_capacity`` is None when no capacity is known to fit (the image's size is only
    known as a lower bound): the message then says how to learn the size instead, and the
    controller keeps it rather than wording a "request at least" of its own.
    """

    reason = Reason.TOO_SMALL

    def __init__(
        self, virtual_size: int | None, usable_size: int, required_capacity: int | None, message: str = ""
    ) -> None:
        if not message:
            assert virtual_size is not None and required_capacity is not None
            message = (
                f"DataVolume too small: image virtual size {human_bytes(virtual_size)}, usable "
                f"{human_bytes(usable_size)}; request at least {format_quantity(required_capacity)}"
            )
        super().__init__(message)
        self.virtual_size = virtual_size
        self.usable_size = usable_size
        self.required_capacity = required_capacity


def scratch_limit(usable: int) -> int:
    """The most a container image (vmdk, vdi, vhd, vhdx, qcow2 for qemu-img) is let take in scratch.

    Its virtual size is at most ``usable``; its file is that data plus metadata: at most about an
    eighth more for the worst layouts qemu-img reads (streamOptimized vmdk with 4 KiB grains, each
    padded to a sector; small-block vhd with a bitmap sector per block), far less for the usual
    ones (1/4096 for vhd, 1/8192 for vmdk and qcow2 at their default sizes). A quarter leaves room
    for both; ``SCRATCH_SLACK`` covers the fixed regions (vhdx log and metadata, a LUKS header).
    """
    return usable + usable // 4 + SCRATCH_SLACK


def _measure_hint(layers: list[str]) -> str:
    """How a user learns the decoded size of a stream with these compression layers."""
    if not layers:
        return "check the image's size (its file size, or `qemu-img info`)"
    if len(layers) == 1:
        return MEASURE_HINTS[layers[0]]
    return "decompress it and check its size"


def usable_size(settings: ImportSettings) -> int:
    """Filesystem: capacity / (1 + overhead) rounded down to 1 MiB; Block: the device size."""
    if settings.volume_mode == BLOCK:
        if not settings.block_device:
            raise PermanentError(
                "Block volume without a device (IMPORTER_BLOCK_DEVICE)", reason=Reason.CONFIG_ERROR
            )
        fd = os.open(settings.block_device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return sparse.device_size(fd)
        finally:
            os.close(fd)
    if settings.image_size <= 0:
        raise PermanentError(
            "IMPORTER_IMAGE_SIZE must be a positive size in bytes", reason=Reason.CONFIG_ERROR
        )
    return round_down(int(settings.image_size / (1 + settings.filesystem_overhead)), MiB)


def required_capacity(virtual_size: int, settings: ImportSettings) -> int:
    need = round_up(virtual_size, MiB)
    if settings.volume_mode == BLOCK:
        return need
    return round_up(int(need * (1 + settings.filesystem_overhead) + 0.999999), MiB)


@dataclass
class _Opened:
    """One attempt's stream stack: metered (as served) under the peeled, decoded top."""

    metered: streams.Metered
    top: streams.Peek
    layers: list[str]
    fmt: str

    @property
    def served(self) -> int:
        """Bytes read from the source by this attempt."""
        return self.metered.count - self.metered.start

    def close(self) -> None:
        try:
            self.top.close()
        except Exception:  # closing a broken stream must not hide the real error
            log.debug("closing the stream failed", exc_info=True)


@dataclass
class _Job:
    source: Source
    settings: ImportSettings
    reporter: ProgressReporter
    info: SourceInfo = field(default_factory=lambda: SourceInfo(size=None, supports_range=False))
    usable: int = 0
    checksum: tuple[str, str] | None = None
    hasher: Any = None
    layers: list[str] = field(default_factory=list)
    fmt: str = formats.RAW
    head: bytes = b""
    virtual_size: int | None = None
    transferred: int = 0
    data_bytes: int = 0
    resumes: int = 0
    scratch_reason: str = ""
    preallocation_applied: bool = False
    path: str = ""
    note: str = ""


def run(source: Source, settings: ImportSettings, reporter: ProgressReporter) -> WorkerResult:
    """Import ``source`` into the target named by ``settings``; never raises for expected failures."""
    job = _Job(source, settings, reporter)
    try:
        _Machine(job).run()
    except TooSmallError as e:
        return _failure(job, Outcome.PERMANENT, e, e.virtual_size, e.usable_size, e.required_capacity)
    except PermanentError as e:
        return _failure(job, Outcome.PERMANENT, e)
    except TemporaryError as e:
        return _failure(job, Outcome.TEMPORARY, e)
    except CDIError as e:
        return _failure(job, Outcome.TEMPORARY, e)
    except OSError as e:
        log.exception("I/O error during import")
        err = TemporaryError(f"I/O error: {e}", reason=Reason.INTERNAL)
        return _failure(job, Outcome.TEMPORARY, err)
    except Exception as e:
        log.exception("unexpected error during import")
        err = TemporaryError(f"internal error: {type(e).__name__}: {e}", reason=Reason.INTERNAL)
        return _failure(job, Outcome.TEMPORARY, err)
    finally:
        reporter.flush()
    return WorkerResult(
        outcome=Outcome.SUCCEEDED,
        reason=Reason.IMPORT_COMPLETE,
        message=f"Import complete ({_describe(job)})",
        virtual_size=job.virtual_size,
        usable_size=job.usable or None,
        **_common(job),
    )


def _describe(job: _Job) -> str:
    return "+".join([*job.layers[::-1], job.fmt]) if job.layers else job.fmt


def _common(job: _Job) -> dict[str, Any]:
    return dict(
        bytes_transferred=job.transferred,
        bytes_written=job.data_bytes,
        preallocation_applied=job.preallocation_applied,
        scratch_used=bool(job.scratch_reason),
        scratch_reason=job.scratch_reason,
        resumes=job.resumes,
        details={"format": job.fmt, "compression": job.layers, "path": job.path},
    )


def _failure(
    job: _Job,
    outcome: Outcome,
    err: CDIError,
    virtual: int | None = None,
    usable: int | None = None,
    required: int | None = None,
) -> WorkerResult:
    log.warning("import failed (%s): %s", err.reason, err.message)
    return WorkerResult(
        outcome=outcome,
        reason=str(err.reason),
        message=err.message,
        virtual_size=virtual if virtual is not None else job.virtual_size,
        usable_size=usable if usable is not None else (job.usable or None),
        required_capacity=required,
        **_common(job),
    )


class _Machine:
    def __init__(self, job: _Job) -> None:
        self.job = job
        self.s = job.settings
        self.opened: _Opened | None = None
        self.scratch_dir: str | None = None
        self.scratch_path = ""
        self.header_virtual_size: int | None = None  # a container's virtual size, from its header

    # --- driver -----------------------------------------------------------------------------

    def run(self) -> None:
        phase = Phase.PROBE
        visited: set[Phase] = set()
        steps: dict[Phase, Callable[[], Phase]] = {
            Phase.PROBE: self.probe,
            Phase.STREAM_RAW: self.stream_raw,
            Phase.STREAM_QCOW2: self.stream_qcow2,
            Phase.CONVERT_DIRECT: self.convert_direct,
            Phase.STREAM_SCRATCH: self.stream_scratch,
            Phase.CONVERT_SCRATCH: self.convert_scratch,
            Phase.EXTRACT: self.extract,
        }
        try:
            while phase is not Phase.DONE:
                if phase in visited:
                    raise PermanentError(
                        f"internal: phase {phase.value} visited twice", reason=Reason.INTERNAL
                    )
                visited.add(phase)
                log.info("phase %s", phase.value)
                phase = steps[phase]()
        except BaseException:
            self._discard_target()
            raise
        finally:
            if self.opened is not None:
                self.opened.close()
            if self.scratch_dir is not None:
                shutil.rmtree(self.scratch_dir, ignore_errors=True)

    # --- helpers ----------------------------------------------------------------------------

    @property
    def final_path(self) -> str:
        return self.s.target_path

    @property
    def part_path(self) -> str:
        return self.final_path + PART_SUFFIX

    def _open(self, offset: int = 0, hasher: Any = None) -> _Opened:
        job = self.job
        total = job.info.size or 0

        def on_bytes(n: int) -> None:
            job.reporter.update(n, total, "Transferring", job.note)

        stream = job.source.open(offset)
        metered = streams.Metered(stream, start=offset, hasher=hasher, on_bytes=on_bytes)
        random_access = None
        size = job.info.size or 0
        if offset == 0 and job.info.supports_range and size >= xzpar.MIN_SIZE:
            random_access = (self._read_at, size)
        try:
            top, layers, fmt = streams.peel(metered, random_access=random_access)
        except BaseException:
            metered.close()
            raise
        return _Opened(metered, top, layers, fmt)

    def _read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the source at ``offset`` (a Range request; fewer at the end)."""
        st = self.job.source.open(offset)
        try:
            return streams.read_full(st, length)
        finally:
            st.close()

    def _new_hasher(self) -> Any:
        return hashlib.new(self.job.checksum[0]) if self.job.checksum else None

    def _verify_checksum(self) -> None:
        job = self.job
        if job.checksum is None:
            return
        algo, want = job.checksum
        got = job.hasher.hexdigest()
        if got != want:
            raise PermanentError(
                f"checksum mismatch: expected {algo}:{want}, got {algo}:{got}", reason=Reason.CHECKSUM_ERROR
            )

    def _check_fits(self, virtual: int) -> None:
        job = self.job
        if virtual > job.usable:
            raise TooSmallError(virtual, job.usable, required_capacity(virtual, self.s))

    def _too_small(self, e: sparse.Overflow) -> TooSmallError:
        """The image stream overflowed the usable size: its true size, or how to learn it."""
        job = self.job
        if e.complete:
            return TooSmallError(e.produced, job.usable, required_capacity(e.produced, self.s))
        return TooSmallError(
            e.produced,
            job.usable,
            None,
            f"DataVolume too small: the image is more than {human_bytes(e.produced)} ({e.produced} bytes), "
            f"usable {human_bytes(job.usable)}; its full size is not known ({e.stopped}): "
            f"{_measure_hint(job.layers)}, then request a volume that holds it (with spec.pvc, add the "
            "filesystem overhead)",
        )

    def _discard_target(self) -> None:
        if self.s.volume_mode != BLOCK and self.s.data_dir:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.part_path)

    def _open_target(self) -> sparse.Target:
        if self.s.volume_mode == BLOCK:
            assert self.s.block_device
            return sparse.Target.open_block(self.s.block_device, preallocate=self.s.preallocation)
        return sparse.Target.create_file(self.part_path, self.job.usable, preallocate=self.s.preallocation)

    def _commit_file(self, target: sparse.Target) -> None:
        """Grow to the usable size, sync, and (Filesystem) rename the part file into place."""
        job = self.job
        job.reporter.update(job.virtual_size or 0, job.virtual_size or 0, "Resizing", job.note)
        target.finish_size(job.usable)
        job.preallocation_applied = bool(self.s.preallocation)
        job.reporter.update(job.virtual_size or 0, job.virtual_size or 0, "Syncing", job.note)
        target.sync()
        target.close()
        if not target.is_block:
            os.chmod(self.part_path, 0o660)
            os.replace(self.part_path, self.final_path)
            _fsync_dir(os.path.dirname(self.final_path))

    # --- phases -----------------------------------------------------------------------------

    def probe(self) -> Phase:
        job, s = self.job, self.s
        if s.checksum:
            job.checksum = streams.parse_checksum(s.checksum)
        if s.content_type == ARCHIVE and s.volume_mode == BLOCK:
            raise PermanentError(
                "contentType archive needs a Filesystem volume; use volumeMode Filesystem",
                reason=Reason.CONFIG_ERROR,
            )
        if s.volume_mode != BLOCK and not (s.data_dir and os.path.isdir(s.data_dir)):
            raise PermanentError(f"data directory {s.data_dir!r} does not exist", reason=Reason.CONFIG_ERROR)
        job.usable = usable_size(s)
        job.info = job.source.info()
        job.hasher = self._new_hasher()
        self.opened = self._open(0, job.hasher)
        job.layers, job.fmt, job.head = self.opened.layers, self.opened.fmt, self.opened.top.head
        fmt = job.fmt
        log.info("source %s: %s", job.info.description, _describe(job))

        if not job.head:
            raise self._empty()
        if fmt == formats.HTML:
            raise PermanentError(
                "the server returned an HTML page, not a disk image; check the URL",
                reason=Reason.NOT_AN_IMAGE,
            )
        if s.content_type == ARCHIVE:
            if fmt != formats.TAR:
                raise PermanentError(
                    f"contentType archive needs a tar archive, but the source is {_describe(job)}",
                    reason=Reason.INVALID_IMAGE,
                )
            job.path = "archive"
            return Phase.EXTRACT
        if fmt == formats.VMDK_DESCRIPTOR:
            raise PermanentError(
                "the image is a VMDK descriptor that refers to separate extent files; CDI imports "
                "self-contained images only: convert it to a monolithic vmdk or qcow2 with qemu-img convert",
                reason=Reason.UNSAFE_IMAGE,
            )
        if fmt == formats.RAW and not job.layers and self._fixed_vhd():
            fmt = job.fmt = formats.VHD
        if fmt in formats.CONTAINERS:
            imagecheck.check_head(fmt, job.head)
            facts = formats.header_facts(fmt, job.head)
            if facts.virtual_size:
                self._check_fits(facts.virtual_size)
                self.header_virtual_size = facts.virtual_size
            if fmt == formats.QCOW2:
                phase = self._qcow2_path()
                if phase is not None:
                    return phase
            reason = self._scratch_reason()
            if reason:
                job.scratch_reason = reason
                job.note = f"scratch space used: {reason}"
                log.info("%s", job.note)
                return Phase.STREAM_SCRATCH  # (a vhdx is checked on the scratch copy)
            if fmt == formats.VHDX:
                imagecheck.check_vhdx(self._read_at)  # its metadata lies beyond the head: Range
            return Phase.CONVERT_DIRECT
        # raw, iso, and tar with contentType kubevirt are written as they are
        if not job.layers and job.info.size is not None:
            job.virtual_size = job.info.size
            self._check_fits(job.info.size)
        return Phase.STREAM_RAW

    def _empty(self) -> PermanentError:
        job = self.job
        if job.layers:
            what = (
                f"the source is {'+'.join(job.layers[::-1])} compressed data that decompresses to "
                "nothing (0 bytes)"
            )
        else:
            what = "the source is empty (0 bytes)"
        return PermanentError(
            f"{what}; there is no image to import: check that the URL serves the image file (or upload "
            "the image file itself)",
            reason=Reason.NOT_AN_IMAGE,
        )

    def _qcow2_path(self) -> Phase | None:
        """Decode a qcow2 in one pass unless the decoder cannot (None: qemu-img's paths)."""
        job = self.job
        header = qcow2stream.parse_header(job.head)
        why = qcow2stream.not_streamable(header)
        if why:
            log.info("%s: converting it with qemu-img", why)
            return None
        if header.nb_snapshots and not job.layers and job.checksum is None and not self._scratch_reason():
            # internal snapshots hold clusters the current disk does not use: let qemu-img
            # fetch only the current ones through nbdkit
            log.info("the qcow2 image has %d internal snapshot(s): reading it through nbdkit", header.nb_snapshots)
            return Phase.CONVERT_DIRECT
        return Phase.STREAM_QCOW2

    def _fixed_vhd(self) -> bool:
        """A fixed VHD is raw data plus a 512-byte footer: look at the end when we can."""
        info = self.job.info
        if not info.supports_range or not info.size or info.size % 512 or info.size < 1024:
            return False
        try:
            st = self.job.source.open(info.size - 512)
        except CDIError:
            return False
        try:
            return formats.is_vhd_footer(streams.read_full(st, 512))
        except CDIError:
            return False
        finally:
            st.close()

    def _scratch_reason(self) -> str:
        job = self.job
        if job.layers:
            return f"the image is compressed ({'+'.join(job.layers)})"
        if job.checksum is not None:
            return "a checksum was requested"
        if not job.info.supports_range:
            return "the source does not support Range requests"
        if job.source.nbdkit_plan() is None:
            return "the source cannot be served through nbdkit"
        return ""

    def _count_budget(self) -> sparse.CountBudget:
        return sparse.CountBudget(COUNT_SECONDS, COUNT_BYTES)

    def _stream_with_resume(self, target: sparse.Target, limit: int) -> int:
        """Pump the opened stream into ``target``, resuming after transient errors; returns the end.

        Raises ``sparse.Overflow`` (counted on within the budget) past ``limit``.
        """
        job = self.job
        assert self.opened is not None
        out_pos = 0

        def on_written(pos: int) -> None:
            nonlocal out_pos
            out_pos = pos

        while True:
            opened = self.opened
            assert opened is not None
            try:
                result = sparse.pump(opened.top, target, out_pos, limit, on_written, self._count_budget())
                job.transferred += opened.served
                job.data_bytes = target.data_bytes
                return result.end
            except sparse.Overflow:
                job.transferred += opened.served
                raise
            except TemporaryError as e:
                job.transferred += opened.served
                opened.close()
                self.opened = None
                target.sync()  # everything written so far is durable before we go on
                out_pos = self._reopen(opened, e, target)

    def _reopen(self, failed: _Opened, err: TemporaryError, target: sparse.Target) -> int:
        """Open the source again after ``err`` (within the resume budget); returns the output offset.

        Uncompressed streams with Range resume at the last durable offset; everything else
        restarts from 0 (re-decoded output is written again at the same offsets).
        """
        job, s = self.job, self.s
        while True:
            if job.resumes >= s.max_resumes:
                raise err
            job.resumes += 1
            job.reporter.resumed()
            time.sleep(min(RESUME_BACKOFF * (job.resumes - 1), 10.0))
            try:
                if not job.layers and job.info.supports_range:
                    offset = failed.metered.count
                    log.warning("transient error at %d bytes (%s); resuming there", offset, err)
                    stream = job.source.open(offset)
                    metered = streams.Metered(stream, offset, job.hasher, failed.metered.on_bytes)
                    self.opened = _Opened(metered, streams.Peek(metered, 0), job.layers, job.fmt)
                    return offset
                log.warning("transient error (%s); restarting from the beginning", err)
                job.hasher = self._new_hasher()
                target.data_bytes = 0
                self.opened = self._open(0, job.hasher)
                if self.opened.fmt != job.fmt or self.opened.layers != job.layers:
                    raise PermanentError(
                        f"the source changed while it was read (was {_describe(job)}, now "
                        f"{'+'.join([*self.opened.layers[::-1], self.opened.fmt])})",
                        reason=Reason.INVALID_IMAGE,
                    )
                return 0
            except TemporaryError as e:
                err = e

    def stream_raw(self) -> Phase:
        job = self.job
        job.path = "stream"
        target = self._open_target()
        try:
            try:
                end = self._stream_with_resume(target, job.usable)
            except sparse.Overflow as e:
                raise self._too_small(e) from None
            if job.virtual_size is None:
                job.virtual_size = end
            self._verify_checksum()
            self._commit_file(target)
        finally:
            target.close()
        return Phase.DONE

    def stream_qcow2(self) -> Phase:
        job = self.job
        job.path = "qcow2-stream"
        header = qcow2stream.parse_header(job.head)
        job.virtual_size = header.size
        target = self._open_target()
        spool = qcow2stream.Spool(self._spool_path)
        decoder: qcow2stream.Decoder | None = None
        try:
            decoder = qcow2stream.Decoder(header, target, spool, job.usable)
            while True:
                opened = self.opened
                assert opened is not None
                try:
                    with sparse.ChunkReader(opened.top) as reader:
                        while (item := reader.get()) is not None:
                            buf, n = item
                            decoder.feed(decoder.pos, memoryview(buf)[:n])
                            reader.release(buf)
                    job.transferred += opened.served
                    break
                except TemporaryError as e:
                    job.transferred += opened.served
                    opened.close()
                    self.opened = None
                    target.sync()
                    offset = self._reopen(opened, e, target)
                    if offset != 0 and offset != decoder.pos:
                        raise TemporaryError(
                            f"internal: resumed at {offset}, decoded up to {decoder.pos}", reason=Reason.INTERNAL
                        ) from e
                    if offset == 0:
                        # restarted from the beginning: decode again (same bytes, same offsets)
                        decoder.close()
                        spool.close()
                        spool = qcow2stream.Spool(self._spool_path)
                        decoder = qcow2stream.Decoder(header, target, spool, job.usable)
            decoder.finish()
            job.data_bytes = target.data_bytes
            if decoder.spooled_used:
                job.scratch_reason = (
                    f"the qcow2 image has tables after the data they map "
                    f"({human_bytes(decoder.spooled_used)} went through scratch space)"
                )
                log.info("scratch space used: %s", job.scratch_reason)
            self._verify_checksum()
            self._commit_file(target)
        finally:
            if decoder is not None:
                decoder.close()
            spool.close()
            target.close()
        return Phase.DONE

    def _spool_path(self) -> str:
        s = self.s
        if self.scratch_dir is None:
            base = s.scratch_dir or (s.data_dir if s.volume_mode != BLOCK else None)
            self.scratch_dir = tempfile.mkdtemp(prefix=".cdi-scratch-", dir=base)
        return os.path.join(self.scratch_dir, "qcow2-spool")

    def convert_direct(self) -> Phase:
        job = self.job
        job.path = "nbdkit"
        assert self.opened is not None
        self.opened.close()
        self.opened = None
        plan = job.source.nbdkit_plan()
        assert plan is not None
        with Nbdkit(plan) as uri:
            self._convert(uri)
        return Phase.DONE

    def stream_scratch(self) -> Phase:
        job, s = self.job, self.s
        job.path = "scratch"
        base = s.scratch_dir or (s.data_dir if s.volume_mode != BLOCK else None)
        self.scratch_dir = tempfile.mkdtemp(prefix=".cdi-scratch-", dir=base)
        self.scratch_path = os.path.join(self.scratch_dir, f"image.{job.fmt}")
        scratch = sparse.Target.create_file(self.scratch_path, 0)
        try:
            limit = scratch_limit(job.usable)
            try:
                end = self._stream_with_resume(scratch, limit)
            except sparse.Overflow as e:
                raise self._scratch_overflow(e, limit) from None
            scratch.finish_size(end)
            job.data_bytes = 0  # the target's data is counted after the convert
        finally:
            scratch.close()
        self._verify_checksum()
        return Phase.CONVERT_SCRATCH

    def _scratch_overflow(self, e: sparse.Overflow, limit: int) -> PermanentError:
        """A container file longer than ``scratch_limit``: malformed, or (size unknown) too large."""
        job = self.job
        size = f"{human_bytes(e.produced)}" if e.complete else f"more than {human_bytes(e.produced)}"
        if self.header_virtual_size is not None:  # checked against the usable size already
            return PermanentError(
                f"the {job.fmt} image file is {size}, more than an image of virtual size "
                f"{human_bytes(self.header_virtual_size)} can need (at most {human_bytes(limit)} with "
                "its metadata); it is malformed or padded, or holds more than the current disk (e.g. "
                "internal snapshots): check it with `qemu-img check` and import a compact copy made with "
                "`qemu-img convert`",
                reason=Reason.INVALID_IMAGE,
            )
        return TooSmallError(
            None,
            job.usable,
            None,
            f"DataVolume too small: the {job.fmt} image file is {size}, more than an image for a volume "
            f"of usable size {human_bytes(job.usable)} takes with its metadata ({human_bytes(limit)}); a "
            f"{job.fmt}'s virtual size is not known before it is converted: `qemu-img info <file>` shows "
            "it. If it is larger, request a volume that holds it (with spec.pvc, add the filesystem "
            "overhead); if not, the file is padded or holds more than the disk: import a compact copy "
            "made with `qemu-img convert`",
        )

    def convert_scratch(self) -> Phase:
        assert self.opened is not None
        self.opened.close()
        self.opened = None
        if self.job.fmt == formats.VHDX:
            with open(self.scratch_path, "rb") as f:
                imagecheck.check_vhdx(lambda off, n: os.pread(f.fileno(), n, off))
        self._convert(self.scratch_path)
        return Phase.DONE

    def _convert(self, src: str) -> None:
        """``qemu-img info`` (checked: nothing but the image itself is opened), then convert.

        Both run confined (``sandbox``) on the image named with explicit options (``qemu_img``).
        A Filesystem target is created here, sparse and of the usable size, so that qemu-img
        writes into an existing file (``-n --target-is-zero``).
        """
        job, s = self.job, self.s
        qfmt = formats.QEMU_FORMAT[job.fmt]
        info = qemu_img.info(src, qfmt)
        imagecheck.check_info(info, job.fmt)
        job.virtual_size = info.virtual_size
        self._check_fits(info.virtual_size)
        total = info.virtual_size

        def on_progress(pct: float) -> None:
            job.reporter.update(int(total * pct / 100), total, "Converting", job.note)

        job.reporter.update(0, total, "Converting", job.note)
        if s.volume_mode == BLOCK:
            assert s.block_device
            qemu_img.convert(src, s.block_device, qfmt, on_progress=on_progress)
            target = sparse.Target.open_block(s.block_device)
            job.data_bytes = info.virtual_size
        else:
            target = sparse.Target.create_file(self.part_path, job.usable)
            target.preallocated = s.preallocation  # applied by _commit_file, after qemu-img
            qemu_img.convert(src, self.part_path, qfmt, target_is_zero=True, on_progress=on_progress)
            job.data_bytes = sparse.allocated_bytes(self.part_path)
        try:
            self._commit_file(target)
        finally:
            target.close()

    def extract(self) -> Phase:
        job, s = self.job, self.s
        assert s.data_dir
        while True:
            opened = self.opened
            assert opened is not None
            try:
                job.data_bytes = archive.extract(
                    opened.top,
                    s.data_dir,
                    job.usable,
                    on_progress=None,
                    before_commit=self._drain_and_verify,
                )
                job.transferred += opened.served
                return Phase.DONE
            except TemporaryError as e:
                job.transferred += opened.served
                if job.resumes >= s.max_resumes:
                    raise
                opened.close()
                self.opened = None
                job.resumes += 1
                job.reporter.resumed()
                log.warning("transient error (%s); restarting the extraction", e)
                job.hasher = self._new_hasher()
                self.opened = self._open(0, job.hasher)

    def _drain_and_verify(self) -> None:
        """Read what follows the tar's end marker (so the checksum covers every byte served)."""
        assert self.opened is not None
        if self.job.checksum is not None:
            buf = memoryview(bytearray(1 << 20))
            while self.opened.top.readinto(buf):
                pass
        self._verify_checksum()


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
