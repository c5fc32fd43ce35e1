"""The blank source (``spec.source.blank``) on a directory and on a loop device."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.api.contract import BLOCK, ImportSettings, Progress, Reason, WorkerResult
from cdi.common.units import MiB
from importers import main as worker

pytestmark = pytest.mark.timeout(60)


def run_worker(tmp_path: Path, settings: ImportSettings) -> tuple[int, WorkerResult]:
    log = tmp_path / "termination-log"
    code = worker.main({**settings.to_env(), "CDI_TERMINATION_LOG": str(log)})
    return code, WorkerResult.from_json(log.read_text())


@pytest.mark.parametrize("prealloc", [False, True])
def test_blank_filesystem(tmp_path: Path, prealloc: bool) -> None:
    data = tmp_path / "vol"
    data.mkdir()
    settings = ImportSettings(
        source="blank", image_size=106 * MiB, data_dir=str(data), preallocation=prealloc,
        progress_file=str(tmp_path / "progress.json"),
    )  # fmt: skip
    code, result = run_worker(tmp_path, settings)
    assert code == 0, result
    assert result.reason == Reason.IMPORT_COMPLETE
    st = os.stat(data / "disk.img")
    assert st.st_size == 100 * MiB == result.usable_size  # 106 MiB / 1.06
    assert result.preallocation_applied is prealloc
    if prealloc:
        assert st.st_blocks * 512 >= 100 * MiB
    else:
        assert st.st_blocks == 0
    assert not (data / "disk.img.part").exists()
    progress = Progress.read(str(tmp_path / "progress.json"))
    assert progress is not None and progress.bytes_done == progress.bytes_total


def test_blank_missing_volume_dir(tmp_path: Path) -> None:
    settings = ImportSettings(source="blank", image_size=10 * MiB, data_dir=str(tmp_path / "nope"))
    code, result = run_worker(tmp_path, settings)
    assert code == 2 and result.reason == Reason.CONFIG_ERROR


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup")
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.write(os.urandom(MiB) * 8)  # 8 MiB of garbage the blank must clear
    proc = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        yield dev, backing
    finally:
        subprocess.run(["losetup", "-d", dev], timeout=30, check=False)


@pytest.mark.root
@pytest.mark.parametrize("prealloc", [False, True])
def test_blank_block(tmp_path: Path, loop_device: tuple[str, Path], prealloc: bool) -> None:
    dev, backing = loop_device
    settings = ImportSettings(source="blank", volume_mode=BLOCK, block_device=dev, preallocation=prealloc)
    code, result = run_worker(tmp_path, settings)
    assert code == 0, result
    assert result.usable_size == 8 * MiB
    with open(dev, "rb") as f:
        assert f.read() == bytes(8 * MiB)
    if not prealloc:
        assert os.stat(backing).st_blocks == 0  # discarded, not written
