"""Our own header checks for the container formats qemu-img converts: self-contained images only.

A container image may name other files: a vmdk descriptor lists extent files (``FLAT
"/etc/shadow"`` reads a host file into the volume), a qcow2 names a backing file or an external
data file, a vdi/vhd/vhdx may be a differencing image with a parent. qemu-img opens what the
image names. These checks run on the first ``formats.HEAD_SIZE`` bytes, *before* any qemu-img
or nbdkit process sees the image, and refuse (reason ``UnsafeImage``) anything that is not
plainly self-contained; they read the headers the way qemu reads them (``block/vmdk.c``,
``qcow2.c``, ``vdi.c``, ``vpc.c``, ``vhdx.c``), and are stricter where qemu is lenient.

- vmdk (``KDMV`` sparse): qemu takes a header with capacity 0 and a descriptor offset as a
  *descriptor file* (any extents), so capacity 0 is refused. Otherwise qemu uses the file as
  its one extent and reads ``parentFileNameHint``/``parentCID`` from the 10 KiB at offset 512.
  We require the embedded descriptor inside the head, createType ``monolithicSparse`` or
  ``streamOptimized``, exactly one extent line (parsed like qemu's ``sscanf``: any whitespace,
  lines spanning newlines) that is ``RW|RDONLY <n> SPARSE "<name>"``, and no parent.
- qcow2: a backing file, the external data file bit, a data-file header extension (even
  without the bit) and header extensions that run past the head are refused.
- vdi: image types other than normal/fixed (undo, differencing) and parent UUIDs are refused.
- vhd: the dynamic header copy with disk type differencing, a parent UUID/name or parent
  locators is refused (a fixed vhd has no header at the start; qemu reads it as raw data).
- vhdx: the metadata that says "has parent" lies beyond the head; ``check_vhdx`` reads it
  through a random-access reader (the source with Range, or the scratch file).

``check_info`` repeats the essentials on what ``qemu-img info`` reports (backing file, data
file, extents other than the image itself) in case the image changed between our read and
qemu-img's. The tools also run confined (``sandbox``), so a missed case still cannot read a
host file.
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from cdi.api.contract import Reason
from cdi.common.errors import PermanentError
from cdi.datapath import formats
from cdi.datapath.qemu_img import ImageInfo

FIX = "convert it to a self-contained qcow2 with qemu-img convert"
ReadAt = Callable[[int, int], bytes]


def unsafe(what: str, fix: str = FIX) -> PermanentError:
    return PermanentError(
        f"{what}; CDI imports self-contained images only: {fix}", reason=Reason.UNSAFE_IMAGE
    )


def _show(raw: bytes | str, limit: int = 120) -> str:
    """Attacker-chosen text for a message: printable, quoted, bounded."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def check_head(fmt: str, head: bytes) -> None:
    """Refuse what the first bytes show is not self-contained (``fmt`` as ``formats.sniff`` says;
    a vhdx's parents lie beyond the head: ``check_vhdx``)."""
    if fmt == formats.VMDK:
        check_vmdk(head)
    elif fmt == formats.QCOW2:
        check_qcow2(head)
    elif fmt == formats.VDI:
        check_vdi(head)
    elif fmt == formats.VHD:
        check_vhd(head)


# --- vmdk --------------------------------------------------------------------------------------

SECTOR = 512
QEMU_DESC_AREA = (0x200, 20 * SECTOR)  # where qemu looks for parentFileNameHint / parentCID
ALLOWED_CREATE_TYPES = ("monolithicSparse", "streamOptimized")
NO_PARENT_CID = 0xFFFFFFFF
_WS = b" \t\n\v\f\r"  # C isspace()
_ACCESS = ("RW", "RDONLY", "NOACCESS")
SELF_ACCESS = ("RW", "RDONLY")  # some exporters write RDONLY for the one extent of a streamOptimized vmdk


@dataclass(frozen=True)
class Extent:
    access: str
    sectors: int | None
    type: str
    filename: str | None
    offset: int | None
    matches: int

    def __str__(self) -> str:
        parts = [self.access, str(self.sectors) if self.sectors is not None else "", self.type]
        if self.filename is not None:
            parts.append(_show(self.filename, 80))
        if self.offset is not None:
            parts.append(str(self.offset))
        return " ".join(p for p in parts if p)


@dataclass
class Descriptor:
    create_type: str | None = None
    create_types: int = 0  # occurrences of "createtype" in any case
    extents: list[Extent] = field(default_factory=list)
    parent_hint: str | None = None
    parent_cid: int | None = None


class _Scan:
    """The one ``sscanf`` format qemu reads extent lines with, on bytes from ``pos``.

    ``"%10s %lld %10s \\"%511[^\\n\\r\\"]\\" %lld"``: whitespace (newlines too) between fields.
    """

    def __init__(self, text: bytes, pos: int) -> None:
        self.t = text
        self.p = pos

    def ws(self) -> None:
        while self.p < len(self.t) and self.t[self.p] in _WS:
            self.p += 1

    def word(self, width: int) -> str | None:
        self.ws()
        start = self.p
        while self.p < len(self.t) and self.p - start < width and self.t[self.p] not in _WS:
            self.p += 1
        return self.t[start:self.p].decode("latin-1") if self.p > start else None

    def number(self) -> int | None:
        self.ws()
        m = re.compile(rb"[+-]?[0-9]+").match(self.t, self.p)
        if not m:
            return None
        self.p = m.end()
        return int(m.group())

    def literal(self, c: bytes) -> bool:
        if self.t[self.p:self.p + 1] == c:
            self.p += 1
            return True
        return False

    def name(self) -> str | None:
        start = self.p
        while self.p < len(self.t) and self.p - start < 511 and self.t[self.p] not in b'\n\r"':
            self.p += 1
        return self.t[start:self.p].decode("utf-8", "replace") if self.p > start else None


def scan_extent(text: bytes, pos: int) -> tuple[int, Extent] | None:
    """The extent qemu's ``sscanf`` would read at ``pos``: (offset of its first token, extent)."""
    s = _Scan(text, pos)
    s.ws()
    start = s.p
    access = s.word(10)
    if access is None:
        return None
    ext = Extent(access, None, "", None, None, 1)
    sectors = s.number()
    if sectors is None:
        return start, ext
    typ = s.word(10)
    if typ is None:
        return start, Extent(access, sectors, "", None, None, 2)
    ext = Extent(access, sectors, typ, None, None, 3)
    s.ws()
    if not s.literal(b'"'):
        return start, ext
    fname = s.name()
    if fname is None:
        return start, ext
    ext = Extent(access, sectors, typ, fname, None, 4)
    if not s.literal(b'"'):
        return start, ext
    offset = s.number()
    if offset is None:
        return start, ext
    return start, Extent(access, sectors, typ, fname, offset, 5)


def parse_descriptor(text: bytes) -> Descriptor:
    """A vmdk descriptor (up to its first NUL) read like qemu reads it, plus what qemu skips."""
    text = text.split(b"\0", 1)[0]
    d = Descriptor()
    d.create_types = len(re.findall(rb"(?i)createtype", text))
    i = text.find(b"createType")
    if i >= 0:
        start = i + len(b"createType") + 2  # qemu skips '="' without looking at it
        end = text.find(b'"', start)
        if start <= len(text) and end >= 0:
            d.create_type = text[start:end].decode("utf-8", "replace")
    # qemu tries every line start; sscanf skips whitespace (newlines too), so the starts up to a
    # token all reach it: scan from the first of them only (linear, however many blank lines)
    token = -1  # where the last scan's first token starts
    starts = [0] + [m.end() for m in re.finditer(rb"\n", text)]
    for pos in starts:
        if pos <= token:
            continue
        found = scan_extent(text, pos)
        if found is None:  # only white space left
            break
        token, ext = found
        if ext.access.upper() in _ACCESS and ext.matches >= 3:
            d.extents.append(ext)
    d.parent_hint, d.parent_cid = _parent(text)
    return d


def _parent(text: bytes) -> tuple[str | None, int | None]:
    """``parentFileNameHint`` and ``parentCID`` as qemu's strstr/sscanf find them (first match)."""
    hint = None
    i = text.find(b"parentFileNameHint")
    if i >= 0:
        start = i + len(b"parentFileNameHint") + 2
        end = text.find(b'"', start)
        hint = text[start:end if end >= 0 else len(text)].decode("utf-8", "replace")
    cid = None
    i = text.find(b"parentCID")
    if i >= 0:
        m = re.compile(rb"[ \t\n\v\f\r]*(?:0[xX])?([0-9a-fA-F]{1,8})(?![0-9a-fA-F])").match(
            text, i + len(b"parentCID") + 1
        )
        cid = int(m.group(1), 16) if m else -1  # -1: qemu could not read it either
    return hint, cid


def check_vmdk(head: bytes) -> None:
    if len(head) < 80:
        raise unsafe("the vmdk header is truncated")
    capacity, _grain, desc_offset, desc_size = struct.unpack_from("<QQQQ", head, 12)
    desc_start, desc_end = desc_offset * SECTOR, (desc_offset + desc_size) * SECTOR
    desc_in_head = desc_offset > 0 and desc_size > 0 and desc_end <= len(head)
    desc = parse_descriptor(head[desc_start:desc_end]) if desc_in_head else None
    if capacity == 0:
        what = "the vmdk header says capacity 0"
        if desc_offset:
            what += (", so qemu would read its embedded descriptor as a descriptor file that names "
                     "other files")
            if desc is not None:
                what += _describe(desc)
        raise unsafe(what)
    if desc_offset == 0 or desc_size == 0:
        raise unsafe("the vmdk has no embedded descriptor")
    if not desc_in_head:
        raise unsafe(
            f"the vmdk's embedded descriptor (sectors {desc_offset}+{desc_size}) lies outside the "
            f"first {formats.HEAD_SIZE // 1024} KiB"
        )
    assert desc is not None
    # qemu reads the parent from the 10 KiB at offset 512, wherever the header puts the descriptor
    q_start, q_len = QEMU_DESC_AREA
    q_hint, q_cid = _parent(head[q_start:q_start + q_len].split(b"\0", 1)[0])
    hint = q_hint if q_hint is not None else desc.parent_hint
    if hint is not None:
        raise formats.unsafe_backing(f"{_show(hint)} (parentFileNameHint in the vmdk descriptor)")
    for cid in (q_cid, desc.parent_cid):
        if cid is not None and cid != NO_PARENT_CID:
            shown = f"{cid:08x}" if cid >= 0 else "unreadable"
            raise unsafe(f"the vmdk descriptor names a parent disk (parentCID {shown})",
                         "flatten it with qemu-img convert")
    if desc.create_type is None:
        raise unsafe("the vmdk's embedded descriptor has no createType")
    if desc.create_type not in ALLOWED_CREATE_TYPES or desc.create_types != 1:
        raise unsafe(f"the vmdk descriptor says createType {_show(desc.create_type)}"
                     + ("" if desc.create_types == 1 else f" ({desc.create_types} createType entries)")
                     + f"; only {' and '.join(ALLOWED_CREATE_TYPES)} are self-contained")
    extents = desc.extents
    ok = (
        len(extents) == 1
        and extents[0].access in SELF_ACCESS
        and extents[0].type == "SPARSE"
        and extents[0].matches == 4
        and (extents[0].sectors or 0) > 0
    )
    if not ok:
        listed = "; ".join(str(e) for e in extents[:4]) or "none"
        raise unsafe(f"the vmdk descriptor lists {len(extents)} extent(s) ({listed}); "
                     "a self-contained vmdk has exactly one: RW <sectors> SPARSE \"<its own name>\"")


def _describe(d: Descriptor) -> str:
    parts = []
    if d.create_type is not None:
        many = f" ({d.create_types} createType entries)" if d.create_types > 1 else ""
        parts.append(f"createType {_show(d.create_type)}{many}")
    if d.extents:
        parts.append("extents " + "; ".join(str(e) for e in d.extents[:4]))
    return f" ({', '.join(parts)})" if parts else ""


# --- qcow2 -------------------------------------------------------------------------------------

QCOW2_EXT_END = 0
QCOW2_EXT_DATA_FILE = 0x44415441
QCOW2_EXT_NAMES = {
    0xE2792ACA: "backing file format",
    0x6803F857: "feature name table",
    0x23852875: "bitmaps",
    0x0537BE77: "full disk encryption header",
    QCOW2_EXT_DATA_FILE: "external data file",
}


def check_qcow2(head: bytes) -> None:
    """No backing file, no data-file extension, no data-file bit."""
    if len(head) < 72:
        raise unsafe("the qcow2 header is truncated")
    facts = formats.header_facts(formats.QCOW2, head)
    if facts.backing_file:
        raise formats.unsafe_backing(facts.backing_file)
    _qcow2_extensions(head)  # names an external data file, when the extension is there
    if facts.external_data_file:
        raise formats.unsafe_data_file("(named in the header extensions)")


def _qcow2_extensions(head: bytes) -> None:
    """Refuse a data-file extension, and extensions that leave the head or the header cluster.

    qemu reads extensions from the end of the header to the backing file name (or the end of
    the first cluster): type, length, data padded to 8 bytes, until type 0.
    """
    version, bf_off = struct.unpack_from(">IQ", head, 4)
    (cluster_bits,) = struct.unpack_from(">I", head, 20)
    header_len = 72
    if version >= 3:
        if len(head) < 104:
            raise unsafe("the qcow2 header is truncated")
        (header_len,) = struct.unpack_from(">I", head, 100)
    cluster = 1 << cluster_bits if 9 <= cluster_bits <= 21 else 0
    end = bf_off if bf_off else cluster
    off = header_len
    while off < end:
        if off + 8 > len(head):
            raise unsafe(f"the qcow2 header extensions run past the first {formats.HEAD_SIZE // 1024} KiB")
        magic, length = struct.unpack_from(">II", head, off)
        off += 8
        if magic == QCOW2_EXT_END:
            return
        if magic == QCOW2_EXT_DATA_FILE:
            name = head[off:off + min(length, 1024)]
            raise formats.unsafe_data_file(f"{_show(name)} (a data-file header extension)")
        if length > end - off:
            raise unsafe("a qcow2 header extension is longer than the header cluster")
        off += (length + 7) & ~7


# --- vdi ---------------------------------------------------------------------------------------

VDI_NORMAL, VDI_FIXED = 1, 2
VDI_TYPES = {1: "normal", 2: "fixed", 3: "undo", 4: "differencing"}


def check_vdi(head: bytes) -> None:
    if len(head) < 0x1C8:
        raise unsafe("the vdi header is truncated")
    (image_type,) = struct.unpack_from("<I", head, 0x4C)
    if image_type not in (VDI_NORMAL, VDI_FIXED):
        raise unsafe(f"the vdi is a {VDI_TYPES.get(image_type, f'type {image_type}')} image, not a "
                     "normal or fixed one", "merge it into its parent and convert it with qemu-img convert")
    link, parent = head[0x1A8:0x1B8], head[0x1B8:0x1C8]
    if any(link) or any(parent):
        which = uuid.UUID(bytes_le=link if any(link) else parent)
        raise unsafe(f"the vdi names a parent image (UUID {which})",
                     "merge it into its parent and convert it with qemu-img convert")


# --- vhd ---------------------------------------------------------------------------------------

VHD_FIXED, VHD_DYNAMIC, VHD_DIFFERENCING = 2, 3, 4


def check_vhd(head: bytes) -> None:
    """The footer copy at offset 0 (dynamic and differencing images) and the dynamic header."""
    if not head.startswith(b"conectix"):
        return  # a fixed vhd: qemu reads the footer at the end and the rest as raw data
    if len(head) < 512:
        raise unsafe("the vhd footer is truncated")
    (data_offset,) = struct.unpack_from(">Q", head, 16)
    (disk_type,) = struct.unpack_from(">I", head, 60)
    if disk_type == VHD_DIFFERENCING:
        raise unsafe("the vhd is a differencing disk (it reads its parent's data)",
                     "merge it into its parent and convert it with qemu-img convert")
    if disk_type != VHD_DYNAMIC:
        return  # qemu reads anything but a dynamic disk as fixed: raw data, no other file
    if data_offset + 1024 > len(head):
        raise unsafe(f"the vhd dynamic header lies outside the first {formats.HEAD_SIZE // 1024} KiB")
    dyn = head[data_offset:data_offset + 1024]
    if not dyn.startswith(b"cxsparse"):
        return  # qemu refuses it ("invalid dynamic VHD header")
    parent_uuid, parent_name = dyn[40:56], dyn[64:576]
    locators = [struct.unpack_from(">I", dyn, 576 + 24 * i)[0] for i in range(8)]
    if any(parent_uuid) or any(parent_name) or any(locators):
        raise unsafe("the vhd names a parent disk (parent UUID, name or locators are set)",
                     "merge it into its parent and convert it with qemu-img convert")


# --- vhdx --------------------------------------------------------------------------------------

VHDX_REGION_TABLES = (192 * 1024, 256 * 1024)
VHDX_METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
VHDX_FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
VHDX_PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C").bytes_le
VHDX_HAS_PARENT = 0x2
VHDX_MAX_ENTRIES = 2047  # the spec's limit for both tables


def check_vhdx(read_at: ReadAt) -> None:
    """Refuse a differencing vhdx: HasParent in the file parameters or a parent locator item.

    ``read_at(offset, length)`` reads the image (fewer bytes only at its end). Both region
    tables are looked at (qemu uses the first); a table without its signature is skipped.
    """
    tables = 0
    metadata: set[int] = set()  # each table names one metadata region; both usually the same
    for table_off in VHDX_REGION_TABLES:
        table = read_at(table_off, 16 + 32 * VHDX_MAX_ENTRIES)
        if not table.startswith(b"regi") or len(table) < 16:
            continue
        tables += 1
        (count,) = struct.unpack_from("<I", table, 8)
        found = [
            struct.unpack_from("<Q", table, e + 16)[0]
            for e in range(16, min(16 + 32 * min(count, VHDX_MAX_ENTRIES), len(table) - 31), 32)
            if table[e:e + 16] == VHDX_METADATA_REGION
        ]
        if len(found) > 1:  # qemu refuses a duplicate region too; each would cost us a read
            raise unsafe(f"the vhdx region table lists the metadata region {len(found)} times")
        metadata.update(found)
    if tables == 0:
        raise unsafe("the vhdx has no region table")
    for meta_off in sorted(metadata):
        _check_vhdx_metadata(read_at, meta_off)


def _check_vhdx_metadata(read_at: ReadAt, meta_off: int) -> None:
    hdr = read_at(meta_off, 32 + 32 * VHDX_MAX_ENTRIES)
    if not hdr.startswith(b"metadata") or len(hdr) < 32:
        raise unsafe("the vhdx metadata table is missing")
    (count,) = struct.unpack_from("<H", hdr, 10)
    params_seen = False
    for i in range(min(count, VHDX_MAX_ENTRIES)):
        e = 32 + 32 * i
        if e + 32 > len(hdr):
            break
        item = hdr[e:e + 16]
        if item == VHDX_PARENT_LOCATOR:
            raise unsafe("the vhdx is a differencing image (it has a parent locator)",
                         "merge it into its parent and convert it with qemu-img convert")
        if item == VHDX_FILE_PARAMETERS:
            if params_seen:  # qemu refuses duplicates; each would cost us a read
                raise unsafe("the vhdx metadata lists its file parameters more than once")
            params_seen = True
            (item_off,) = struct.unpack_from("<I", hdr, e + 16)
            params = read_at(meta_off + item_off, 8)
            if len(params) == 8 and struct.unpack_from("<I", params, 4)[0] & VHDX_HAS_PARENT:
                raise unsafe("the vhdx is a differencing image (HasParent is set)",
                             "merge it into its parent and convert it with qemu-img convert")


# --- after qemu-img info -----------------------------------------------------------------------


def check_info(info: ImageInfo, fmt: str) -> None:
    """What qemu-img opened: no backing file, no data file, no extent but the image itself."""
    if info.backing_filename:
        raise formats.unsafe_backing(_show(info.backing_filename))
    if info.data_file:
        raise formats.unsafe_data_file(_show(info.data_file))
    own = info.filename
    others = [e for e in info.extents if e != own]
    if others or (fmt == formats.VMDK and len(info.extents) != 1):
        raise unsafe(
            f"the vmdk opened as {len(info.extents)} extent(s) "
            f"({'; '.join(_show(e, 80) for e in info.extents[:4])}), not as the image itself"
        )
    if fmt == formats.VMDK and info.create_type not in ALLOWED_CREATE_TYPES:
        raise unsafe(f"qemu-img reads the vmdk as createType {_show(info.create_type or '')}")
