"""Format detection by magic bytes, and cheap header checks done before any download.

``sniff(head)`` names what the first bytes are: a compression layer (gz, xz, zst), a container
format qemu-img converts (qcow2, vmdk, vdi, vhd, vhdx), a tar, an iso, HTML, or raw.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from cdi.api.contract import Reason
from cdi.common.errors import PermanentError

GZ, XZ, ZST = "gz", "xz", "zst"
COMPRESSIONS = (GZ, XZ, ZST)
RAW, ISO, TAR, HTML = "raw", "iso", "tar", "html"
QCOW2, VMDK, VMDK_DESCRIPTOR, VDI, VHD, VHDX = "qcow2", "vmdk", "vmdk-descriptor", "vdi", "vhd", "vhdx"
CONTAINERS = (QCOW2, VMDK, VDI, VHD, VHDX)
# qemu-img's driver name for each container format
QEMU_FORMAT = {QCOW2: "qcow2", VMDK: "vmdk", VDI: "vdi", VHD: "vpc", VHDX: "vhdx"}

HEAD_SIZE = 64 * 1024  # enough for every magic (iso: 0x8001 + 5)

_HTML = re.compile(rb"^\s*(<!doctype\s+html|<html)", re.IGNORECASE)


def sniff(head: bytes) -> str:
    """The format of a stream whose first bytes are ``head`` (shorter only at end of stream)."""
    if head.startswith(b"\x1f\x8b"):
        return GZ
    if head.startswith(b"\xfd7zXZ\x00"):
        return XZ
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return ZST
    if head.startswith(b"QFI\xfb"):
        return QCOW2
    if head.startswith(b"KDMV"):
        return VMDK
    if head.startswith(b"# Disk DescriptorFile"):
        return VMDK_DESCRIPTOR
    if head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        return VDI
    if head.startswith(b"conectix"):
        return VHD
    if head.startswith(b"vhdxfile"):
        return VHDX
    if head[257:262] == b"ustar":
        return TAR
    if head[0x8001:0x8006] == b"CD001":
        return ISO
    if _HTML.match(head[:1024]):
        return HTML
    return RAW


def is_vhd_footer(block: bytes) -> bool:
    """True if ``block`` (the last 512 bytes of a file) is a VHD footer (a fixed VHD)."""
    return len(block) >= 512 and block.startswith(b"conectix")


@dataclass(frozen=True)
class HeaderFacts:
    """What the first bytes of a container say, before qemu-img has seen it."""

    virtual_size: int | None = None
    backing_file: str | None = None
    external_data_file: bool = False


def header_facts(fmt: str, head: bytes) -> HeaderFacts:
    """Virtual size and backing file from a container's header; empty facts when unknown."""
    try:
        if fmt == QCOW2 and len(head) >= 72:
            version, bf_off, bf_len = struct.unpack_from(">IQI", head, 4)
            (size,) = struct.unpack_from(">Q", head, 24)
            backing = None
            if bf_off and bf_len:
                raw = head[bf_off : bf_off + bf_len]
                backing = raw.decode("utf-8", "replace") if raw else f"<{bf_len} bytes at offset {bf_off}>"
            external = False
            if version >= 3 and len(head) >= 80:
                (incompatible,) = struct.unpack_from(">Q", head, 72)
                external = bool(incompatible & 0x4)
            return HeaderFacts(size, backing, external)
        if fmt == VMDK and len(head) >= 20:
            (capacity,) = struct.unpack_from("<Q", head, 12)
            return HeaderFacts(capacity * 512)
        if fmt == VHD and len(head) >= 56 and head.startswith(b"conectix"):  # dynamic (fixed: footer at end)
            (size,) = struct.unpack_from(">Q", head, 48)
            return HeaderFacts(size)
        if fmt == VDI and len(head) >= 0x178:
            (size,) = struct.unpack_from("<Q", head, 0x170)
            return HeaderFacts(size)
    except struct.error:
        pass
    return HeaderFacts()


def unsafe_backing(backing: str) -> PermanentError:
    return PermanentError(
        f"image has a backing file {backing}; CDI imports self-contained images only: "
        "flatten it with qemu-img convert",
        reason=Reason.UNSAFE_IMAGE,
    )


def unsafe_data_file(data_file: str) -> PermanentError:
    return PermanentError(
        f"image has an external data file {data_file}; CDI imports self-contained images only: "
        "convert it with qemu-img convert",
        reason=Reason.UNSAFE_IMAGE,
    )


def check_header(fmt: str, head: bytes) -> HeaderFacts:
    """Refuse a backing file or the external data file bit; ``imagecheck.check_head`` does the rest."""
    facts = header_facts(fmt, head)
    if facts.backing_file:
        raise unsafe_backing(facts.backing_file)
    if facts.external_data_file:
        raise unsafe_data_file("(named in the header extensions)")
    return facts
