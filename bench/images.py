"""Test images, made from a seed after the recipe in shared/research/perf-anchors.md section 3.

``disk.raw`` (4 GiB; 256 MiB with --quick): about 37.5 % of the virtual size is data, in extents
of 1-64 MiB (scaled down with the image) with holes between them, all within the first 65 % of
the image; the rest is a hole. Of the data, 45 % is random (incompressible), 45 % is text-like
(compressible, about 5 bits of entropy a byte) and 10 % is a half-zero pattern (4 KiB random +
4 KiB zeroes in every 8 KiB). Its forms: qcow2 (``qemu-img convert -O qcow2``), compressed qcow2
(``-c``, zlib clusters), gz (``pigz -6``, one gzip member), xz (``xz -1 -T2``: multi-block) and
zst (``zstd -3 -T2``).

``sparse.raw`` (2 GiB; 256 MiB with --quick): 1 MiB of random data at the start and 63 extents of
512 KiB (scaled with the image) at random 1 MiB-aligned offsets; its qcow2 is ``sparse.qcow2``.

``tiny.raw``: 1 MiB of random data, for the fixed overhead of one import.

Everything is deterministic for a seed: the layout comes from ``random.Random(seed)`` and the
bytes from an AES-CTR keystream keyed by the seed. A manifest records the recipe, so images are
made once and reused while the recipe, seed and sizes are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

RECIPE_VERSION = 1
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

FULL_DISK = 4 * GiB
FULL_SPARSE = 2 * GiB
QUICK_SIZE = 256 * MiB


@dataclass(frozen=True)
class Format:
    name: str  # the name used on the command line (--only)
    file: str  # file name in the images dir
    reference: str  # the raw image it decodes to ("disk.raw", "sparse.raw", "tiny.raw")
    qemu_format: str | None  # raw / qcow2 for qemu-img and nbdkit routes; None: a stream format
    compression: str | None  # gz / xz / zst
    label: str


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("raw", "disk.raw", "disk.raw", "raw", None, "raw"),
        Format("qcow2", "disk.qcow2", "disk.raw", "qcow2", None, "qcow2"),
        Format("qcow2c", "disk-c.qcow2", "disk.raw", "qcow2", None, "qcow2 (compressed clusters)"),
        Format("gz", "disk.raw.gz", "disk.raw", None, "gz", "raw.gz (pigz -6)"),
        Format("xz", "disk.raw.xz", "disk.raw", None, "xz", "raw.xz (xz -1 -T2, multi-block)"),
        Format("zst", "disk.raw.zst", "disk.raw", None, "zst", "raw.zst (zstd -3 -T2)"),
        Format("sparse", "sparse.raw", "sparse.raw", "raw", None, "sparse raw"),
        Format("sqcow2", "sparse.qcow2", "sparse.raw", "qcow2", None, "sparse qcow2"),
    ]
}
TINY = Format("tiny", "tiny.raw", "tiny.raw", "raw", None, "1 MiB raw (fixed overhead)")
DEFAULT_FORMATS = list(FORMATS)


@dataclass
class ImageInfo:
    name: str
    file: str
    path: str
    reference: str  # path of the reference raw
    virtual_size: int
    file_size: int
    alloc: int
    data_bytes: int  # non-zero 4 KiB blocks of the reference, in bytes


@dataclass
class Extent:
    offset: int
    length: int
    kind: str  # random | text | halfzero


class ImageSet:
    def __init__(self, directory: str, images: dict[str, ImageInfo], meta: dict[str, object]) -> None:
        self.directory = directory
        self.images = images
        self.meta = meta

    def __getitem__(self, name: str) -> ImageInfo:
        return self.images[name]

    def to_dict(self) -> dict[str, object]:
        return {
            "directory": self.directory,
            "meta": self.meta,
            "images": {k: asdict(v) for k, v in self.images.items()},
        }


# --- bytes ------------------------------------------------------------------------------------


class Keystream:
    """Deterministic fast pseudo-random bytes (AES-128-CTR of zeroes), one stream per label."""

    def __init__(self, seed: int, label: str) -> None:
        key = hashlib.sha256(f"pycdi-bench/{seed}/{label}".encode()).digest()[:16]
        self._enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()

    def read(self, n: int) -> bytes:
        return self._enc.update(bytes(n))


# 32 symbols: letters weighted like English plus spaces, newline and punctuation (5 bits/byte).
_ALPHABET = b"etaoinshrdlucmfwyp    \n.,etaoins"
assert len(_ALPHABET) == 32
_TEXT_TABLE = bytes(_ALPHABET[i % 32] for i in range(256))


def make_bytes(ks: Keystream, kind: str, n: int) -> bytes:
    if kind == "random":
        return ks.read(n)
    if kind == "text":
        return ks.read(n).translate(_TEXT_TABLE)
    if kind == "halfzero":
        # 4 KiB random, 4 KiB zero, repeated (n is a multiple of 8 KiB)
        rnd = ks.read(n // 2)
        out = bytearray(n)
        for i in range(0, n // (8 * KiB)):
            out[i * 8 * KiB : i * 8 * KiB + 4 * KiB] = rnd[i * 4 * KiB : (i + 1) * 4 * KiB]
        return bytes(out)
    raise ValueError(kind)


# --- layouts ----------------------------------------------------------------------------------


def disk_layout(size: int, seed: int) -> list[Extent]:
    """Extents of data for disk.raw: ~37.5 % of size, within the first 65 %."""
    rng = random.Random(seed)
    scale = size / FULL_DISK
    align = 64 * KiB
    ext_min = max(align, int(1 * MiB * scale) // align * align)
    ext_max = max(ext_min, int(64 * MiB * scale) // align * align)
    target = int(size * 0.375)
    region = int(size * 0.65)
    hole_ratio = (region - target) / target
    kinds = ["random", "text", "halfzero"]
    weights = [0.45, 0.45, 0.10]
    extents: list[Extent] = []
    by_kind = dict.fromkeys(kinds, 0)
    pos = 0
    data = 0
    while data < target and pos < region:
        # log-uniform extent sizes between ext_min and ext_max
        length = max(align, int(ext_min * (ext_max / ext_min) ** rng.random()) // align * align)
        length = min(length, (target - data + align - 1) // align * align)
        hole = int(rng.uniform(0, 2 * hole_ratio * length)) // align * align
        if extents:  # the first extent starts at 0, like a partition table would
            pos += hole
        if pos + length > region:
            length = (region - pos) // align * align
            if length <= 0:
                break
        # the kind furthest below its share of the bytes so far (45/45/10 by bytes, not by count)
        kind = max(kinds, key=lambda k: weights[kinds.index(k)] * (data + length) - by_kind[k] + rng.random())
        by_kind[kind] += length
        extents.append(Extent(pos, length, kind))
        pos += length
        data += length
    return extents


def sparse_layout(size: int, seed: int) -> list[Extent]:
    rng = random.Random(seed + 1)
    count = max(4, round(63 * size / FULL_SPARSE))
    slots = rng.sample(range(1, size // MiB), count)
    return [Extent(0, MiB, "random")] + [Extent(s * MiB, 512 * KiB, "random") for s in sorted(slots)]


def write_raw(path: str, size: int, extents: list[Extent], seed: int, label: str) -> None:
    ks = Keystream(seed, label)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.truncate(size)
        fd = f.fileno()
        for e in extents:
            done = 0
            while done < e.length:
                n = min(8 * MiB, e.length - done)
                os.pwrite(fd, make_bytes(ks, e.kind, n), e.offset + done)
                done += n
        os.fsync(fd)
    os.replace(tmp, path)


def data_bytes(extents: list[Extent]) -> int:
    return sum(e.length // 2 if e.kind == "halfzero" else e.length for e in extents)


# --- the set ----------------------------------------------------------------------------------


def _run_to(argv: list[str], out_path: str) -> None:
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        subprocess.run(argv, stdout=f, check=True)
        os.fsync(f.fileno())
    os.replace(tmp, out_path)


def _qemu_convert(src: str, dst: str, compress: bool) -> None:
    tmp = dst + ".tmp"
    argv = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2"] + (["-c"] if compress else []) + [src, tmp]
    subprocess.run(argv, check=True)
    os.replace(tmp, dst)


def ensure_images(
    directory: str,
    *,
    quick: bool,
    seed: int,
    formats: list[str],
    log: Callable[[str], None] = print,
) -> ImageSet:
    """Make (or reuse) the images for ``formats`` in ``directory``; returns their descriptions."""
    os.makedirs(directory, exist_ok=True)
    disk_size = QUICK_SIZE if quick else FULL_DISK
    sparse_size = QUICK_SIZE if quick else FULL_SPARSE
    meta: dict[str, object] = {
        "recipe": RECIPE_VERSION,
        "seed": seed,
        "disk_size": disk_size,
        "sparse_size": sparse_size,
    }
    manifest_path = os.path.join(directory, "manifest.json")
    manifest: dict[str, object] = {}
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        pass
    if manifest.get("meta") != meta:
        manifest = {"meta": meta, "made": {}}
    made: dict[str, dict[str, object]] = manifest.setdefault("made", {})  # type: ignore[assignment]

    def have(file: str) -> bool:
        return file in made and os.path.exists(os.path.join(directory, file))

    def record(file: str, **kw: object) -> None:
        made[file] = kw
        with open(manifest_path + ".tmp", "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(manifest_path + ".tmp", manifest_path)

    def p(name: str) -> str:
        return os.path.join(directory, name)

    wanted = {FORMATS[f].file for f in formats} | {TINY.file}
    need_disk = any(FORMATS[f].reference == "disk.raw" for f in formats)
    need_sparse = any(FORMATS[f].reference == "sparse.raw" for f in formats)

    disk_ext = disk_layout(disk_size, seed)
    sparse_ext = sparse_layout(sparse_size, seed)
    tiny_ext = [Extent(0, MiB, "random")]

    def make(file: str, label: str, fn: Callable[[], None], **kw: object) -> None:
        if have(file):
            return
        t = time.monotonic()
        log(f"images: making {file} ({label}) ...")
        fn()
        log(f"images: {file} done in {time.monotonic() - t:.1f} s")
        record(file, **kw)

    if need_disk:
        make(
            "disk.raw",
            "raw",
            lambda: write_raw(p("disk.raw"), disk_size, disk_ext, seed, "disk"),
            data_bytes=data_bytes(disk_ext),
            extents=len(disk_ext),
        )
    if need_sparse:
        make(
            "sparse.raw",
            "sparse raw",
            lambda: write_raw(p("sparse.raw"), sparse_size, sparse_ext, seed, "sparse"),
            data_bytes=data_bytes(sparse_ext),
            extents=len(sparse_ext),
        )
    make("tiny.raw", "1 MiB", lambda: write_raw(p("tiny.raw"), MiB, tiny_ext, seed, "tiny"), data_bytes=MiB)

    threads = str(min(2, os.cpu_count() or 1))
    makers: dict[str, Callable[[], None]] = {
        "disk.qcow2": lambda: _qemu_convert(p("disk.raw"), p("disk.qcow2"), False),
        "disk-c.qcow2": lambda: _qemu_convert(p("disk.raw"), p("disk-c.qcow2"), True),
        "disk.raw.gz": lambda: _run_to(["pigz", "-6", "-p", threads, "-c", p("disk.raw")], p("disk.raw.gz")),
        "disk.raw.xz": lambda: _run_to(["xz", "-1", f"-T{threads}", "-c", p("disk.raw")], p("disk.raw.xz")),
        "disk.raw.zst": lambda: _run_to(
            ["zstd", "-q", "-3", f"-T{threads}", "-c", p("disk.raw")], p("disk.raw.zst")
        ),
        "sparse.qcow2": lambda: _qemu_convert(p("sparse.raw"), p("sparse.qcow2"), False),
    }
    for file, fn in makers.items():
        if file in wanted:
            make(file, file, fn)

    images: dict[str, ImageInfo] = {}
    for fmt in [*(FORMATS[f] for f in formats), TINY]:
        path = p(fmt.file)
        ref = p(fmt.reference)
        st = os.stat(path)
        vsize = os.stat(ref).st_size
        images[fmt.name] = ImageInfo(
            name=fmt.name,
            file=fmt.file,
            path=path,
            reference=ref,
            virtual_size=vsize,
            file_size=st.st_size,
            alloc=st.st_blocks * 512,
            data_bytes=int(made[fmt.reference]["data_bytes"]),  # type: ignore[call-overload]
        )
    return ImageSet(directory, images, meta)


def preload(path: str) -> None:
    """Read a file once so it is in the page cache (the source is never the bottleneck)."""
    buf = bytearray(8 * MiB)
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        pos = 0
        size = os.fstat(fd).st_size
        while pos < size:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            try:
                end = os.lseek(fd, pos, os.SEEK_HOLE)
            except OSError:
                end = size
            f.seek(pos)
            while pos < end:
                n = f.readinto(buf)
                if not n:
                    break
                pos += n


def tool_available(name: str) -> bool:
    return shutil.which(name) is not None
