"""Every format and compression through the real DataVolume path (nginx -> controller -> worker).

All DataVolumes are applied at once and imported concurrently; each asserts the volume holds
exactly the source's raw content (sha256 over the usable size), that holes stayed holes, and
the event path a user sees.
"""

from __future__ import annotations

import os
import shutil

import pytest

from cdi.api import annotations as ann
from tests.peers import images

from .conftest import MiB, http_dv

pytestmark = [pytest.mark.peers]

FORMATS = ["raw", "iso", "qcow2", "qcow2c", "vmdk", "vdi", "vhd", "vhdx", "raw.gz", "raw.xz", "raw.zst",
           "qcow2.gz", "qcow2.zst"]


def build(fmt: str, raw: str, d: str) -> str:
    out = os.path.join(d, f"disk.{fmt}")
    if fmt in ("raw", "iso"):
        shutil.copyfile(raw, out)
    elif fmt == "qcow2c":
        images.convert(raw, out, "qcow2", compressed=True)
    elif fmt in ("qcow2", "vmdk", "vdi", "vhdx"):
        images.convert(raw, out, fmt)
    elif fmt == "vhd":
        images.convert(raw, out, "vpc")
    else:
        inner, algo = fmt.rsplit(".", 1)
        src = raw if inner == "raw" else os.path.join(d, "disk.qcow2")
        images.compress(src, out, algo)
    return out


def test_every_format_imports_to_the_exact_raw_bytes(cluster, nginx, tmp_images, served_path):
    d = str(tmp_images)
    raw = os.path.join(d, "source.raw")
    data = images.make_raw(raw, 6 * MiB, seed=21)
    iso = os.path.join(d, "source.iso")
    images.make_iso(iso, {"readme.txt": b"pycdi iso\n" * 1000, "blob.bin": os.urandom(300 * 1024)}, d)
    names = {}
    for fmt in FORMATS:
        src = iso if fmt == "iso" else raw
        path = build(fmt, src, d) if fmt != "iso" else iso
        name = "f-" + fmt.replace(".", "-")
        names[name] = src
        cluster.apply(http_dv(name, f"{nginx.http_url}/{served_path(path)}", "32Mi"))
    failures = []
    for name, src in names.items():
        dv = cluster.wait_phase(name, timeout=120)
        st = dv["status"]
        if st["phase"] != "Succeeded":
            failures.append((name, st))
            continue
        disk = cluster.pvc(name)["metadata"]["annotations"][ann.DISK_PATH]
        size = os.path.getsize(disk)
        assert size == 32 * MiB, name
        assert images.sha256_of(disk, size) == images.sha256_of(src, size), name
        if src == raw:
            assert images.allocated_bytes(disk) <= data + 1 * MiB, f"{name}: holes were filled"
        reasons = [r for _, r in cluster.events(name)]
        assert reasons[0] == "Pending" and "ImportScheduled" in reasons and reasons[-1] == "ImportSucceeded", reasons
        assert st["progress"] == "100.0%" and st["restartCount"] == 0
    assert not failures, failures


def test_archive_content_extracts_a_tar_into_the_volume(cluster, nginx, tmp_images, served_path):
    d = str(tmp_images)
    tar = os.path.join(d, "files.tar")
    images.make_tar(tar, [("dir", "etc", b""), ("file", "etc/motd", b"hello from an archive\n"),
                          ("file", "big.bin", os.urandom(1 * MiB)), ("symlink", "etc/link", "motd")])
    images.compress(tar, tar + ".xz", "xz")
    cluster.apply(http_dv("arch", f"{nginx.http_url}/{served_path(tar + '.xz')}", "16Mi", content_type="archive"))
    evil = os.path.join(d, "evil.tar")
    images.make_tar(evil, [("file", "ok.txt", b"ok"), ("file", "../escape.txt", b"x")])
    cluster.apply(http_dv("evil", f"{nginx.http_url}/{served_path(evil)}", "16Mi", content_type="archive"))
    st = cluster.wait_phase("arch")["status"]
    assert st["phase"] == "Succeeded", st
    vol = cluster.pvc("arch")["metadata"]["annotations"][ann.VOLUME_PATH]
    with open(os.path.join(vol, "etc", "motd"), "rb") as f:
        assert f.read() == b"hello from an archive\n"
    assert os.readlink(os.path.join(vol, "etc", "link")) == "motd"
    assert os.path.getsize(os.path.join(vol, "big.bin")) == 1 * MiB
    st = cluster.wait_phase("evil")["status"]
    running = {c["type"]: c for c in st["conditions"]}["Running"]
    assert st["phase"] == "Failed" and running["reason"] == "UnsafeImage" and "../escape.txt" in running["message"]
    evil_vol = cluster.pvc("evil")["metadata"]["annotations"][ann.VOLUME_PATH]
    assert not os.path.exists(os.path.join(os.path.dirname(evil_vol), "escape.txt"))
