from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from vm_runtime.cloudinit import build_nocloud_iso, meta_data

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not (shutil.which("xorriso") or shutil.which("genisoimage")), reason="no ISO tool"),
]


def test_seed_iso_has_cidata_label_and_files(tmp_path: Path) -> None:
    out = build_nocloud_iso(
        tmp_path / "seed.iso",
        user_data="#cloud-config\npycdi-marker: abc\n",
        meta_data_text=meta_data("uid-1", "vm1"),
        network_data="version: 2\n",
    )
    data = out.read_bytes()
    assert data[32769:32774] == b"CD001"
    assert data[32808:32814] == b"cidata"
    assert b"pycdi-marker: abc" in data and b"local-hostname: vm1" in data and b"version: 2" in data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]  # staging removed
