"""Format detection by magic bytes, and cheap header checks done before any download.

``sniff(head)`` names what the first bytes are: a compression layer (gz, xz, zst), a container
format qemu-img converts (qcow2, vmdk, vdi, vhd, vhdx), a tar, an iso, HTML, or raw.
"""

from __future__ import annotations

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

HTML_WINDOW = 2048  # bytes of the head looked at for an HTML page (after a byte order mark)
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_ROOTS = ("<html", "<head", "<body")  # an HTML page's first element (the others are optional)
_SPACE = " \t\r\n\f"


def is_html(head: bytes) -> bool:
    """Does ``head`` start an HTML page (an error or login page served instead of an image)?

    Skips what may come before the first element of an HTML or XHTML page: a byte order mark
    (UTF-8, or UTF-16 whose text is then decoded as such), white space, comments, an XML
    declaration or processing instructions, and DOCTYPEs other than HTML's; then wants
    ``<!DOCTYPE html`` or an ``<html``, ``<head`` or ``<body`` tag. Each construct must be closed
    within the first ``HTML_WINDOW`` bytes, so random bytes that start with '<' are not HTML
    unless they spell one out. One forward scan, no backtracking.
    """
    encoding = "utf-8"
    for bom, enc in _BOMS:
        if head.startswith(bom):
            head, encoding = head[len(bom) :], enc
            break
    window = head[:HTML_WINDOW]
    if encoding != "utf-8":
        window = window[: len(window) // 2 * 2]
    text = window.decode(encoding, errors="replace").lower()
    pos = 0
    while True:
        while pos < len(text) and text[pos] in _SPACE:
            pos += 1
        if text.startswith("<!doctype", pos):
            rest = text[pos + 9 :].lstrip(_SPACE)
            if len(rest) < len(text) - pos - 9 and rest.startswith("html") and rest[4:5] in (">", *_SPACE):
                return True
            close = ">"
        elif text.startswith("<!--", pos):
            close = "-->"
        elif text.startswith("<?", pos):
            close = "?>"
        else:
            after = text[pos + 5 : pos + 6]  # what follows the tag name: it must end there
            return after in (">", "/", *_SPACE) and any(text.startswith(root, pos) for root in _ROOTS)
        end = text.find(close, pos + 2)
        if end < 0:
            return False
        pos = end + len(close)


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
    if is_html(head):
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
