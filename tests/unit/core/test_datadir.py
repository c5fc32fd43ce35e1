"""The data dir's checks: what is tightened, what is refused, and what is left alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cdi.backends.embedded import datadir
from cdi.backends.embedded.datadir import UnsafeDataDir, secure

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create files owned by others")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_fresh_data_dir_is_created_0700_and_nothing_is_reported(tmp_path):
    d = tmp_path / "a" / "cdi"
    assert secure(str(d)) == []
    assert mode(d) == 0o700


def test_loose_parts_are_tightened_and_reported_once(tmp_path, caplog):
    d = tmp_path / "cdi"
    (d / "upload" / "tls").mkdir(parents=True)
    (d / "scratch").mkdir()
    for p in (d, d / "upload", d / "upload" / "tls", d / "scratch"):
        os.chmod(p, 0o755)
    (d / "state.db").write_bytes(b"")
    (d / "upload" / "tls" / "tls.key").write_text("k")
    (d / "upload" / "tls" / "tls.crt").write_text("c")
    for p in (d / "state.db", d / "upload" / "tls" / "tls.key", d / "upload" / "tls" / "tls.crt"):
        os.chmod(p, 0o644)
    with caplog.at_level("WARNING", logger="cdi.datadir"):
        changed = secure(str(d))
    assert changed == [
        f"{d} from 0755 to 0700",
        f"{d}/scratch from 0755 to 0700",
        f"{d}/upload from 0755 to 0700",
        f"{d}/upload/tls from 0755 to 0700",
        f"{d}/state.db from 0644 to 0600",
        f"{d}/upload/tls/tls.key from 0644 to 0600",
    ]
    assert mode(d / "upload" / "tls" / "tls.crt") == 0o644  # a certificate is public
    assert caplog.text.count("tightened the permissions of") == 6
    assert secure(str(d)) == []


@root_only
def test_parts_owned_by_another_user_are_refused(tmp_path):
    d = tmp_path / "cdi"
    d.mkdir(mode=0o700)
    (d / "upload").mkdir()
    (d / "upload" / "proxy.json").write_text("{}")
    os.chown(d / "upload" / "proxy.json", NOBODY, NOBODY)
    with pytest.raises(UnsafeDataDir) as e:
        secure(str(d))
    assert f"{d}/upload/proxy.json in the data dir belongs to" in str(e.value)
    assert e.value.reason == "UnsafeDataDir"
    os.unlink(d / "upload" / "proxy.json")
    target = tmp_path / "victim"
    target.write_text("not cdi's")
    os.chmod(target, 0o640)
    os.symlink(target, d / "state.db")
    os.lchown(d / "state.db", NOBODY, NOBODY)
    with pytest.raises(UnsafeDataDir, match=r"state\.db in the data dir belongs to"):
        secure(str(d))
    assert mode(target) == 0o640  # the link was not followed to chmod its target


def test_a_root_owned_directory_others_may_write_to_is_refused_for_a_user(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs a root-owned directory")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    monkeypatch.setattr(datadir.os, "geteuid", lambda: 1000)  # a user running cdi on /tmp
    with pytest.raises(UnsafeDataDir, match="other users may write to it"):
        secure(str(shared))
    os.chmod(shared, 0o755)  # root's and closed: used as it is, nothing to tighten
    assert secure(str(shared)) == []
    assert mode(shared) == 0o755
