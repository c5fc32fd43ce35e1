"""Issue 9, hole 2: a tar (contentType archive) that writes a host file through a link it makes
later, through the real paths: nginx -> controller -> importer worker, and the upload proxy ->
upload server. The workers run as root here, as reported.

The attack: ``x -> b/b/.../../../<host file>`` (the ``b/..`` pairs cancel lexically), ``b -> .``,
then a regular file ``x`` (or a directory ``x``, which chmodded the host target). Each test
asserts the DataVolume or the upload fails with ``UnsafeImage`` naming ``x``, that the canaries
outside the volume keep their bytes and modes, and that the volume holds no link to a host path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.api import annotations as ann
from cdi.api import upload as api
from tests.peers import images

from .conftest import MiB, http_dv

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

CANARY = b"host file: must never change\n"


class Host:
    """Canaries outside every volume that a worker of any uid could write if it reached them by
    following a link (so a worker's own uid does not hide a hole in the extraction): a
    world-writable file with known bytes and a directory with mode 0700, in a world-writable
    directory under /tmp."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cdi-host-", dir="/tmp"))
        self.dir.chmod(0o777)
        self.file = self.dir / "canary.txt"
        self.file.write_bytes(CANARY)
        self.file.chmod(0o666)
        self.private = self.dir / "private"
        self.private.mkdir()
        self.private.chmod(0o700)
        self.new = self.dir / "made-by-the-archive"

    def untouched(self) -> None:
        assert self.file.read_bytes() == CANARY
        assert stat.S_IMODE(self.file.stat().st_mode) == 0o666 and self.file.stat().st_nlink == 1
        assert stat.S_IMODE(self.private.stat().st_mode) == 0o700
        assert os.listdir(self.private) == [] and not self.new.exists()
        assert sorted(os.listdir(self.dir)) == ["canary.txt", "private"]


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host()
    yield h
    shutil.rmtree(h.dir)


def up(target: Path) -> str:
    """Looks inside lexically; with ``b -> .`` it climbs to ``/`` from a volume less than 30 deep
    (30 links to follow: under the kernel's 40, so the attack works on a plain extractor)."""
    return "b/" * 30 + "../" * 30 + str(target).lstrip("/")


def attack_tar(path: Path, target: Path, kind: str = "file") -> str:
    last: tuple[str, str, bytes | str] = ("file", "x", b"pwned\n") if kind == "file" else ("dir", "x", b"")
    images.make_tar(str(path), [("file", "ok.txt", b"fine\n"), ("symlink", "x", up(target)),
                                ("symlink", "b", "."), last])
    return str(path)


def no_host_links(vol: str) -> None:
    real_vol = os.path.realpath(vol)
    for dirpath, dirnames, filenames in os.walk(vol):
        for n in [*dirnames, *filenames]:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                real = os.path.realpath(p)
                assert real == real_vol or real.startswith(real_vol + os.sep), (p, os.readlink(p))


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_import_of_the_attack_fails_unsafe_and_the_host_is_untouched(cluster, nginx, tmp_images, served_path, host):
    d = Path(tmp_images)
    cases = {
        "write": attack_tar(d / "write.tar", host.file),
        "create": attack_tar(d / "create.tar", host.new),
        "chmod": attack_tar(d / "chmod.tar", host.private, kind="dir"),
    }
    for name, tar in cases.items():
        cluster.apply(http_dv(name, f"{nginx.http_url}/{served_path(tar)}", "16Mi", content_type="archive"))
    done = {name: cluster.wait_phase(name)["status"] for name in cases}
    host.untouched()  # first: a "successful" import must not hide what it wrote outside
    for name, st in done.items():
        running = {c["type"]: c for c in st["conditions"]}["Running"]
        assert st["phase"] == "Failed" and running["reason"] == "UnsafeImage", (name, st)
        assert "archive entry 'x' is a symlink to 'b/b/" in running["message"], running["message"]
        assert "outside the volume" in running["message"]
        vol = cluster.pvc(name)["metadata"]["annotations"][ann.VOLUME_PATH]
        assert not [n for n in os.listdir(vol) if n in ("ok.txt", "x", "b") or n.startswith(".cdi-staging")]
        no_host_links(vol)
        assert cluster.events(name)[-1] == ("Warning", "ImportFailed"), cluster.events(name)


def test_import_of_a_legit_archive_with_links_is_exact(cluster, nginx, tmp_images, served_path, host):
    blob = os.urandom(1 * MiB + 123)
    tar = str(Path(tmp_images) / "legit.tar")
    images.make_tar(tar, [("dir", "etc", b""), ("file", "etc/motd", b"hello\n"), ("file", "bin/tool", blob),
                          ("symlink", "lib", "bin"), ("symlink", "etc/tool", "../lib/tool"),
                          ("symlink", "etc/motd.link", "motd"), ("hardlink", "bin/tool2", "bin/tool")])
    images.compress(tar, tar + ".gz", "gz")
    cluster.apply(http_dv("legit", f"{nginx.http_url}/{served_path(tar + '.gz')}", "16Mi", content_type="archive"))
    st = cluster.wait_phase("legit")["status"]
    assert st["phase"] == "Succeeded", st
    vol = cluster.pvc("legit")["metadata"]["annotations"][ann.VOLUME_PATH]
    v = Path(vol)
    assert sorted(os.listdir(v)) == ["bin", "etc", "lib"]
    assert (v / "etc" / "motd").read_bytes() == b"hello\n" and (v / "etc" / "motd.link").read_bytes() == b"hello\n"
    assert sha256(str(v / "bin" / "tool")) == hashlib.sha256(blob).hexdigest()
    assert (v / "etc" / "tool").read_bytes() == blob
    assert (v / "bin" / "tool2").stat().st_ino == (v / "bin" / "tool").stat().st_ino
    assert os.readlink(v / "lib") == "bin" and os.readlink(v / "etc" / "tool") == "../lib/tool"
    no_host_links(vol)
    host.untouched()


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_upload_of_the_attack_fails_unsafe_and_the_host_is_untouched(env, tmp_path, host, kind):
    tar = attack_tar(tmp_path / "evil.tar", host.file if kind == "file" else host.private, kind)
    env.create_dv("evil", content_type="archive")
    env.wait_ready("evil")
    with open(tar, "rb") as f:
        resp = env.uploader("evil").send(api.ARCHIVE_PATHS[0], f, 0, os.path.getsize(tar), None, None)
    host.untouched()
    assert resp.status == 400 and resp.reason == "UnsafeImage", resp
    assert "archive entry 'x' is a symlink to 'b/b/" in resp.text and "outside the volume" in resp.text, resp.text
    vol = env.volume_path("evil")
    assert not [n for n in os.listdir(vol) if n in ("ok.txt", "x", "b") or n.startswith(".cdi-staging")]
    no_host_links(vol)
    deadline = time.monotonic() + 10  # the server reports the failure to the controller
    while "UnsafeImage" not in json.dumps(env.dv("evil")["status"]["conditions"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    st = env.dv("evil")["status"]
    assert st["phase"] == "UploadReady" and "UnsafeImage" in json.dumps(st["conditions"]), st  # may retry
    # the CLI says the same to a user
    code, out, err = env.cli("dv", "evil", "--no-create", "--archive-path", tar)
    assert code != 0 and "UnsafeImage" in err and "'x'" in err, out + err
    host.untouched()
