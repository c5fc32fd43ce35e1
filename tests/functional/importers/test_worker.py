"""End to end: ``python -m importers`` as a subprocess, settings from ``ImportSettings.to_env()``.

Asserts what the controller sees: the termination message, the exit code and the bytes of
``disk.img``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cdi.api.contract import ImportSettings, Outcome, Progress, Reason, WorkerResult
from cdi.common.units import MiB
from tests.peers.bad_http import BadHTTPServer
from tests.peers.nginx import NginxServer

pytest.importorskip("cdi.datapath.processor", reason="the data path (cdi.datapath.processor) has not landed")

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

CAPACITY = 17 * MiB  # usable 16 MiB with the default 6 % overhead
USABLE = 16 * MiB
ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Run:
    code: int
    result: WorkerResult
    stderr: str
    disk: Path


def make_settings(tmp_path: Path, url: str, **kw: object) -> ImportSettings:
    data = tmp_path / "vol"
    data.mkdir(exist_ok=True)
    base = ImportSettings(
        source="http", endpoint=url, image_size=CAPACITY, data_dir=str(data),
        termination_log=str(tmp_path / "termination-log"), progress_file=str(tmp_path / "progress.json"),
        idle_timeout=10.0,
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def worker_env(settings: ImportSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMPORTER_", "CDI_"))}
    env.update(settings.to_env())
    return env


def run_worker(settings: ImportSettings, timeout: float = 90) -> Run:
    proc = subprocess.run([sys.executable, "-m", "importers"], env=worker_env(settings), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    result = WorkerResult.from_json(Path(settings.termination_log).read_text())
    assert proc.returncode == result.exit_code, proc.stderr
    return Run(proc.returncode, result, proc.stderr, Path(settings.target_path))


def sha256_padded(data: bytes, size: int) -> str:
    h = hashlib.sha256(data)
    h.update(bytes(size - len(data)))
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def raw_image(tmp_images: Path, served_path: Callable[[Path], str]) -> tuple[str, bytes]:
    """5 MiB raw with a 2 MiB hole in the middle; (URL path, bytes)."""
    data = os.urandom(2 * MiB) + bytes(2 * MiB) + os.urandom(MiB)
    path = tmp_images / "disk.raw"
    path.write_bytes(data)
    return served_path(path), data


@pytest.fixture(params=["qcow2", "vmdk"])
def container_image(
    request: pytest.FixtureRequest,
    tmp_images: Path,
    served_path: Callable[[Path], str],
    raw_image: tuple[str, bytes],
) -> tuple[str, bytes, str]:
    """(URL path, raw bytes, expected data path): qcow2 is decoded as it streams, vmdk goes through nbdkit."""
    fmt = request.param
    raw = tmp_images / "disk.raw"
    out = tmp_images / f"disk.{fmt}"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(out)], check=True, timeout=60)
    return served_path(out), raw_image[1], "qcow2-stream" if fmt == "qcow2" else "nbdkit"


def test_raw_over_http(tmp_path: Path, nginx: NginxServer, raw_image: tuple[str, bytes]) -> None:
    rel, data = raw_image
    run = run_worker(make_settings(tmp_path, f"{nginx.http_url}/{rel}"))
    assert run.code == 0, run.stderr
    assert run.result.reason == Reason.IMPORT_COMPLETE
    assert run.disk.stat().st_size == USABLE
    assert sha256_file(run.disk) == sha256_padded(data, USABLE)
    assert Progress.read(str(tmp_path / "progress.json")) is not None


@pytest.mark.parametrize("mode", ["auth", "ca", "insecure", "redirect"])
def test_containers_over_https(
    tmp_path: Path, nginx: NginxServer, container_image: tuple[str, bytes, str], mode: str
) -> None:
    rel, data, path = container_image
    kw: dict[str, object] = {"cert_dir": nginx.cert_dir}
    url = f"{nginx.https_url}/{rel}"
    if mode == "auth":
        url = f"{nginx.auth_url}/{rel}"
        kw.update(access_key_id=nginx.user, secret_key=nginx.password)
    elif mode == "insecure":
        kw = {"insecure_tls": True}
    elif mode == "redirect":
        url = f"{nginx.https_url}/redirect/auth/{rel}"
        kw.update(access_key_id=nginx.user, secret_key=nginx.password)
    run = run_worker(make_settings(tmp_path, url, **kw))
    assert run.code == 0, run.stderr
    assert sha256_file(run.disk) == sha256_padded(data, USABLE)
    assert not run.result.scratch_used, run.result
    assert run.result.details["path"] == path
    assert nginx.password not in run.stderr and nginx.password not in run.result.to_json()


def test_resume_after_a_dropped_connection(
    tmp_path: Path, bad_http: BadHTTPServer, raw_image: tuple[str, bytes]
) -> None:
    rel, data = raw_image
    run = run_worker(make_settings(tmp_path, bad_http.url_for(f"drop/1500000/{rel}")))
    assert run.code == 0, run.stderr
    assert run.result.resumes >= 1
    assert sha256_file(run.disk) == sha256_padded(data, USABLE)
    gets = [r for r in bad_http.requests if r.path == f"/drop/1500000/{rel}" and r.method == "GET"]
    assert any(r.range.startswith("bytes=") and r.range != "bytes=0-0" for r in gets)


def test_no_head_no_length(tmp_path: Path, bad_http: BadHTTPServer, raw_image: tuple[str, bytes]) -> None:
    rel, data = raw_image
    run = run_worker(make_settings(tmp_path, bad_http.url_for(f"nolength/{rel}")))
    assert run.code == 0, run.stderr
    assert sha256_file(run.disk) == sha256_padded(data, USABLE)


def test_not_found(tmp_path: Path, nginx: NginxServer) -> None:
    run = run_worker(make_settings(tmp_path, f"{nginx.http_url}/missing.img"))
    assert run.code == 2
    assert (run.result.outcome, run.result.reason) == (Outcome.PERMANENT, Reason.NOT_FOUND)
    assert "spec.source.http.url" in run.result.message
    assert not run.disk.exists()


def test_untrusted_certificate(tmp_path: Path, nginx: NginxServer, raw_image: tuple[str, bytes]) -> None:
    rel, _ = raw_image
    run = run_worker(make_settings(tmp_path, f"{nginx.https_url}/{rel}"))
    assert run.code == 2 and run.result.reason == Reason.TLS_ERROR
    assert "certConfigMap" in run.result.message


def test_wrong_password_is_never_printed(
    tmp_path: Path, nginx: NginxServer, raw_image: tuple[str, bytes]
) -> None:
    rel, _ = raw_image
    secret = "Wr0ng-Secret-Value"
    settings = make_settings(tmp_path, f"{nginx.auth_url}/{rel}", cert_dir=nginx.cert_dir,
                             access_key_id=nginx.user, secret_key=secret,
                             extra_headers=("X-Api-Key: Plain-Header-Secret",))  # fmt: skip
    run = run_worker(settings)
    assert run.code == 2 and run.result.reason == Reason.UNAUTHORIZED
    for text in (run.stderr, run.result.to_json()):
        assert secret not in text and "Plain-Header-Secret" not in text


def test_server_errors_are_temporary(
    tmp_path: Path, bad_http: BadHTTPServer, raw_image: tuple[str, bytes]
) -> None:
    rel, _ = raw_image
    run = run_worker(make_settings(tmp_path, bad_http.url_for(f"flaky500/1000/{rel}")))
    assert run.code == 1
    assert (run.result.outcome, run.result.reason) == (Outcome.TEMPORARY, Reason.TRANSIENT)
    assert "500" in run.result.message


def test_html_page_is_not_an_image(tmp_path: Path, bad_http: BadHTTPServer) -> None:
    run = run_worker(make_settings(tmp_path, bad_http.url_for("html/login")))
    assert run.code == 2 and run.result.reason == Reason.NOT_AN_IMAGE


def test_blank(tmp_path: Path) -> None:
    settings = replace(make_settings(tmp_path, ""), source="blank")
    run = run_worker(settings)
    assert run.code == 0, run.stderr
    assert run.disk.stat().st_size == USABLE and run.disk.stat().st_blocks == 0
    assert sha256_file(run.disk) == sha256_padded(b"", USABLE)


def test_sigterm_writes_a_temporary_result(
    tmp_path: Path, bad_http: BadHTTPServer, raw_image: tuple[str, bytes]
) -> None:
    rel, _ = raw_image
    settings = make_settings(tmp_path, bad_http.url_for(f"stall/100000/{rel}"), idle_timeout=60.0)
    proc = subprocess.Popen([sys.executable, "-m", "importers"], env=worker_env(settings), cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while bad_http.count(f"/stall/100000/{rel}", "GET") < 1 or time.monotonic() < deadline - 29:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = WorkerResult.from_json(Path(settings.termination_log).read_text())
    assert proc.returncode == 1, stderr
    assert (result.outcome, result.reason) == (Outcome.TEMPORARY, Reason.KILLED)
    assert not Path(settings.target_path).exists()
