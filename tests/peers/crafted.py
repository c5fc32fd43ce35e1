"""Crafted container images for the attack tests: what qemu-img makes, then patched bytes.

Each helper writes a small file (tens of KiB to a few MiB). The attacks aim at a *canary*: a
host file outside the volume with known content; an import that reads it puts those bytes in
the volume.
"""

from __future__ import annotations

import os
import struct
import subprocess
import uuid

SECTOR = 512
VMDK_GD_AT_END = 0xFFFFFFFFFFFFFFFF


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def make_canary(path: str, token: bytes, size: int = 64 * 1024) -> bytes:
    """A host file of ``size`` bytes made of ``token`` lines, mode 0600; returns its content."""
    line = token + b"\n"
    data = (line * (size // len(line) + 1))[:size]
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return data


# --- vmdk --------------------------------------------------------------------------------------


def vmdk_header(capacity: int, desc_offset: int = 1, desc_size: int = 20, *, gd_offset: int = 0,
                grain_offset: int = 0, compress: int = 0, flags: int = 3) -> bytes:
    """A KDMV sparse extent header (one sector)."""
    hdr = b"KDMV" + struct.pack("<IIQQQQIQQQ", 1, flags, capacity, 128, desc_offset, desc_size, 512, 0,
                                gd_offset, grain_offset)
    hdr += b"\x00\n \r\n" + struct.pack("<H", compress)
    return hdr.ljust(SECTOR, b"\0")


def flat_descriptor(target: str, sectors: int, create_type: str = "monolithicFlat") -> bytes:
    return (
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        f'createType="{create_type}"\n\n# Extent description\nRW {sectors} FLAT "{target}" 0\n\n'
        '# The Disk Data Base\n#DDB\n\nddb.adapterType = "ide"\n'
    ).encode()


def sparse_vmdk_with_descriptor(desc: bytes, capacity: int = 0, size: int = 64 * 1024) -> bytes:
    """A KDMV header whose embedded descriptor (sector 1) is ``desc``: the reported attack with
    ``capacity=0`` (qemu reads the descriptor as a descriptor file and opens its extents)."""
    img = bytearray(size)
    img[:SECTOR] = vmdk_header(capacity)
    img[SECTOR:SECTOR + len(desc)] = desc
    return bytes(img)


def replace_vmdk_descriptor(path: str, desc: bytes) -> None:
    """Overwrite the embedded descriptor of a qemu-made vmdk (sector 1, 20 sectors)."""
    with open(path, "r+b") as f:
        hdr = f.read(SECTOR)
        desc_offset, desc_size = struct.unpack_from("<QQ", hdr, 28)
        assert len(desc) <= desc_size * SECTOR
        f.seek(desc_offset * SECTOR)
        f.write(desc.ljust(desc_size * SECTOR, b"\0"))


def embedded_descriptor(path: str) -> bytes:
    with open(path, "rb") as f:
        hdr = f.read(SECTOR)
        desc_offset, desc_size = struct.unpack_from("<QQ", hdr, 28)
        f.seek(desc_offset * SECTOR)
        return f.read(desc_size * SECTOR).split(b"\0", 1)[0]


# --- qcow2 -------------------------------------------------------------------------------------


def qcow2_with_data_file(path: str, data_file: str, size: str = "1M") -> None:
    """A qcow2 whose guest data lives in ``data_file`` (data_file_raw: byte for byte).

    qemu-img creates ``data_file`` too: write the canary into it afterwards.
    """
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={data_file},data_file_raw=on", path, size)


def clear_qcow2_data_file_bits(path: str) -> None:
    """Keep the data-file header extension, clear the incompatible bit and data_file_raw."""
    with open(path, "r+b") as f:
        hdr = f.read(104)
        incompatible, _compatible, autoclear = struct.unpack_from(">QQQ", hdr, 72)
        f.seek(72)
        f.write(struct.pack(">Q", incompatible & ~0x4))
        f.seek(88)
        f.write(struct.pack(">Q", autoclear & ~0x2))


# --- vdi / vhd / vhdx --------------------------------------------------------------------------


def vdi_differencing(path: str, parent: uuid.UUID) -> None:
    """Make a qemu-made vdi say "differencing image of ``parent``"."""
    with open(path, "r+b") as f:
        f.seek(0x4C)
        f.write(struct.pack("<I", 4))
        f.seek(0x1A8)
        f.write(parent.bytes_le)


def vdi_with_parent_uuid(path: str, parent: uuid.UUID) -> None:
    """A normal vdi that still names a parent (uuid_parent)."""
    with open(path, "r+b") as f:
        f.seek(0x1B8)
        f.write(parent.bytes_le)


def _vhd_footer_offsets(path: str) -> list[int]:
    size = os.path.getsize(path)
    return [0, size - SECTOR]


def vhd_differencing(path: str) -> None:
    """Set disk type 4 (differencing) in both footer copies of a dynamic vhd."""
    with open(path, "r+b") as f:
        for off in _vhd_footer_offsets(path):
            f.seek(off + 60)
            f.write(struct.pack(">I", 4))


def vhd_with_parent_locator(path: str, parent: str) -> None:
    """A dynamic vhd whose dynamic header names a parent (UUID, UTF-16 name, one locator)."""
    with open(path, "r+b") as f:
        f.seek(16)
        (dyn,) = struct.unpack(">Q", f.read(8))
        f.seek(dyn + 40)
        f.write(uuid.uuid4().bytes)
        f.seek(dyn + 64)
        f.write(parent.encode("utf-16-be")[:512])
        f.seek(dyn + 576)
        f.write(struct.pack(">IIIIQ", 0x57327275, 512, len(parent) * 2, 0, 0))  # "W2ru"


VHDX_METADATA = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
VHDX_FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
VHDX_PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C").bytes_le


def _vhdx_metadata_offset(f: object) -> int:
    assert hasattr(f, "seek") and hasattr(f, "read")
    f.seek(192 * 1024)
    table = f.read(64 * 1024)
    assert table.startswith(b"regi")
    (count,) = struct.unpack_from("<I", table, 8)
    for i in range(count):
        e = 16 + 32 * i
        if table[e:e + 16] == VHDX_METADATA:
            return int(struct.unpack_from("<Q", table, e + 16)[0])
    raise AssertionError("no metadata region")


def vhdx_differencing(path: str, *, has_parent: bool = True, locator: bool = True) -> None:
    """Set HasParent in the file parameters and/or add a parent locator metadata item."""
    with open(path, "r+b") as f:
        meta = _vhdx_metadata_offset(f)
        f.seek(meta)
        table = f.read(64 * 1024)
        (count,) = struct.unpack_from("<H", table, 10)
        for i in range(count):
            e = 32 + 32 * i
            if table[e:e + 16] == VHDX_FILE_PARAMETERS and has_parent:
                (item_off,) = struct.unpack_from("<I", table, e + 16)
                f.seek(meta + item_off + 4)
                (bits,) = struct.unpack("<I", f.read(4))
                f.seek(meta + item_off + 4)
                f.write(struct.pack("<I", bits | 0x2))
        if locator:
            e = 32 + 32 * count
            f.seek(meta + e)
            f.write(VHDX_PARENT_LOCATOR + struct.pack("<IIII", 60 * 1024, 64, 0x4, 0))  # IsRequired
            f.seek(meta + 10)
            f.write(struct.pack("<H", count + 1))
