"""Shared fixtures: certificates, nginx and the misbehaving HTTP server (session-wide).

Both servers serve the same directory, ``www_dir``. A test writes its files into
``tmp_images`` (a fresh subdirectory of ``www_dir``) and builds URLs with
``served_path(tmp_images / "disk.img")``, e.g. ``f"{nginx.http_url}/{rel}"``,
``f"{nginx.auth_url}/{rel}"`` (basic auth: ``nginx.user``/``nginx.password``) or
``bad_http.url_for(f"drop/1000/{rel}")``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.bad_http import BadHTTPServer
from tests.peers.certs import Certs, make_ca_and_cert
from tests.peers.nginx import NginxServer


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """CA + server certificate for localhost/127.0.0.1; ``certs.cert_dir`` holds only ca.pem."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_ca_and_cert(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def www_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory nginx and bad_http serve."""
    return tmp_path_factory.mktemp("www")


@pytest.fixture(scope="session")
def nginx(www_dir: Path, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not installed")
    if shutil.which("htpasswd") is None:
        pytest.skip("htpasswd (apache2-utils) is not installed")
    with NginxServer(www_dir, tmp_path_factory.mktemp("nginx"), certs) as server:
        yield server


@pytest.fixture(scope="session")
def bad_http(www_dir: Path) -> Iterator[BadHTTPServer]:
    with BadHTTPServer(www_dir) as server:
        yield server


@pytest.fixture
def tmp_images(www_dir: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory inside ``www_dir`` for this test's files (removed afterwards)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
    path = www_dir / name
    i = 0
    while path.exists():
        i += 1
        path = www_dir / f"{name}-{i}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def served_path(www_dir: Path):  # type: ignore[no-untyped-def]
    """``served_path(p)``: the URL path (no leading slash) of a file under ``www_dir``."""

    def rel(p: os.PathLike[str] | str) -> str:
        return Path(p).resolve().relative_to(www_dir.resolve()).as_posix()

    return rel
