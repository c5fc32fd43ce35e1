"""Fixtures: a real controller daemon on a temporary data dir (see tests/peers/cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cdi.controller import daemon
from tests.peers.cluster import Cluster, MiB, http_dv, make_cluster

__all__ = ["MiB", "http_dv"]


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    c = make_cluster(str(tmp_path / "cdi"))
    try:
        yield c
        c.delete_all()
    finally:
        daemon.stop(c.data_dir)
