"""Issue 9, hole 1: host file read through an image, on every path a user can reach.

The reported attack: a *sparse* vmdk whose header says capacity 0 and whose embedded descriptor
says createType "monolithicFlat" with one extent ``RW n FLAT "/host/file" 0``. qemu reads the
embedded descriptor as a descriptor file and copies the host file into the volume. Here the
host file is a canary with known content outside the volume; every attack must end Failed with
reason UnsafeImage and a message naming the problem, and no file of the data dir may hold the
canary's bytes. Variants: other descriptor tricks, qcow2 external data files, differencing
vdi/vhd/vhdx; and a vmdk *inside* a qcow2, which must import as plain guest bytes.

DataVolumes are applied together and imported concurrently (the daemon runs them in parallel).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from cdi.api import annotations as ann
from tests.peers import crafted, images

from .conftest import http_dv

pytestmark = [pytest.mark.peers, pytest.mark.timeout(240)]

TOKEN = b"CANARY-9f2b-host-file-must-not-leak"
FIX = "CDI imports self-contained images only"


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("qemu-img", "nbdkit", "bwrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


class Canary:
    """A host file (mode 0600, not served) that the attacks point at; unchanged afterwards."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.data = crafted.make_canary(str(path), TOKEN)
        self.stat = os.stat(path)

    def assert_untouched(self) -> None:
        st = os.stat(self.path)
        assert self.path.read_bytes() == self.data
        assert (st.st_mode, st.st_uid, st.st_mtime_ns) == (self.stat.st_mode, self.stat.st_uid, self.stat.st_mtime_ns)


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    return Canary(tmp_path / "host" / "canary.txt")


def no_canary_bytes(root: str) -> None:
    """No file under ``root`` (volumes, scratch, logs, state) holds the canary's content."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    assert TOKEN not in f.read(), f"{p} holds the canary's bytes"


def failed(cluster: Any, name: str) -> tuple[str, str]:
    st = cluster.wait_phase(name, timeout=120)["status"]
    running = {c["type"]: c for c in st["conditions"]}["Running"]
    assert st["phase"] == "Failed", (name, st)
    return running["reason"], running["message"]


def attack_vmdk(canary: Canary, sectors: int = 64) -> bytes:
    return crafted.sparse_vmdk_with_descriptor(crafted.flat_descriptor(str(canary.path), sectors), capacity=0)


def serve(tmp_images: Path, name: str, data: bytes, gz: bool = False) -> Path:
    path = tmp_images / name
    path.write_bytes(data)
    if gz:
        images.compress(str(path), str(path) + ".gz", "gz")
        return Path(str(path) + ".gz")
    return path


def test_the_reported_vmdk_attack_fails_through_nbdkit_and_scratch(
    cluster, nginx, tmp_images, served_path, canary, tmp_path
):
    data = attack_vmdk(canary)
    urls = {
        "range": serve(tmp_images, "attack.vmdk", data),  # Range: the nbdkit path
        "gz": serve(tmp_images, "attack-gz.vmdk", data, gz=True),  # compressed: the scratch path
    }
    for name, path in urls.items():
        cluster.apply(http_dv(name, f"{nginx.http_url}/{served_path(path)}", "16Mi"))
    for name in urls:
        reason, message = failed(cluster, name)
        assert reason == "UnsafeImage", (name, message)
        assert message.startswith("the vmdk header says capacity 0, so qemu would read its embedded descriptor"), message
        assert f"FLAT '{canary.path}' 0" in message and "monolithicFlat" in message and FIX in message
        assert "qemu-img convert" in message
        vol = cluster.pvc(name)["metadata"]["annotations"][ann.VOLUME_PATH]
        assert os.listdir(vol) == [], name  # nothing written, no scratch left
    no_canary_bytes(str(tmp_path / "cdi"))
    canary.assert_untouched()


def test_the_reported_vmdk_attack_is_refused_on_upload(env, tmp_path, canary):
    img = tmp_path / "attack.vmdk"
    img.write_bytes(attack_vmdk(canary))
    env.create_dv("up-attack", "16Mi")
    env.wait_ready("up-attack")
    with open(img, "rb") as f:
        resp = env.uploader("up-attack").send("/v1beta1/upload", f, 0, img.stat().st_size, None, None)
    assert resp.status == 400 and resp.reason == "UnsafeImage", resp
    assert "capacity 0" in resp.text and str(canary.path) in resp.text and FIX in resp.text
    assert not os.path.exists(env.disk_path("up-attack"))
    code, _out, err = env.cli("dv", "up-cli", "--image-path", str(img), "--size", "16Mi")
    assert code != 0 and "UnsafeImage" in err and "capacity 0" in err, err
    assert not os.path.exists(env.disk_path("up-cli"))
    # a self-contained vmdk still uploads (scratch copy, then the confined qemu-img)
    raw = tmp_path / "ok.raw"
    images.make_raw(str(raw), 2 << 20, seed=33)
    ok = tmp_path / "ok.vmdk"
    crafted.qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(ok))
    code, out, err = env.cli("dv", "up-ok", "--image-path", str(ok), "--size", "16Mi")
    assert code == 0, out + err
    assert images.sha256_of(env.disk_path("up-ok"), 2 << 20) == images.sha256_of(str(raw))
    no_canary_bytes(env.data_dir)
    canary.assert_untouched()


def _sparse_header_descriptor(canary: Canary) -> bytes:
    """twoGbMaxExtent descriptor behind a sparse header with a non-zero capacity."""
    desc = (
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="twoGbMaxExtentSparse"\n\n'
        f'RW 4 SPARSE "disk-s001.vmdk"\nRW 64 FLAT "{canary.path}" 0\n'
    ).encode()
    return crafted.sparse_vmdk_with_descriptor(desc, capacity=6144)


def _hidden_descriptor(canary: Canary) -> bytes:
    """capacity 0; qemu takes the first "createType" (in a comment), a naive reader the last; the
    extent spreads over lines with odd whitespace after a decoy comment."""
    desc = (
        '# Disk DescriptorFile\nCID=fffffffe\nparentCID=ffffffff\n# createType="twoGbMaxExtentFlat"\n'
        'createType="monolithicSparse"\n'
        f'# RW 8 SPARSE "decoy.vmdk"\n \t RW\n64\tFLAT\r\n"{canary.path}" 0\n'
    ).encode()
    return crafted.sparse_vmdk_with_descriptor(desc, capacity=0)


def test_vmdk_variants_are_refused(cluster, nginx, tmp_images, served_path, canary, tmp_path):
    raw = tmp_path / "r.raw"
    images.make_raw(str(raw), 1 << 20, seed=31)
    stream = tmp_path / "stream.vmdk"
    crafted.qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(stream))
    desc = crafted.embedded_descriptor(str(stream))
    assert b'createType="streamOptimized"' in desc
    crafted.replace_vmdk_descriptor(
        str(stream), desc.replace(b'SPARSE "stream.vmdk"\n', f'SPARSE "stream.vmdk"\nRW 64 FLAT "{canary.path}" 0\n'.encode())
    )
    parent = tmp_path / "parent.vmdk"
    images.convert(str(raw), str(parent), "vmdk")
    child = tmp_path / "child.vmdk"
    crafted.qemu_img("create", "-f", "vmdk", "-b", str(parent), "-F", "vmdk", str(child))
    cases = {
        "two-gb": (serve(tmp_images, "two-gb.vmdk", _sparse_header_descriptor(canary)),
                   "createType 'twoGbMaxExtentSparse'"),
        "hidden": (serve(tmp_images, "hidden.vmdk", _hidden_descriptor(canary)), "capacity 0"),
        "hidden-gz": (serve(tmp_images, "hidden2.vmdk", _hidden_descriptor(canary), gz=True), "capacity 0"),
        "stream-extent": (serve(tmp_images, "stream.vmdk", stream.read_bytes()),
                          f"lists 2 extent(s) (RW 2048 SPARSE 'stream.vmdk'; RW 64 FLAT '{canary.path}' 0)"),
        "vmdk-parent": (serve(tmp_images, "child.vmdk", child.read_bytes()), f"image has a backing file '{parent}'"),
    }
    for name, (path, _needle) in cases.items():
        cluster.apply(http_dv(name, f"{nginx.http_url}/{served_path(path)}", "16Mi"))
    for name, (_path, needle) in cases.items():
        reason, message = failed(cluster, name)
        assert reason == "UnsafeImage" and needle in message and FIX in message, (name, message)
    reason, message = failed(cluster, "hidden")
    assert f"createType 'twoGbMaxExtentFlat' (2 createType entries), extents RW 64 FLAT '{canary.path}' 0" in message
    no_canary_bytes(str(tmp_path / "cdi"))
    canary.assert_untouched()


def test_qcow2_data_files_are_refused(cluster, nginx, tmp_images, served_path, canary, tmp_path):
    bit = tmp_path / "bit.qcow2"
    crafted.qcow2_with_data_file(str(bit), str(canary.path) + ".data")
    ext = tmp_path / "ext.qcow2"
    shutil.copyfile(bit, ext)
    crafted.clear_qcow2_data_file_bits(str(ext))
    data_file = Canary(Path(str(canary.path) + ".data"))  # qemu-img made it: now the canary content
    xl2 = tmp_path / "xl2.qcow2"  # extended L2: converted by qemu-img, not our decoder
    crafted.qemu_img("create", "-f", "qcow2", "-o", f"extended_l2=on,data_file={data_file.path}.2,data_file_raw=on",
                     str(xl2), "1M")
    Canary(Path(f"{data_file.path}.2"))
    cases = {
        "qcow2-bit": (serve(tmp_images, "bit.qcow2", bit.read_bytes()), "external data file"),
        "qcow2-bit-gz": (serve(tmp_images, "bit2.qcow2", bit.read_bytes(), gz=True), "external data file"),
        "qcow2-ext": (serve(tmp_images, "ext.qcow2", ext.read_bytes()), "(a data-file header extension)"),
        "qcow2-xl2": (serve(tmp_images, "xl2.qcow2", xl2.read_bytes()), "external data file"),
    }
    for name, (path, _needle) in cases.items():
        cluster.apply(http_dv(name, f"{nginx.http_url}/{served_path(path)}", "16Mi"))
    for name, (_path, needle) in cases.items():
        reason, message = failed(cluster, name)
        assert reason == "UnsafeImage" and needle in message, (name, message)
        assert message.startswith("image has an external data file "), message
    no_canary_bytes(str(tmp_path / "cdi"))
    data_file.assert_untouched()
    canary.assert_untouched()


def test_differencing_vdi_vhd_vhdx_are_refused(cluster, nginx, tmp_images, served_path, tmp_path):
    raw = tmp_path / "r.raw"
    images.make_raw(str(raw), 2 << 20, seed=32)
    made = {}
    for fmt in ("vdi", "vpc", "vhdx"):
        made[fmt] = tmp_path / f"base.{fmt}"
        images.convert(str(raw), str(made[fmt]), fmt)

    def patched(fmt: str, name: str, patch: Any) -> Path:
        out = tmp_images / name
        shutil.copyfile(made[fmt], out)
        patch(str(out))
        return out

    vhdx = patched("vhdx", "diff.vhdx", crafted.vhdx_differencing)
    cases = {
        "vdi-diff": (patched("vdi", "diff.vdi", lambda p: crafted.vdi_differencing(p, uuid.uuid4())),
                     "the vdi is a differencing image"),
        "vdi-parent": (patched("vdi", "parent.vdi", lambda p: crafted.vdi_with_parent_uuid(p, uuid.uuid4())),
                       "the vdi names a parent image"),
        "vhd-diff": (patched("vpc", "diff.vhd", crafted.vhd_differencing), "the vhd is a differencing disk"),
        "vhd-locator": (patched("vpc", "loc.vhd", lambda p: crafted.vhd_with_parent_locator(p, "/dev/vda")),
                        "the vhd names a parent disk"),
        "vhdx-diff": (vhdx, "the vhdx is a differencing image"),  # checked through Range before nbdkit
        "vhdx-diff-gz": (serve(tmp_images, "diff2.vhdx", vhdx.read_bytes(), gz=True),
                         "the vhdx is a differencing image"),  # checked on the scratch copy
    }
    for name, (path, _needle) in cases.items():
        cluster.apply(http_dv(name, f"{nginx.http_url}/{served_path(path)}", "16Mi"))
    for name, (_path, needle) in cases.items():
        reason, message = failed(cluster, name)
        assert reason == "UnsafeImage" and needle in message and "merge it into its parent" in message, (name, message)
        vol = cluster.pvc(name)["metadata"]["annotations"][ann.VOLUME_PATH]
        assert os.listdir(vol) == [], name


def test_a_vmdk_inside_a_qcow2_is_plain_guest_data(cluster, nginx, tmp_images, served_path, canary, tmp_path):
    """The guest's bytes are never interpreted: the volume holds the attack vmdk itself."""
    vmdk = tmp_path / "attack.vmdk"
    vmdk.write_bytes(attack_vmdk(canary))
    plain = tmp_path / "in.qcow2"
    crafted.qemu_img("convert", "-f", "raw", "-O", "qcow2", str(vmdk), str(plain))
    xl2 = tmp_path / "in-xl2.qcow2"
    crafted.qemu_img("convert", "-f", "raw", "-O", "qcow2", "-o", "extended_l2=on", str(vmdk), str(xl2))
    cases = {
        "in-qcow2": (serve(tmp_images, "in.qcow2", plain.read_bytes()), "qcow2-stream"),
        "in-qcow2-gz": (serve(tmp_images, "in2.qcow2", plain.read_bytes(), gz=True), "qcow2-stream"),
        "in-xl2": (serve(tmp_images, "in-xl2.qcow2", xl2.read_bytes()), "nbdkit"),
        "in-xl2-gz": (serve(tmp_images, "in-xl2b.qcow2", xl2.read_bytes(), gz=True), "scratch"),
    }
    for name, (path, _) in cases.items():
        cluster.apply(http_dv(name, f"{nginx.http_url}/{served_path(path)}", "16Mi"))
    want = vmdk.read_bytes()
    phases = {"qcow2-stream": "phase StreamQcow2", "nbdkit": "phase ConvertDirect", "scratch": "phase StreamScratch"}
    for name, (_, how) in cases.items():
        st = cluster.wait_phase(name, timeout=120)["status"]
        assert st["phase"] == "Succeeded", (name, st)
        assert phases[how] in Path(st["workerLog"]).read_text(), (name, how)  # each path was taken
        disk = cluster.pvc(name)["metadata"]["annotations"][ann.DISK_PATH]
        with open(disk, "rb") as f:
            got = f.read()
        assert got[: len(want)] == want and not any(got[len(want):]), name
    no_canary_bytes(str(tmp_path / "cdi"))
    canary.assert_untouched()
