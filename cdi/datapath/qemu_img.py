"""Thin typed wrappers over ``qemu-img`` (argument lists, never shell strings).

Failures become ``QemuImgError`` (a PermanentError with reason InvalidImage) carrying the
command's stderr; a timeout is a TemporaryError.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdi.api.contract import Reason
from cdi.common.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)

QEMU_IMG = "qemu-img"
INFO_TIMEOUT = 60.0

# one "(NN.NN/100%)" progress record of ``qemu-img convert -p`` (records end with \r)
PROGRESS_RE = re.compile(rb"\((\d{1,3}(?:\.\d+)?)/100%\)")


class QemuImgError(PermanentError):
    reason = Reason.INVALID_IMAGE

    def __init__(self, action: str, returncode: int, stderr: str) -> None:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {returncode}"
        super().__init__(f"qemu-img {action} failed: {detail}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int
    actual_size: int | None = None
    backing_filename: str | None = None
    data_file: str | None = None
    extents: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageInfo:
        specific = (d.get("format-specific") or {}).get("data") or {}
        extents = tuple(str(e.get("filename", "")) for e in specific.get("extents", []) or [])
        return cls(
            format=str(d.get("format", "")),
            virtual_size=int(d.get("virtual-size", 0)),
            actual_size=d.get("actual-size"),
            backing_filename=d.get("backing-filename") or d.get("full-backing-filename"),
            data_file=specific.get("data-file"),
            extents=extents,
            raw=d,
        )


def info(filename: str, fmt: str | None = None, timeout: float = INFO_TIMEOUT) -> ImageInfo:
    argv = [QEMU_IMG, "info", "--output=json"]
    if fmt:
        argv += ["-f", fmt]
    argv.append(filename)
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise TemporaryError(f"qemu-img info did not answer within {timeout:.0f} s") from None
    if p.returncode != 0:
        raise QemuImgError("info", p.returncode, p.stderr.decode(errors="replace"))
    try:
        return ImageInfo.from_json(json.loads(p.stdout))
    except (ValueError, TypeError, AttributeError) as e:
        raise QemuImgError("info", 0, f"unexpected output: {e}") from e


def parse_progress(data: bytes) -> float | None:
    """The last percentage in a chunk of ``qemu-img -p`` output, or None."""
    found = PROGRESS_RE.findall(data)
    return float(found[-1]) if found else None


def convert(
    src: str,
    dst: str,
    src_fmt: str,
    dst_fmt: str = "raw",
    *,
    existing_target: bool = False,
    cache: str = "writeback",
    parallel: int = 8,
    on_progress: Callable[[float], None] | None = None,
) -> None:
    """``qemu-img convert -p -t CACHE -W -m N -f SRC_FMT -O DST_FMT [-n] SRC DST``.

    ``-m 8`` (qemu-img's default) rather than 16: each coroutine holds a 2 MiB buffer, so 16 cost
    qemu-img 16 MiB more RSS (40 vs 24 MiB) and measured no faster through nbdkit's curl plugin,
    which serves one request at a time. ``-t writeback`` (qemu-img flushes at the end) measured
    faster than ``-t none`` (O_DIRECT) for both qcow2 and compressed qcow2.
    """
    argv = [QEMU_IMG, "convert", "-p", "-t", cache, "-W", "-m", str(parallel), "-f", src_fmt, "-O", dst_fmt]
    if existing_target:
        argv.append("-n")
    argv += [src, dst]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert p.stdout is not None and p.stderr is not None
    stderr_chunks: list[bytes] = []

    import threading

    def drain() -> None:
        assert p.stderr is not None
        stderr_chunks.append(p.stderr.read(64 << 10))
        p.stderr.read()  # keep draining, keep only the head

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        while True:
            data = p.stdout.read(4096)
            if not data:
                break
            pct = parse_progress(data)
            if pct is not None and on_progress is not None:
                on_progress(pct)
        rc = p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        t.join(timeout=5)
    if rc != 0:
        raise QemuImgError("convert", rc, b"".join(stderr_chunks).decode(errors="replace"))


def resize(filename: str, size: int, fmt: str = "raw", preallocation: str | None = None) -> None:
    argv = [QEMU_IMG, "resize", "-f", fmt]
    if preallocation:
        argv.append(f"--preallocation={preallocation}")
    argv += [filename, str(size)]
    p = subprocess.run(argv, capture_output=True, check=False)
    if p.returncode != 0:
        raise QemuImgError("resize", p.returncode, p.stderr.decode(errors="replace"))
