"""Fixes from the docs review of uploads: the CLI judges only its own upload, config and TLS
errors are clear and immediate, archive volumes, Pending volumes, stopping the proxy, 404s."""

from __future__ import annotations

import time

import pytest

from tests.functional.upload.conftest import Env, MiB, make_raw

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]


def test_cli_retry_after_a_failed_upload_succeeds(env: Env, tmp_path):
    """A failed upload's error is history: the retry reports its own outcome (exit 0)."""
    raw = tmp_path / "d.raw"
    make_raw(raw, 4 * MiB)
    code, out, err = env.cli("dv", "again", "--image-path", str(raw), "--size", "32Mi",
                             "--checksum", "sha256:" + "0" * 64)
    assert code == 1 and "ChecksumError" in err, out + err
    code, out, err = env.cli("dv", "again", "--no-create", "--image-path", str(raw))
    assert code == 0, out + err
    assert "failed" not in err and "Processing completed successfully" in out
    assert env.dv("again")["status"]["phase"] == "Succeeded"


def test_untrusted_proxy_certificate_fails_at_once(env: Env, tmp_path, monkeypatch):
    raw = tmp_path / "d.raw"
    make_raw(raw, 1 * MiB)
    start = time.monotonic()
    # --uploadproxy-url: checked against the system's CAs, which do not know the generated CA
    code, out, err = env.cli("dv", "tls", "--image-path", str(raw), "--size", "16Mi", "--uploadproxy-url", env.url)
    took = time.monotonic() - start
    assert code == 1, out + err
    assert "certificate" in err and "--insecure" in err and env.ca in err, err
    assert "retrying" not in err and took < 5, (took, err)
    # the fixes it names work
    monkeypatch.setenv("SSL_CERT_FILE", env.ca)
    code, out, err = env.cli("dv", "tls", "--no-create", "--image-path", str(raw), "--uploadproxy-url", env.url)
    assert code == 0, out + err
    assert env.dv("tls")["status"]["phase"] == "Succeeded"


def test_insecure_skips_the_certificate_check(env: Env, tmp_path):
    raw = tmp_path / "d.raw"
    make_raw(raw, 1 * MiB)
    code, out, err = env.cli("dv", "tls2", "--image-path", str(raw), "--size", "16Mi", "--uploadproxy-url", env.url,
                             "--insecure")
    assert code == 0, out + err


def test_pending_volume_says_why_and_a_permanent_problem_fails_early(env: Env, tmp_path):
    raw = tmp_path / "d.raw"
    make_raw(raw, 1 * MiB)
    start = time.monotonic()
    code, out, err = env.cli("dv", "nosc", "--image-path", str(raw), "--size", "16Mi", "--storage-class", "nope",
                             "--wait-secs", "60")
    took = time.monotonic() - start
    assert code == 1, out + err
    assert 'storage class "nope" does not exist' in out  # shown while waiting
    assert 'storage class "nope" does not exist' in err and "--no-create" in err, err
    assert took < 20, took  # not the 60 s of --wait-secs
    assert env.dv("nosc")["status"]["phase"] == "Pending"


def _cdi(env: Env, *argv: str) -> tuple[int, str]:
    import contextlib
    import io

    from cdi.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--data-dir", env.data_dir, *argv])
    return code, out.getvalue()


def test_controller_stop_stops_the_upload_proxy(env: Env):
    from cdi.controller import upload as upload_ctl

    assert upload_ctl.proxy_running(env.data_dir)
    code, out = _cdi(env, "controller", "stop")
    assert code == 0 and "controller stopped" in out and "upload proxy stopped" in out, out
    assert not upload_ctl.proxy_running(env.data_dir)
    code, out = _cdi(env, "controller", "stop")
    assert code == 0 and "upload proxy" not in out  # nothing left to stop


def test_proxy_stops_quickly_and_cleanly_mid_upload(env: Env, tmp_path):
    from pathlib import Path

    from cdi.controller import upload as upload_ctl

    raw = tmp_path / "d.raw"
    make_raw(raw, 8 * MiB)
    size = raw.stat().st_size
    env.create_dv("sigterm")
    env.wait_ready("sigterm")
    idle = env.tls_socket()  # a keep-alive connection between requests
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(100).startswith(b"HTTP/1.1 200")
    busy = env.tls_socket()  # an upload half sent
    busy.sendall((f"POST /v1beta1/upload-async HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {env.token('sigterm')}"
                  f"\r\nContent-Length: {size}\r\n\r\n").encode() + raw.read_bytes()[: size // 2])
    time.sleep(0.5)
    start = time.monotonic()
    assert upload_ctl.stop_proxy(env.data_dir)
    took = time.monotonic() - start
    log = Path(env.data_dir, "upload", "proxy.log").read_text()
    assert took < 1.0, took
    for noise in ("Traceback", "CancelledError", "Task was destroyed", "ERROR"):
        assert noise not in log, log[-3000:]
    assert "upload proxy stopped" in log
    idle.close()
    busy.close()
    # the cut-off upload is suspended, not failed: a restarted proxy lets the client finish it
    env.start_proxy()
    with open(raw, "rb") as f:
        resp = env.uploader("sigterm").upload(f, size, None, 3, None)
    assert resp.status == 200, resp
    env.wait_phase("sigterm", ("Succeeded",))


def test_token_for_a_volume_that_does_not_exist_gets_404_at_once(env: Env):
    from cdi.cli.image_upload import _read_response

    s = env.tls_socket()
    start = time.monotonic()
    try:
        s.sendall((f"POST /v1beta1/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {env.token('ghost')}\r\n"
                   "Content-Length: 10\r\n\r\n0123456789").encode())
        r = _read_response(s, b"")
    finally:
        s.close()
    took = time.monotonic() - start
    assert (r.status, r.reason) == (404, "NotFound") and "ghost" in r.text and "create" in r.text, r
    assert took < 1.0, took  # not readyWaitSeconds
