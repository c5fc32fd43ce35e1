"""A real controller daemon and upload proxy (TLS on 127.0.0.1) on a temporary data dir."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdi.api import upload as upload_api
from cdi.api.validation import admit
from cdi.cli import image_upload
from cdi.cli.context import Context
from cdi.controller import daemon
from cdi.controller import upload as upload_ctl
from tests.peers.cluster import Cluster

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Env(Cluster):
    def __init__(self, data_dir: str, port: int) -> None:
        super().__init__(data_dir)
        self.port = port
        self.url = f"https://127.0.0.1:{port}"
        self.ca = os.path.join(data_dir, "upload", "tls", "ca.pem")

    # -- processes -------------------------------------------------------------------------

    def start_proxy(self) -> None:
        st = upload_ctl.ensure_proxy(self.data_dir, wait=20)
        assert st is not None, Path(self.data_dir, "upload", "proxy.log").read_text()[-2000:]
        assert st["url"] == self.url

    def stop_proxy(self) -> None:
        upload_ctl.stop_proxy(self.data_dir)

    # -- objects ---------------------------------------------------------------------------

    def create_dv(self, name: str, size: str = "64Mi", content_type: str | None = None, **source: Any) -> None:
        dv: dict[str, Any] = {
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"source": {"upload": dict(source)}, "storage": {"resources": {"requests": {"storage": size}}}},
        }
        if content_type:
            dv["spec"]["contentType"] = content_type
        self.store.create(admit(dv))
        daemon.ensure_running(self.data_dir)

    def wait_ready(self, name: str) -> dict[str, Any]:
        dv = self.wait_phase(name, ("UploadReady", "Failed", "Succeeded"))
        assert dv["status"]["phase"] == "UploadReady", dv["status"]
        # the proxy reads the PVC annotations: wait until the server's address is there
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            a = self.pvc(name)["metadata"].get("annotations") or {}
            if a.get("cdi.kubevirt.io/storage.pod.ready") == "true":
                return dv
            time.sleep(0.05)
        raise AssertionError("upload server never became ready")

    def disk_path(self, name: str) -> str:
        return str(self.pvc(name)["metadata"]["annotations"]["embedded.cdi.kubevirt.io/disk-path"])

    def volume_path(self, name: str) -> str:
        return str(self.pvc(name)["metadata"]["annotations"]["embedded.cdi.kubevirt.io/volume-path"])

    def upload_state(self, name: str) -> dict[str, Any]:
        import json

        p = os.path.join(self.data_dir, "workers", upload_api.worker_name("default", name), "run", "upload-state.json")
        with open(p) as f:
            return dict(json.load(f))

    def token(self, name: str, ttl: float | None = None) -> str:
        return image_upload.issue_token(self.data_dir, "default", name, ttl)

    def uploader(self, name: str) -> image_upload.Uploader:
        return image_upload.Uploader(self.url, lambda: self.token(name), cafile=self.ca)

    def tls_socket(self) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=self.ca)
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1")

    # -- the CLI ---------------------------------------------------------------------------

    def cli(self, *argv: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="cdi")
        sub = parser.add_subparsers(dest="command")
        image_upload.add_parser(sub)
        args = parser.parse_args(["image-upload", *argv])
        out, err = io.StringIO(), io.StringIO()
        ctx = Context(data_dir_arg=self.data_dir, out=out, err=err)
        code = image_upload.run(args, ctx)
        return code, out.getvalue(), err.getvalue()

    # -- teardown --------------------------------------------------------------------------

    def kill_workers(self) -> None:
        root = Path(self.data_dir, "workers")
        for pidfile in root.glob("*/pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().split()[0])
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    # a short path: the upload server's unix socket lives under it
    data_dir = str(tmp_path_factory.mktemp("up", numbered=True) / "d")
    os.makedirs(data_dir)
    port = free_port()
    with open(os.path.join(data_dir, "config.yaml"), "w") as f:
        f.write(
            f"storageClasses:\n  local: {{path: {data_dir}/pools/local, default: true}}\n"
            "retryLimit: 3\nretryBackoffSeconds: 0.2\nretryBackoffMaxSeconds: 1\n"
            f"upload:\n  proxyPort: {port}\n  readyWaitSeconds: 3\n  resumeTimeoutSeconds: 60\n"
        )
    e = Env(data_dir, port)
    daemon.ensure_running(data_dir)
    try:
        e.start_proxy()
        yield e
    finally:
        daemon.stop(data_dir)
        e.stop_proxy()
        e.kill_workers()
        e.store.close()


def sha256_file(path: str, length: int | None = None) -> str:
    h = hashlib.sha256()
    left = length if length is not None else 1 << 62
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(4 * MiB, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def make_raw(path: Path, size: int = 8 * MiB) -> str:
    """Random data with a hole in the middle; returns its sha256."""
    with open(path, "wb") as f:
        f.write(os.urandom(size // 4))
        f.write(b"\0" * (size // 2))
        f.write(os.urandom(size - size // 4 - size // 2))
    return sha256_file(str(path))
