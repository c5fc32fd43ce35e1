"""Hostile tars against ``archive.extract`` (issue 9, hole 2): nothing outside the volume is
created, written, chmodded or linked to, whatever order, type or name the entries have.

Each attack runs with canaries next to the volume (a file with known bytes and mode, a directory
with mode 0700) and asserts they are untouched, that nothing was moved into the volume and that
the staging directory is gone. The attack tars reach the canaries by their absolute paths through
enough ``..`` components to climb to ``/`` from the staging directory.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cdi.api.contract import Reason
from cdi.common.errors import PermanentError
from cdi.datapath import archive
from tests.unit.datapath.helpers import BytesStream

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20
CANARY = b"canary: must never change\n"
Entry = tuple[Any, ...]


def build(entries: Iterable[Entry], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """A tar in memory. Entries: (kind, name, data/target[, mode]) with kind
    file|dir|symlink|hardlink|chr|blk|fifo; or a ready ``(TarInfo, bytes | None)``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for e in entries:
            if isinstance(e[0], tarfile.TarInfo):
                ti, body = e
                tar.addfile(ti, io.BytesIO(body) if body is not None else None)
                continue
            kind, name, data, *rest = e
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            ti.uid, ti.gid = 4321, 4321
            body = None
            if kind == "file":
                ti.size, ti.mode = len(data), rest[0] if rest else 0o644
                body = io.BytesIO(data)
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, rest[0] if rest else 0o755
            elif kind == "symlink":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, data, 0o777
            elif kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, data
            elif kind in ("chr", "blk"):
                ti.type = tarfile.CHRTYPE if kind == "chr" else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = 1, 3
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            else:
                raise ValueError(kind)
            tar.addfile(ti, body)
    return out.getvalue()


@dataclass
class Box:
    root: Path  # tmp_path
    vol: Path  # the volume (dest_dir)
    host: Path  # stands for the host: canaries live here
    canary: Path  # a file
    canary_dir: Path  # a directory, mode 0700

    def up(self, target: Path) -> str:
        """A relative path from the staging dir to ``target`` that looks inside lexically:
        ``b/b/.../../../<absolute path>``; with ``b -> .`` it climbs to ``/``."""
        n = len(self.vol.parts) + 3
        return "b/" * n + "../" * n + str(target).lstrip("/")

    def snapshot(self) -> dict[str, tuple[int, str]]:
        """Everything outside the volume under tmp_path: mode and content (or link target)."""
        seen: dict[str, tuple[int, str]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != self.vol.name]
            for n in [*dirnames, *filenames]:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    what = "->" + os.readlink(p)
                elif stat.S_ISREG(st.st_mode):
                    what = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                else:
                    what = "dir"
                seen[os.path.relpath(p, self.root)] = (st.st_mode, what)
        return seen


@pytest.fixture
def box(tmp_path: Path) -> Box:
    vol = tmp_path / "vol"
    host = tmp_path / "host"
    vol.mkdir()
    host.mkdir()
    canary = host / "canary.txt"
    canary.write_bytes(CANARY)
    canary.chmod(0o644)
    canary_dir = host / "private"
    canary_dir.mkdir()
    canary_dir.chmod(0o700)
    return Box(tmp_path, vol, host, canary, canary_dir)


def run(box: Box, data: bytes, limit: int = 64 * MiB, **kw: Any) -> int:
    return archive.extract(BytesStream(data), str(box.vol), limit, **kw)


def refused(box: Box, entries: Iterable[Entry], reason: str = Reason.UNSAFE_IMAGE, *, names: Iterable[str] = (),
            fmt: int = tarfile.GNU_FORMAT, limit: int = 64 * MiB) -> str:
    """Run a hostile tar: it must fail with ``reason`` naming each of ``names``, touch nothing."""
    data = build(entries, fmt)
    before = box.snapshot()
    error: PermanentError | None = None
    try:
        run(box, data, limit)
    except PermanentError as e:
        error = e
    # the host first: an extraction that "succeeded" must not hide what it did outside
    assert box.canary.read_bytes() == CANARY
    assert stat.S_IMODE(box.canary.stat().st_mode) == 0o644
    assert stat.S_IMODE(box.canary_dir.stat().st_mode) == 0o700
    assert os.listdir(box.canary_dir) == []
    assert box.snapshot() == before
    assert error is not None, f"extracted: {sorted(os.listdir(box.vol))}"
    msg = error.message
    assert error.reason == reason, msg
    for n in names:
        assert repr(n) in msg, msg
    assert os.listdir(box.vol) == []  # nothing moved into place, staging removed
    return msg


def links_inside(vol: Path) -> list[str]:
    """Every symlink in ``vol``; asserts each resolves inside it."""
    found = []
    real_vol = os.path.realpath(vol)
    for dirpath, dirnames, filenames in os.walk(vol):
        for n in [*dirnames, *filenames]:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                found.append(os.path.relpath(p, vol))
                real = os.path.realpath(p)
                assert real == real_vol or real.startswith(real_vol + os.sep), (p, os.readlink(p))
    return found


# --- the reported attack and its variants ------------------------------------------------------


def test_reported_attack_file_through_a_link_made_later(box: Box) -> None:
    """x -> b/b/../../<host file>, b -> ., then a regular file x: the host file is never written."""
    msg = refused(box, [("symlink", "x", box.up(box.canary)), ("symlink", "b", "."), ("file", "x", b"pwned\n")],
                  names=["x"])
    assert box.up(box.canary) in msg and "outside the volume" in msg


def test_reported_attack_creating_a_new_host_file(box: Box) -> None:
    new = box.host / "created-by-archive"
    refused(box, [("symlink", "x", box.up(new)), ("symlink", "b", "."), ("file", "x", b"pwned\n")], names=["x"])
    assert not new.exists()


def test_reported_attack_directory_entry_does_not_chmod_the_host(box: Box) -> None:
    refused(box, [("symlink", "x", box.up(box.canary_dir)), ("symlink", "b", "."), ("dir", "x", None, 0o777)],
            names=["x"])


def test_reported_attack_order_b_first(box: Box) -> None:
    refused(box, [("symlink", "b", "."), ("symlink", "x", box.up(box.canary)), ("file", "x", b"pwned\n")],
            names=["x"])


def test_link_left_in_place_to_a_host_path_is_refused(box: Box) -> None:
    """Without a replacing entry the link itself would stay in the volume, pointing at the host."""
    refused(box, [("symlink", "b", "."), ("symlink", "x", box.up(box.canary))], names=["x"])


@pytest.mark.parametrize(
    ("entries", "bad"),
    [
        ([("symlink", "d", "/tmp"), ("file", "d/f", b"x")], "d"),  # absolute target
        ([("symlink", "d", "../.."), ("file", "d/f", b"x")], "d"),  # lexically out
        ([("dir", "sub", None), ("symlink", "d", "sub"), ("file", "d/f", b"x")], "d/f"),  # inside, still refused
        ([("symlink", "d", "sub"), ("dir", "d/e", None)], "d/e"),
        ([("symlink", "d", "sub"), ("symlink", "d/l", "x")], "d/l"),
        ([("dir", "a", None), ("symlink", "a/d", "."), ("file", "a/d/d/f", b"x")], "a/d/d/f"),
    ],
)
def test_no_entry_passes_through_a_symlink(box: Box, entries: list[Entry], bad: str) -> None:
    refused(box, entries, names=[bad])


def test_symlink_dir_to_the_host_then_a_file_inside(box: Box) -> None:
    refused(box, [("symlink", "b", "."), ("symlink", "d", box.up(box.canary_dir)), ("file", "d/f", b"x")],
            names=["d/f"])


@pytest.mark.parametrize(
    ("entries", "bad"),
    [
        ([("symlink", "here", "."), ("symlink", "up", "here/..")], "up"),
        ([("symlink", "a", "b"), ("symlink", "b", "c"), ("symlink", "c", "d/.."), ("symlink", "d", ".")], "a"),
        ([("dir", "x", None), ("dir", "x/y", None), ("symlink", "x/y/l", "../../m/.."), ("symlink", "m", ".")],
         "x/y/l"),
        ([("symlink", "l1", "s/s/s/s"), ("symlink", "s", "."), ("symlink", "l2", "l1/x/../..")], "l2"),
        ([("dir", "deep", None), ("symlink", "deep/top", ".."), ("symlink", "esc", "deep/top/..")], "esc"),
    ],
)
def test_relative_link_chains_that_leave(box: Box, entries: list[Entry], bad: str) -> None:
    msg = refused(box, entries, names=[bad])
    assert "outside the volume" in msg


def test_link_loop_is_refused(box: Box) -> None:
    msg = refused(box, [("symlink", "a", "b"), ("symlink", "b", "a")], names=["a"])
    assert "more than 40 links" in msg


def test_symlink_replaced_by_a_later_entry(box: Box) -> None:
    """A later entry of the same name replaces the link (tar order); the data stays in the volume."""
    run(box, build([("symlink", "x", "y"), ("file", "x", b"the file\n"), ("file", "z", b"z"),
                    ("symlink", "z", "x"), ("symlink", "w", "x"), ("symlink", "w", "z"),
                    ("symlink", "d", "x"), ("dir", "d", None)]))
    assert (box.vol / "x").read_bytes() == b"the file\n" and not (box.vol / "x").is_symlink()
    assert os.readlink(box.vol / "z") == "x" and os.readlink(box.vol / "w") == "z"
    assert (box.vol / "d").is_dir() and not (box.vol / "d").is_symlink()
    assert sorted(links_inside(box.vol)) == ["w", "z"]


def test_file_replacing_a_link_to_the_host_leaves_the_host_alone(box: Box) -> None:
    """Even the plain version (no b trick, target checked at once) cannot write the host file."""
    refused(box, [("symlink", "x", str(box.canary)), ("file", "x", b"pwned\n")], names=["x"])


# --- hard links -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "bad", "reason"),
    [
        # to a symlink that points out (non-lexically)
        ([("symlink", "b", "."), ("symlink", "s", "@canary"), ("hardlink", "h", "s")], "h", Reason.UNSAFE_IMAGE),
        # to a symlink that stays inside: still not a regular file
        ([("file", "f", b"x"), ("symlink", "s", "f"), ("hardlink", "h", "s")], "h", Reason.UNSAFE_IMAGE),
        # to an absolute (host) path
        ([("hardlink", "h", "@canary-abs")], "h", Reason.UNSAFE_IMAGE),
        ([("hardlink", "h", "/etc/passwd")], "h", Reason.UNSAFE_IMAGE),
        ([("hardlink", "h", "../../etc/passwd")], "h", Reason.UNSAFE_IMAGE),
        # through a symlinked directory
        ([("dir", "sub", None), ("file", "sub/f", b"x"), ("symlink", "d", "sub"), ("hardlink", "h", "d/f")],
         "h", Reason.UNSAFE_IMAGE),
        ([("symlink", "b", "."), ("symlink", "d", "@host"), ("hardlink", "h", "d/canary.txt")], "h",
         Reason.UNSAFE_IMAGE),
        # to nothing extracted, or a directory
        ([("hardlink", "h", "missing")], "h", Reason.INVALID_IMAGE),
        ([("dir", "sub", None), ("hardlink", "h", "sub")], "h", Reason.INVALID_IMAGE),
        ([("file", "f", b"x"), ("hardlink", "h", "f/g")], "h", Reason.INVALID_IMAGE),
    ],
)
def test_hard_links_only_to_regular_files_inside(box: Box, entries: list[Entry], bad: str, reason: str) -> None:
    subst = {"@canary": box.up(box.canary), "@canary-abs": str(box.canary), "@host": box.up(box.host)}
    entries = [tuple(subst.get(x, x) if isinstance(x, str) else x for x in e) for e in entries]
    msg = refused(box, entries, reason, names=[bad])
    assert "hard link" in msg
    assert os.stat(box.canary).st_nlink == 1


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("/abs", "absolute"),
        ("//abs/x", "absolute"),
        ("a/../../escape", "'..'"),
        ("a/..", "'..'"),
        ("..", "'..'"),
        (".cdi-staging-1/x", "keeps for itself"),
    ],
)
def test_bad_names(box: Box, name: str, why: str) -> None:
    msg = refused(box, [("file", "ok.txt", b"fine"), ("file", name, b"x")], names=[name])
    assert why in msg
    assert not (box.root / "escape").exists()


def test_dot_slash_prefixes_and_the_top_directory(box: Box) -> None:
    run(box, build([("dir", "./", None, 0o777), ("dir", "./a", None), ("file", "./a/./b", b"data"),
                    ("file", "a//c", b"c"), ("symlink", "./a/l", "./b")]))
    assert sorted(os.listdir(box.vol)) == ["a"]
    assert (box.vol / "a" / "b").read_bytes() == b"data" and (box.vol / "a" / "c").read_bytes() == b"c"
    assert (box.vol / "a" / "l").read_bytes() == b"data"
    assert stat.S_IMODE(box.vol.stat().st_mode) != 0o777  # the volume's own directory keeps its mode


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_extract(box: Box, fmt: int) -> None:
    long_dir = "/".join(["d" * 200] * 6)
    long_target = "../" * 6 + "top.txt"
    run(box, build([("file", "top.txt", b"top"), ("file", f"{long_dir}/file.txt", b"deep data"),
                    ("symlink", f"{long_dir}/link", long_target),
                    ("hardlink", f"{long_dir}/hard", "top.txt")], fmt))
    d = box.vol.joinpath(*long_dir.split("/"))
    assert (d / "file.txt").read_bytes() == b"deep data"
    assert os.readlink(d / "link") == long_target and (d / "link").read_bytes() == b"top"
    assert (d / "hard").stat().st_ino == (box.vol / "top.txt").stat().st_ino
    links_inside(box.vol)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([("file", "x" * 256, b"x")], "component longer than 255"),
        ([("file", "/".join(["d" * 250] * 17), b"x")], "longer than 4095 bytes"),
        ([("symlink", "l", "a/" * 2048)], "longer than 4095 bytes"),
        ([("file", "d/" * 256 + "f", b"x")], "257 directories deep"),
    ],
)
def test_names_past_the_limits(box: Box, fmt: int, entries: list[Entry], why: str) -> None:
    msg = refused(box, entries, fmt=fmt)
    assert why in msg


def test_deep_path_within_the_limit(box: Box) -> None:
    name = "d/" * 200 + "f"
    run(box, build([("file", name, b"bottom")]))
    assert box.vol.joinpath(*name.split("/")).read_bytes() == b"bottom"


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_huge_header_is_refused_before_it_is_held_in_memory(box: Box, fmt: int) -> None:
    """A 3 MiB long name (GNU 'L' or pax 'path'): refused while tarfile reads it."""
    msg = refused(box, [("file", "ok", b"ok"), ("file", "a/" * (3 * MiB // 2), b"x")], fmt=fmt)
    assert "header after entry 'ok' is larger than" in msg


def test_huge_sparse_map_is_refused_while_it_is_read(box: Box) -> None:
    """A pax sparse 1.0 member whose map (in its data) is 3 MiB: tarfile reads it with the header."""
    pairs = 300_000
    body = f"{pairs}\n".encode() + b"0\n1\n" * pairs
    ti = tarfile.TarInfo("GNUSparseFile.0/s")
    ti.size = len(body)
    ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s",
                      "GNU.sparse.realsize": "1"}
    msg = refused(box, [("file", "ok", b"ok"), (ti, body)], fmt=tarfile.PAX_FORMAT)
    assert "header after entry 'ok' is larger than" in msg


def test_too_many_global_pax_keys(box: Box) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={f"k{i}": "v" for i in range(archive.MAX_GLOBAL_PAX_KEYS + 1)}) as tar:
        f = tarfile.TarInfo("f")
        tar.addfile(f, io.BytesIO(b""))
    before = box.snapshot()
    with pytest.raises(PermanentError, match="global pax headers") as e:
        run(box, out.getvalue())
    assert e.value.reason == Reason.UNSAFE_IMAGE and box.snapshot() == before


# --- counts and sizes -----------------------------------------------------------------------


def test_entry_cap(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_ENTRIES", 50)
    run(box, build([("file", f"f{i}", b"") for i in range(50)]))
    assert len(os.listdir(box.vol)) == 50
    for p in box.vol.iterdir():
        p.unlink()
    msg = refused(box, [("dir", "d", None)] + [("file", f"d/f{i}", b"") for i in range(60)])
    assert "more than 50 entries" in msg and "'d/f49'" in msg


def test_entries_cost_space_beyond_their_data(box: Box) -> None:
    """100 empty files and links: no file data, still more than a 64 KiB volume holds."""
    entries: list[Entry] = [("file", f"e{i}", b"") for i in range(50)] + [("symlink", f"l{i}", "e0") for i in range(50)]
    msg = refused(box, entries, Reason.TOO_SMALL, limit=64 << 10)
    assert "request a larger volume" in msg and "4096 bytes more" in msg and "'e16'" in msg


def test_file_data_bound(box: Box) -> None:
    msg = refused(box, [("file", "a", bytes(600_000)), ("file", "b", bytes(600_000))], Reason.TOO_SMALL,
                  names=["b"], limit=1 * MiB)
    assert "usable size (1048576 bytes" in msg


@pytest.mark.parametrize("kind", ["chr", "blk", "fifo"])
def test_device_nodes_and_fifos(box: Box, kind: str) -> None:
    msg = refused(box, [("file", "ok", b"ok"), (kind, "node", None)], names=["node"])
    assert "device node or FIFO" in msg


def test_unknown_entry_type(box: Box) -> None:
    ti = tarfile.TarInfo("odd")
    ti.type = b"Z"
    msg = refused(box, [(ti, None)], names=["odd"])
    assert "unsupported type" in msg


def test_conflicting_entries_are_invalid(box: Box) -> None:
    refused(box, [("file", "f", b"x"), ("file", "f/g", b"y")], Reason.INVALID_IMAGE, names=["f/g"])
    refused(box, [("file", "d/f", b"x"), ("file", "d", b"y")], Reason.INVALID_IMAGE, names=["d"])
    refused(box, [("file", "d/f", b"x"), ("symlink", "d", "d2")], Reason.INVALID_IMAGE, names=["d"])


def test_truncated_archive(box: Box) -> None:
    data = build([("file", "big", os.urandom(100_000))])
    before = box.snapshot()
    with pytest.raises(PermanentError) as e:
        run(box, data[:50_000])
    assert e.value.reason == Reason.INVALID_IMAGE and "big" in e.value.message
    assert box.snapshot() == before and os.listdir(box.vol) == []


# --- a legitimate archive --------------------------------------------------------------------


def test_legit_archive_with_links_extracts_exactly(box: Box) -> None:
    blob = os.urandom(700_000)
    sparse = os.urandom(4096) + bytes(3 * MiB) + os.urandom(4096)
    entries: list[Entry] = [
        ("dir", "etc", None, 0o755),
        ("file", "etc/hosts", b"127.0.0.1 localhost\n", 0o644),
        ("file", "bin/tool", blob, 0o4755),  # parent made implicitly; setuid dropped
        ("dir", "ro", None, 0o555),
        ("file", "ro/data", b"read only\n", 0o444),
        ("file", "sparse.img", sparse, 0o600),
        ("symlink", "etc/hosts.link", "hosts"),
        ("symlink", "etc/up", "../bin/tool"),
        ("symlink", "lib", "bin"),
        ("symlink", "etc/chain", "../lib/tool"),  # through another link, inside
        ("symlink", "dangling", "nothing/here"),
        ("symlink", "self", "."),
        ("hardlink", "bin/tool2", "bin/tool"),
        ("hardlink", "ro/data2", "ro/data"),
        ("file", "etc/hosts", b"replaced\n", 0o640),  # later entry wins
    ]
    progress: list[int] = []
    committed: list[bool] = []
    n = run(box, build(entries), on_progress=progress.append, before_commit=lambda: committed.append(True))
    v = box.vol
    assert n == len(blob) + 20 + 10 + len(sparse) + 9
    assert committed == [True] and progress[-1] == n
    assert sorted(os.listdir(v)) == ["bin", "dangling", "etc", "lib", "ro", "self", "sparse.img"]
    assert (v / "etc" / "hosts").read_bytes() == b"replaced\n"
    assert stat.S_IMODE((v / "etc" / "hosts").stat().st_mode) == 0o640
    assert (v / "bin" / "tool").read_bytes() == blob
    assert stat.S_IMODE((v / "bin" / "tool").stat().st_mode) == 0o755
    assert (v / "bin" / "tool").stat().st_uid == os.getuid()  # never the archive's 4321
    assert (v / "bin" / "tool2").stat().st_ino == (v / "bin" / "tool").stat().st_ino
    assert (v / "ro" / "data2").read_bytes() == b"read only\n"
    assert stat.S_IMODE((v / "ro").stat().st_mode) == 0o555
    assert (v / "sparse.img").read_bytes() == sparse
    assert (v / "sparse.img").stat().st_blocks * 512 <= 256 << 10  # the zero MiBs stayed holes
    assert os.readlink(v / "etc" / "hosts.link") == "hosts"
    assert (v / "etc" / "hosts.link").read_bytes() == b"replaced\n"
    assert (v / "etc" / "up").read_bytes() == blob and (v / "etc" / "chain").read_bytes() == blob
    assert os.readlink(v / "dangling") == "nothing/here"
    assert (v / "bin" / "tool").stat().st_mtime == 1_700_000_000
    assert sorted(links_inside(v)) == ["dangling", "etc/chain", "etc/hosts.link", "etc/up", "lib", "self"]
    assert not [p for p in os.listdir(v) if p.startswith(archive.STAGING_PREFIX)]


def test_real_gnu_tar_output_extracts(box: Box, tmp_path: Path) -> None:
    """A tree packed by tarfile.add (as tar -c would): dirs first, links as found."""
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(b"f data")
    os.symlink("b/f", src / "a" / "lf")
    os.link(src / "a" / "b" / "f", src / "a" / "hf")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(src, ".")
    run(box, out.getvalue())
    assert (box.vol / "a" / "lf").read_bytes() == b"f data"
    assert (box.vol / "a" / "hf").stat().st_ino == (box.vol / "a" / "b" / "f").stat().st_ino


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_gnu_tar_sparse_files_and_links(box: Box, tmp_path: Path, fmt: str) -> None:
    """What GNU tar writes with --sparse (old GNU sparse headers, pax sparse 1.0) and links."""
    src = tmp_path / "src"
    src.mkdir()
    img = src / "disk.img"
    with open(img, "wb") as f:
        f.write(b"A" * 5000)
        f.seek(3 * MiB)
        f.write(b"B" * 7000)
        f.truncate(5 * MiB)
    os.symlink("disk.img", src / "disk.link")
    os.link(img, src / "disk.hard")
    tar = tmp_path / "t.tar"
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-C", str(src), "-cf", str(tar), "."], check=True)
    run(box, tar.read_bytes())
    out = box.vol / "disk.img"
    assert out.read_bytes() == img.read_bytes() and out.stat().st_size == 5 * MiB
    assert out.stat().st_blocks * 512 <= 256 << 10  # holes stayed holes
    assert os.readlink(box.vol / "disk.link") == "disk.img"
    assert (box.vol / "disk.hard").stat().st_ino == out.stat().st_ino


NO_DAC = "-dac_override,-dac_read_search,-fowner"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_read_only_directories_without_root_privileges(box: Box, tmp_path: Path) -> None:
    """Modes that take away the owner's access (0555, 0500, 0000) extract when the worker cannot
    override file modes (as a worker without root's capabilities)."""
    tar = tmp_path / "ro.tar"
    tar.write_bytes(build([("dir", "ro", None, 0o555), ("dir", "ro/sub", None, 0o500),
                           ("file", "ro/sub/f", b"deep\n", 0o444), ("dir", "locked", None, 0o000),
                           ("file", "locked/secret", b"s\n", 0o400), ("symlink", "ro/l", "sub/f")]))
    code = ("import sys; from cdi.datapath import archive; from tests.unit.datapath.helpers import BytesStream; "
            "archive.extract(BytesStream(open(sys.argv[1], 'rb').read()), sys.argv[2], 1 << 30)")
    r = subprocess.run(["setpriv", f"--bounding-set={NO_DAC}", sys.executable, "-c", code, str(tar), str(box.vol)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    v = box.vol
    assert sorted(os.listdir(v)) == ["locked", "ro"]
    assert [stat.S_IMODE((v / p).stat().st_mode) for p in ("ro", "ro/sub", "locked")] == [0o555, 0o500, 0o000]
    assert (v / "ro" / "sub" / "f").read_bytes() == b"deep\n" and (v / "ro" / "l").read_bytes() == b"deep\n"
    assert (v / "locked" / "secret").read_bytes() == b"s\n"
    for p in ("ro", "ro/sub", "locked"):  # let pytest remove tmp_path
        (v / p).chmod(0o755)


# --- staging and commit -----------------------------------------------------------------------


def test_before_commit_failure_moves_nothing(box: Box) -> None:
    def boom() -> None:
        raise PermanentError("checksum mismatch", reason=Reason.CHECKSUM_ERROR)

    with pytest.raises(PermanentError, match="checksum"):
        run(box, build([("dir", "d", None), ("file", "d/f", b"x"), ("symlink", "l", "d")]), before_commit=boom)
    assert os.listdir(box.vol) == []


def test_stale_staging_link_is_not_followed(box: Box) -> None:
    """A leftover ``.cdi-staging-<pid>`` that is a link to the host is removed, not followed."""
    stale = box.vol / f"{archive.STAGING_PREFIX}-{os.getpid()}"
    os.symlink(box.canary_dir, stale)
    (box.canary_dir / "keep").write_bytes(b"keep")
    run(box, build([("file", "f", b"x")]))
    assert os.listdir(box.vol) == ["f"]
    assert (box.canary_dir / "keep").read_bytes() == b"keep"
    assert stat.S_IMODE(box.canary_dir.stat().st_mode) == 0o700


def test_existing_link_in_the_volume_is_replaced_not_followed(box: Box) -> None:
    os.symlink(box.canary, box.vol / "f")
    os.symlink(box.canary_dir, box.vol / "d")
    run(box, build([("file", "f", b"new"), ("dir", "d", None), ("file", "d/x", b"x")]))
    assert (box.vol / "f").read_bytes() == b"new" and not (box.vol / "f").is_symlink()
    assert box.canary.read_bytes() == CANARY and os.listdir(box.canary_dir) == []


def test_failure_leaves_no_staging(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real: Callable[..., None] = archive.shutil.rmtree

    def spy(path: Any, *a: Any, **kw: Any) -> None:
        calls.append(str(path))
        real(path, *a, **kw)

    monkeypatch.setattr(archive.shutil, "rmtree", spy)
    with pytest.raises(PermanentError):
        run(box, build([("dir", "d", None), ("file", "d/f", b"x"), ("chr", "d/null", None)]))
    assert os.listdir(box.vol) == [] and calls == [f"{archive.STAGING_PREFIX}-{os.getpid()}"]


# --- a whole archive, or none -------------------------------------------------------------------


def _two_files() -> bytes:
    return build([("file", "a", b"A" * 1000), ("file", "b", b"B" * 3000)])


def test_a_whole_archive_ends_with_its_marker_and_extracts(tmp_path: Path) -> None:
    vol = tmp_path / "v"
    vol.mkdir()
    assert archive.extract(BytesStream(_two_files()), str(vol), 10 * MiB) == 4000
    assert (vol / "b").read_bytes() == b"B" * 3000


@pytest.mark.parametrize(
    "cut, words",
    [
        (lambda t: t[: 512 + 1024], "ends without its end-of-archive marker"),  # right after entry a
        (lambda t: t[: 512 + 1024 + 100], "ends in the middle of a header"),
        (lambda t: t[: 512 + 1024] + b"\x07" * 512 + t[512 + 1024 + 512 :], "damaged header at byte 1536"),
    ],
    ids=["at-an-entry-boundary", "inside-a-header", "damaged-header"],
)
def test_a_cut_or_damaged_archive_fails_and_writes_nothing(tmp_path: Path, cut: Any, words: str) -> None:
    vol = tmp_path / "v"
    vol.mkdir()
    with pytest.raises(PermanentError) as e:
        archive.extract(BytesStream(cut(_two_files())), str(vol), 10 * MiB)
    assert e.value.reason == Reason.INVALID_IMAGE
    assert words in e.value.message and "after entry 'a'" in e.value.message
    assert os.listdir(vol) == []


def test_deep_hard_links_on_a_full_cache_stay_within_the_descriptor_limit(tmp_path: Path) -> None:
    """A full cache of directories, then a hard link whose name and target are 250 levels deep
    each: under the usual limit of 1024 descriptors this ran out (EMFILE, a retried internal error)."""
    import resource

    deep_a = "/".join(["a"] * 250)
    deep_b = "/".join(["b"] * 250)
    entries: list[Entry] = [("file", f"{deep_a}/f", b"linked")]
    entries += [("file", f"c{i}/f", b"x") for i in range(263)]  # the cache overflows and is emptied
    entries += [("file", f"d{i}/f", b"x") for i in range(512)]  # full again, without the target
    entries += [("hardlink", f"{deep_b}/g", f"{deep_a}/f")]
    vol = tmp_path / "v"
    vol.mkdir()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        archive.extract(BytesStream(build(entries)), str(vol), 64 * MiB)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    g = vol.joinpath(*deep_b.split("/"), "g")
    assert g.read_bytes() == b"linked" and os.stat(g).st_nlink == 2
