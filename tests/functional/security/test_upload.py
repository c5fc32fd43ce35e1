"""Attacks on the upload path through the real upload proxy over TLS (issue 9, hole 7): request
framing that a proxy and a server could read differently, uploads with no image bytes in them,
and heads over the header limits. Each is refused before an upload run starts; the DataVolume
stays UploadReady (never Succeeded with a blank disk) and takes a real upload afterwards."""

from __future__ import annotations

import contextlib
import os
import ssl
import time
from pathlib import Path

import pytest

from cdi.api import upload as api
from cdi.cli.image_upload import Response, _read_response
from tests.functional.upload.conftest import Env, MiB, make_raw, sha256_file

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

UPLOAD = "/v1beta1/upload"
FORM = "/v1beta1/upload-form"


def _head(env: Env, name: str, *lines: str, path: str = UPLOAD) -> bytes:
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: x", f"Authorization: Bearer {env.token(name)}", *lines,
                        "", ""]).encode()


def _send(env: Env, data: bytes) -> tuple[Response, ssl.SSLSocket]:
    """Send ``data`` on a fresh TLS connection; the answer and the (still open) socket."""
    s = env.tls_socket()
    with contextlib.suppress(OSError):  # the proxy may answer and close while a long head goes out
        s.sendall(data)
    return _read_response(s, b""), s


def _closed(s: ssl.SSLSocket) -> bool:
    """The proxy closed the connection after its answer (within its 3 s linger)."""
    s.settimeout(10)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    finally:
        s.close()


def _stays_ready(env: Env, name: str, attempts: int = 0) -> None:
    """The DataVolume never reaches Succeeded: it stays UploadReady while the controller keeps
    reconciling; the upload server is ready for another upload with ``attempts`` runs behind
    it (0: the refused request never started one) and nothing was written to the volume."""
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        phase = env.dv(name)["status"]["phase"]
        assert phase == "UploadReady", env.dv(name)["status"]
        time.sleep(0.1)
    st = env.upload_state(name)
    assert st["state"] == api.ST_READY and st["attempts"] == attempts, st
    assert not os.path.exists(env.disk_path(name))
    assert env.pvc(name)["metadata"]["annotations"].get("cdi.kubevirt.io/storage.pod.phase") != "Succeeded"


def _real_upload(env: Env, name: str, tmp_path: Path) -> None:
    raw = tmp_path / f"{name}.raw"
    want = make_raw(raw, 2 * MiB)
    with open(raw, "rb") as f:
        resp = env.uploader(name).send(UPLOAD, f, 0, raw.stat().st_size, f"sha256:{want}", None)
    assert resp.status == 200, resp
    env.wait_phase(name, ("Succeeded",))
    assert sha256_file(env.disk_path(name), raw.stat().st_size) == want


def test_chunked_ending_at_once_with_a_content_length_is_refused(env: Env, tmp_path):
    """The reported attack: on main it answered 200 and left a Succeeded DataVolume with a blank disk."""
    env.create_dv("smuggle")
    env.wait_ready("smuggle")
    resp, s = _send(env, _head(env, "smuggle", "Transfer-Encoding: chunked", "Content-Length: 4") + b"0\r\n\r\n")
    assert (resp.status, resp.reason) == (400, "BadRequest"), resp
    assert "both Transfer-Encoding and Content-Length" in resp.text and "smuggles requests" in resp.text
    assert _closed(s)
    # the same with a chunked body that does hold an image: still refused, framing is ambiguous
    data = os.urandom(64 << 10)
    body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"
    resp, s = _send(env, _head(env, "smuggle", "Content-Length: 4", "Transfer-Encoding: chunked") + body)
    assert (resp.status, resp.reason) == (400, "BadRequest"), resp
    s.close()
    _stays_ready(env, "smuggle")
    _real_upload(env, "smuggle", tmp_path)


def test_uploads_without_image_bytes_are_refused(env: Env, tmp_path):
    env.create_dv("empty")
    env.wait_ready("empty")
    form = "Content-Type: multipart/form-data; boundary=XX"
    empty_part = (b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.raw\"\r\n"
                  b"Content-Type: application/octet-stream\r\n\r\n\r\n--XX--\r\n")
    attacks = [
        ("Content-Length: 0", _head(env, "empty", "Content-Length: 0"), "send the image file"),
        ("chunked ending at once", _head(env, "empty", "Transfer-Encoding: chunked") + b"0\r\n\r\n",
         "send the image file"),
        ("chunked ending at once, with a trailer",
         _head(env, "empty", "Transfer-Encoding: chunked") + b"0\r\nX-T: 1\r\n\r\n", "send the image file"),
        ("form with no body", _head(env, "empty", form, "Content-Length: 0", path=FORM), "'file' part has no content"),
        ("form with an empty file part",
         _head(env, "empty", form, f"Content-Length: {len(empty_part)}", path=FORM) + empty_part,
         "'file' part has no content"),
        ("chunked form with an empty file part",
         _head(env, "empty", form, "Transfer-Encoding: chunked", path=FORM)
         + f"{len(empty_part):x}\r\n".encode() + empty_part + b"\r\n0\r\n\r\n", "'file' part has no content"),
    ]
    for what, request, words in attacks:
        resp, s = _send(env, request)
        s.close()
        assert (resp.status, resp.reason) == (400, "EmptyUpload"), (what, resp)
        assert "the upload body is empty" in resp.text and words in resp.text, (what, resp)
        _stays_ready(env, "empty")
    _real_upload(env, "empty", tmp_path)


def test_heads_over_the_limits_get_431_and_the_connection_closes(env: Env, tmp_path):
    env.create_dv("heads")
    env.wait_ready("heads")
    resp, s = _send(env, _head(env, "heads", "X-Long: " + "a" * 100_000, "Content-Length: 3") + b"abc")
    assert (resp.status, resp.reason) == (431, "HeaderTooLarge"), resp
    assert "longer than 8192 bytes" in resp.text and resp.headers.get("connection") == "close"
    assert _closed(s)
    many = [f"X-H{i}: {i}" for i in range(5000)]
    resp, s = _send(env, _head(env, "heads", *many, "Content-Length: 3") + b"abc")
    assert (resp.status, resp.reason) == (431, "HeaderTooLarge"), resp
    assert "more than 100 header fields" in resp.text
    assert _closed(s)
    resp, s = _send(env, f"POST {UPLOAD}?{'a' * 20_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert resp.status == 414 and "request line is longer" in resp.text, resp
    assert _closed(s)
    # a chunked trailer over the limits: the body is refused and its run never completes
    data = os.urandom(4096)
    body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n" + b"X-T: 1\r\n" * 200 + b"\r\n"
    resp, s = _send(env, _head(env, "heads", "Transfer-Encoding: chunked") + body)
    s.close()
    assert resp.status == 431 and "more than 100 trailer fields" in resp.text, resp
    _stays_ready(env, "heads", attempts=1)  # the bytes before the trailer started a run; it failed
    assert env.upload_state("heads")["lastError"]["reason"] == "UploadInterrupted"
    _real_upload(env, "heads", tmp_path)


def test_malformed_framing_is_refused(env: Env, tmp_path):
    env.create_dv("framing")
    env.wait_ready("framing")
    cases = [
        (("Transfer-Encoding: gzip, chunked",), b"", 501, "not supported"),
        (("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), b"", 400, "exactly"),
        (("Content-Length: 4", "Content-Length: 4"), b"abcd", 400, "more than one Content-Length"),
        (("Content-Length: 4, 5",), b"abcd", 400, "more than one Content-Length"),
        (("Content-Length: -4",), b"", 400, "invalid Content-Length"),
        (("X-Checksum: a\nContent-Length: 0", "Content-Length: 4"), b"abcd", 400, "end every line with CRLF"),
        (("Transfer-Encoding: chunked",), b"zz\r\nabcd\r\n0\r\n\r\n", 400, "malformed chunk-size"),
        (("Transfer-Encoding: chunked",), b"4;" + b"e" * 4000 + b"\r\nabcd\r\n0\r\n\r\n", 400,
         "extensions are limited"),
    ]
    for lines, body, status, words in cases:
        resp, s = _send(env, _head(env, "framing", *lines) + body)
        s.close()
        assert resp.status == status and words in resp.text, (lines, resp)
    _stays_ready(env, "framing")
    # a chunk whose size does not match its data, after the upload started: its run fails
    data = os.urandom(4096)
    body = f"{len(data):x}\r\n".encode() + data + b"\r\n4\r\nabcdXX0\r\n\r\n"
    resp, s = _send(env, _head(env, "framing", "Transfer-Encoding: chunked") + body)
    s.close()
    assert (resp.status, resp.reason) == (400, "BadRequest") and "not followed by CRLF" in resp.text, resp
    end = time.monotonic() + 10
    while env.upload_state("framing")["state"] != api.ST_READY and time.monotonic() < end:
        time.sleep(0.05)
    _stays_ready(env, "framing", attempts=1)
    assert env.upload_state("framing")["lastError"]["reason"] == "UploadInterrupted"
    _real_upload(env, "framing", tmp_path)
