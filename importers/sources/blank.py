"""``spec.source.blank``: an empty raw disk of the volume's usable size.

Filesystem: ``disk.img`` is created sparse (``disk.img.part``, truncated, synced, renamed), or
fully allocated with ``posix_fallocate`` when preallocation is on. Block: the whole device is
made to read as zeroes, with discard (``PUNCH_HOLE``) when preallocation is off and with
write-zeroes (``ZERO_RANGE``) when it is on; when the device refuses both, zeroes are written.

``BlankSource`` is a Source of zero bytes so that the registry stays uniform; ``importers.main``
calls ``create()`` for it, which is what honours the target kind and preallocation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os

from cdi.api.contract import BLOCK, DISK_IMAGE_NAME, ImportSettings, Outcome, Progress, Reason, WorkerResult
from cdi.common.errors import PermanentError, TemporaryError
from cdi.common.units import MiB, round_down
from cdi.datapath.source import NbdkitPlan, SourceInfo

log = logging.getLogger(__name__)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_STEP = 1 << 30  # one fallocate call per GiB, so progress moves on large devices
_ZERO_CHUNK = 8 * MiB

try:
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc: find_library forks ldconfig, so only as a fallback
    _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class _Empty:
    def readinto(self, buf: memoryview) -> int:
        return 0

    def close(self) -> None:
        pass


class BlankSource:
    """Zero bytes of raw data (the processor would grow it to the usable size)."""

    blank = True

    def __init__(self, settings: ImportSettings) -> None:
        self.settings = settings

    def info(self) -> SourceInfo:
        return SourceInfo(size=0, supports_range=True, description="blank")

    def open(self, offset: int = 0) -> _Empty:
        return _Empty()

    def nbdkit_plan(self) -> NbdkitPlan | None:
        return None

    def close(self) -> None:
        pass


def usable_size(settings: ImportSettings) -> int:
    """Filesystem: capacity / (1 + overhead) rounded down to 1 MiB; Block: the device size."""
    if settings.volume_mode == BLOCK:
        if not settings.block_device:
            raise PermanentError(
                "IMPORTER_BLOCK_DEVICE is not set for a Block volume", reason=Reason.CONFIG_ERROR
            )
        fd = os.open(settings.block_device, os.O_RDONLY)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    if settings.image_size <= 0:
        raise PermanentError(
            "IMPORTER_IMAGE_SIZE must be the volume capacity in bytes (> 0)", reason=Reason.CONFIG_ERROR
        )
    return round_down(int(settings.image_size / (1 + settings.filesystem_overhead)), MiB)


def _progress(settings: ImportSettings, done: int, total: int, stage: str) -> None:
    if settings.progress_file:
        Progress(bytes_done=done, bytes_total=total, stage=stage).write(settings.progress_file)


def _zero_device(settings: ImportSettings, fd: int, size: int) -> str:
    """Make ``size`` bytes of the device read as zeroes; returns the method used."""
    mode = FALLOC_FL_ZERO_RANGE if settings.preallocation else FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    method = "write-zeroes" if settings.preallocation else "discard"
    offset = 0
    try:
        while offset < size:
            n = min(_STEP, size - offset)
            _fallocate(fd, mode, offset, n)
            offset += n
            _progress(settings, offset, size, "Zeroing")
        return method
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENODEV):
            raise
        log.info("%s not supported by %s (%s); writing zeroes", method, settings.block_device, e.strerror)
    zeroes = memoryview(bytes(_ZERO_CHUNK))
    os.lseek(fd, offset, os.SEEK_SET)
    while offset < size:
        offset += os.write(fd, zeroes[: min(_ZERO_CHUNK, size - offset)])
        if offset % _STEP == 0 or offset == size:
            _progress(settings, offset, size, "Zeroing")
    return "zero writes"


def create(settings: ImportSettings) -> WorkerResult:
    """Create the blank disk; raises CDIError subclasses for failures."""
    size = usable_size(settings)
    try:
        if settings.volume_mode == BLOCK:
            assert settings.block_device
            fd = os.open(settings.block_device, os.O_WRONLY)
            try:
                method = _zero_device(settings, fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
            log.info("blank block device %s: %d bytes zeroed by %s", settings.block_device, size, method)
        else:
            if not settings.data_dir or not os.path.isdir(settings.data_dir):
                raise PermanentError(
                    f"volume directory {settings.data_dir} does not exist", reason=Reason.CONFIG_ERROR
                )
            final = os.path.join(settings.data_dir, DISK_IMAGE_NAME)
            part = final + ".part"
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
            try:
                os.ftruncate(fd, size)
                if settings.preallocation and size:
                    os.posix_fallocate(fd, 0, size)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(part, 0o660)
            os.replace(part, final)
            dfd = os.open(settings.data_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            log.info(
                "blank image %s: %d bytes%s", final, size, " preallocated" if settings.preallocation else ""
            )
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TemporaryError(
                f"no space left to create the blank disk of {size} bytes ({e.strerror})",
                reason=Reason.TRANSIENT,
            ) from None
        raise TemporaryError(
            f"creating the blank disk failed: {e.strerror or e}", reason=Reason.TRANSIENT
        ) from None
    _progress(settings, size, size, "Complete")
    return WorkerResult(
        outcome=Outcome.SUCCEEDED,
        reason=Reason.IMPORT_COMPLETE,
        message="Import Complete",
        virtual_size=size,
        usable_size=size,
        preallocation_applied=settings.preallocation,
    )
