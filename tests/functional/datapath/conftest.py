"""Fixtures of the data path tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def vol(tmp_path: Path) -> Path:
    """An empty Filesystem volume directory."""
    v = tmp_path / "vol"
    v.mkdir()
    return v
