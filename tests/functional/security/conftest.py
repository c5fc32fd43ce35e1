"""Attacks through the real paths: a controller daemon on a temporary data dir (``cluster``),
nginx serving crafted files (``nginx``, ``tmp_images``, ``served_path``), and the upload proxy
(``env``). Each test plays someone who may create a DataVolume or upload an image and asserts
that the attack ends Failed (or refused) with a reason a user can act on, and that nothing
outside the volume was read or written.
"""

from __future__ import annotations

from tests.functional.controller.conftest import cluster
from tests.functional.upload.conftest import env
from tests.peers.cluster import MiB, http_dv

__all__ = ["MiB", "cluster", "env", "http_dv"]
