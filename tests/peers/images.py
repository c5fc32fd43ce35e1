"""Test image generators (real tools: qemu-img, xz, zstd, gzip, xorriso, tar).

Small and deterministic: ``make_raw`` writes a few MiB of mixed random, text and zero extents
with holes; the others derive images from it.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
import tarfile
from collections.abc import Iterable

MiB = 1 << 20


def make_raw(path: str, size: int = 4 * MiB, seed: int = 1) -> int:
    """A sparse raw image of ``size`` bytes: random, text and zero extents, holes between.

    Returns the number of data (non-hole) bytes written.
    """
    rng = random.Random(seed)
    data = 0
    with open(path, "wb") as f:
        f.truncate(size)
        off = 0
        kinds = ["random", "text", "hole", "zeros", "random", "hole"]
        i = 0
        while off < size:
            length = min(size - off, rng.choice([64 << 10, 256 << 10, 512 << 10, MiB]))
            kind = kinds[i % len(kinds)]
            i += 1
            if kind == "random":
                f.seek(off)
                f.write(rng.randbytes(length))
                data += length
            elif kind == "text":
                line = f"line {seed} of a disk image at offset {off}\n".encode()
                f.seek(off)
                f.write((line * (length // len(line) + 1))[:length])
                data += length
            elif kind == "zeros":  # written zeros: allocated in the source, a hole in the result
                f.seek(off)
                f.write(bytes(length))
            off += length
    return data


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def convert(src: str, dst: str, fmt: str, compressed: bool = False, backing: str | None = None) -> None:
    """qemu-img convert raw -> fmt (qcow2, vmdk, vdi, vpc, vhdx)."""
    argv = ["qemu-img", "convert", "-f", "raw", "-O", fmt]
    if compressed:
        argv.append("-c")
    if fmt == "vpc":
        argv += ["-o", "subformat=dynamic"]
    run([*argv, src, dst])


def make_child(parent: str, parent_fmt: str, dst: str, fmt: str) -> None:
    """An image whose backing file (qcow2) or parent (vmdk) is ``parent``."""
    run(["qemu-img", "create", "-f", fmt, "-b", parent, "-F", parent_fmt, dst])


def compress(src: str, dst: str, algo: str) -> None:
    """gz, xz (multi-block, so that -T2 decoding helps) or zst via the CLI tools."""
    argv = {
        "gz": ["gzip", "-c", "-1"],
        "xz": ["xz", "-c", "-0", "-T2", "--block-size=1MiB"],
        "zst": ["zstd", "-c", "-q", "-1"],
    }[algo]
    with open(dst, "wb") as out:
        subprocess.run([*argv, src], check=True, stdout=out, stderr=subprocess.PIPE)


def make_tar(
    dst: str, entries: Iterable[tuple[str, str, bytes | str]], fmt: int = tarfile.GNU_FORMAT
) -> None:
    """entries: (kind, name, data) with kind file|dir|symlink|hardlink|chr|fifo (data = link target)."""
    with tarfile.open(dst, "w", format=fmt) as tar:
        for kind, name, data in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            body = None
            if kind == "file":
                assert isinstance(data, bytes)
                ti.size = len(data)
                ti.mode = 0o644
                body = io.BytesIO(data)
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, str(data)
            elif kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, str(data)
            elif kind == "chr":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            else:
                raise ValueError(kind)
            tar.addfile(ti, body)


def make_iso(dst: str, files: dict[str, bytes], workdir: str) -> None:
    root = os.path.join(workdir, "iso-root")
    os.makedirs(root, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "CDITEST", "-o", dst, root])


def sha256_of(path: str, size: int | None = None) -> str:
    """sha256 of the file, read as if it were ``size`` bytes long (zero-extended or cut)."""
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while size is None or done < size:
            want = 1 << 20 if size is None else min(1 << 20, size - done)
            chunk = f.read(want)
            if not chunk:
                break
            h.update(chunk)
            done += len(chunk)
    if size is not None and done < size:
        zeros = bytes(1 << 20)
        while done < size:
            n = min(len(zeros), size - done)
            h.update(zeros[:n])
            done += n
    return h.hexdigest()


def allocated_bytes(path: str) -> int:
    return os.stat(path).st_blocks * 512
