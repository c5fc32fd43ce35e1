"""The upload server's request handling and resume, with a stand-in data path that copies the
stream into a file (the real data path is exercised in tests/functional/upload)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import pytest

from cdi.api import upload as api
from cdi.api.contract import ImportSettings, Outcome, Reason, WorkerResult
from uploadproxy.server import UploadServer

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cret"


def fake_run(source, settings, reporter):
    """Copy the stream to data_dir/disk.img; a body starting with TOOBIG fails at once."""
    info = source.info()
    st = source.open(0)
    buf = bytearray(65536)
    out = os.path.join(settings.data_dir, "disk.img")
    n = st.readinto(memoryview(buf))
    if bytes(buf[:6]) == b"TOOBIG":
        return WorkerResult(Outcome.PERMANENT, str(Reason.TOO_SMALL), "DataVolume too small: image virtual size 1 GiB")
    try:
        with open(out + ".part", "wb") as f:
            while n:
                f.write(buf[:n])
                n = st.readinto(memoryview(buf))
    except Exception as e:
        os.unlink(out + ".part")
        return WorkerResult(Outcome.TEMPORARY, getattr(e, "reason", "Error"), str(e))
    os.replace(out + ".part", out)
    return WorkerResult(Outcome.SUCCEEDED, "Completed", f"Import complete (raw) size={info.size}",
                        details={"checksum": settings.checksum})


@pytest.fixture
def server(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (tmp_path / "auth").write_text(SECRET)
    settings = ImportSettings(source="upload", image_size=1 << 30, data_dir=str(vol),
                              progress_file=str(tmp_path / "progress.json"), idle_timeout=5)
    env = {api.ENV_LISTEN: f"unix:{tmp_path}/s.sock", api.ENV_STATE_FILE: str(tmp_path / "state.json"),
           api.ENV_AUTH_FILE: str(tmp_path / "auth"), api.ENV_RESUME_TIMEOUT: "3", "UPLOAD_TARGET": "ns/vol"}
    srv = UploadServer(settings, env, run=fake_run)
    srv.serve()
    srv.tmp = tmp_path
    yield srv
    srv.shutdown()


def _connect(srv) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(srv.tmp / "s.sock"))
    return s


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(s: socket.socket) -> tuple[int, dict[str, str], str]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body.decode()


def request(srv, method, path, body=b"", headers=None, auth=True, send=None):
    h = {"Content-Length": str(len(body))} if method in ("POST", "PUT") else {}
    if auth:
        h[api.HDR_PROXY_AUTH] = SECRET
    h.update(headers or {})
    s = _connect(srv)
    try:
        s.sendall(_head(method, path, h))
        s.sendall(body if send is None else body[:send])
        if send is not None:
            return None
        return _read_response(s)
    finally:
        s.close()


def state(srv) -> dict:
    return json.loads((srv.tmp / "state.json").read_text())


def disk(srv) -> bytes:
    return (srv.tmp / "vol" / "disk.img").read_bytes()


def wait_for(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_health_and_sync_upload(server):
    assert request(server, "GET", "/healthz", auth=False)[0] == 200
    data = os.urandom(1_000_000)
    status, _, _ = request(server, "POST", "/v1beta1/upload", data, {api.HDR_CHECKSUM: "sha256:00"})
    assert status == 200
    assert disk(server) == data
    assert server.result is not None and server.result.reason == "UploadCompleted"
    assert server.result.details["checksum"] == "sha256:00"  # the header reaches the data path
    assert state(server)["state"] == api.ST_DONE
    status, _, text = request(server, "POST", "/v1beta1/upload", b"x")
    assert status == 409 and "already finished" in text


def test_requests_not_from_the_proxy_are_refused(server):
    status, headers, _ = request(server, "POST", "/v1beta1/upload", b"abc", auth=False)
    assert status == 401
    status, headers, _ = request(server, "POST", "/v1beta1/upload", b"abc", {"X-Cdi-Target": "ns/other"})
    assert status == 401 and headers[api.HDR_REASON.lower()] == "WrongTarget"


def test_interrupted_upload_resumes_in_the_same_run(server):
    data = os.urandom(3_000_000)
    half = len(data) // 2
    assert request(server, "POST", "/v1beta1/upload-async", data, send=half) is None
    wait_for(lambda: state(server)["state"] == api.ST_SUSPENDED)
    status, headers, _ = request(server, "HEAD", "/v1beta1/upload-async")
    assert status == 200
    offset = int(headers["upload-offset"])
    assert 0 < offset <= half and int(headers["upload-length"]) == len(data)
    # a wrong offset is refused with the right one
    status, headers, _ = request(server, "POST", "/v1beta1/upload-async", data[offset + 1:],
                                 {"Content-Range": f"bytes {offset + 1}-{len(data) - 1}/{len(data)}"})
    assert status == 416 and int(headers["upload-offset"]) == offset
    status, _, _ = request(server, "POST", "/v1beta1/upload-async", data[offset:],
                           {"Content-Range": f"bytes {offset}-{len(data) - 1}/{len(data)}"})
    assert status == 200
    wait_for(lambda: server.result is not None)
    assert hashlib.sha256(disk(server)).hexdigest() == hashlib.sha256(data).hexdigest()
    assert server.attempts == 1


def test_not_resumed_in_time_leaves_the_server_ready(server):
    data = os.urandom(500_000)
    request(server, "POST", "/v1beta1/upload", data, send=1000)
    wait_for(lambda: state(server)["lastError"] is not None, timeout=15)
    st = state(server)
    assert st["state"] == api.ST_READY and st["lastError"]["reason"] == "UploadInterrupted"
    assert "not resumed within 3s" in st["lastError"]["message"]
    assert not (server.tmp / "vol" / "disk.img").exists()
    status, _, _ = request(server, "POST", "/v1beta1/upload", data)  # a new upload works
    assert status == 200 and disk(server) == data


def test_new_upload_replaces_a_suspended_one(server):
    first = os.urandom(400_000)
    request(server, "POST", "/v1beta1/upload", first, send=100_000)
    wait_for(lambda: state(server)["state"] == api.ST_SUSPENDED)
    second = os.urandom(300_000)
    status, _, _ = request(server, "POST", "/v1beta1/upload", second)
    assert status == 200 and disk(server) == second


def test_early_error_is_answered_before_the_body_is_sent(server):
    body = b"TOOBIG" + os.urandom(20_000_000)
    s = _connect(server)
    try:
        s.sendall(_head("POST", "/v1beta1/upload", {"Content-Length": str(len(body)),
                                                    api.HDR_PROXY_AUTH: SECRET}))
        s.sendall(body[:1 << 20])
        status, headers, text = _read_response(s)
    finally:
        s.close()
    assert status == 400
    assert headers[api.HDR_REASON.lower()] == "DataVolumeTooSmall"
    assert "too small" in text
    wait_for(lambda: state(server)["state"] == api.ST_READY)


def test_busy_while_another_upload_runs(server):
    data = os.urandom(2_000_000)
    s = _connect(server)
    try:
        s.sendall(_head("POST", "/v1beta1/upload", {"Content-Length": str(len(data)), api.HDR_PROXY_AUTH: SECRET}))
        s.sendall(data[:1000])
        wait_for(lambda: state(server)["state"] == api.ST_RECEIVING)
        status, _, _ = request(server, "POST", "/v1beta1/upload", b"abc")
        assert status == 503
        s.sendall(data[1000:])
        assert _read_response(s)[0] == 200
    finally:
        s.close()


def test_form_upload(server):
    data = os.urandom(200_000)
    body = (b"--BB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n" + data +
            b"\r\n--BB--\r\n")
    status, _, _ = request(server, "POST", "/v1beta1/upload-form", body,
                           {"Content-Type": "multipart/form-data; boundary=BB"})
    assert status == 200 and disk(server) == data


def test_chunked_upload(server):
    data = os.urandom(100_000)
    body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (data[:30_000], data[30_000:])) + b"0\r\n\r\n"
    s = _connect(server)
    try:
        s.sendall(_head("POST", "/v1beta1/upload", {"Transfer-Encoding": "chunked", api.HDR_PROXY_AUTH: SECRET}))
        s.sendall(body)
        assert _read_response(s)[0] == 200
    finally:
        s.close()
    assert disk(server) == data


def test_resume_only_continues_the_same_upload(server):
    data = os.urandom(1_000_000)
    request(server, "POST", "/v1beta1/upload", data, {api.HDR_UPLOAD_ID: "aaa"}, send=400_000)
    wait_for(lambda: state(server)["state"] == api.ST_SUSPENDED)
    status, headers, _ = request(server, "HEAD", "/v1beta1/upload")
    assert headers[api.HDR_UPLOAD_ID.lower()] == "aaa"
    off = int(headers["upload-offset"])
    rng = {"Content-Range": f"bytes {off}-{len(data) - 1}/{len(data)}"}
    status, _, _ = request(server, "POST", "/v1beta1/upload", data[off:], {**rng, api.HDR_UPLOAD_ID: "bbb"})
    assert status == 409
    status, _, _ = request(server, "POST", "/v1beta1/upload", data[off:], {**rng, api.HDR_UPLOAD_ID: "aaa"})
    assert status == 200 and disk(server) == data


@pytest.fixture
def real_server(tmp_path):
    """The upload server with the real data path."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (tmp_path / "auth").write_text(SECRET)
    settings = ImportSettings(source="upload", image_size=16 << 20, data_dir=str(vol),
                              scratch_dir=str(tmp_path / "scratch"), progress_file=str(tmp_path / "progress.json"),
                              termination_log=str(tmp_path / "termination-log"), idle_timeout=5)
    env = {api.ENV_LISTEN: f"unix:{tmp_path}/s.sock", api.ENV_STATE_FILE: str(tmp_path / "state.json"),
           api.ENV_AUTH_FILE: str(tmp_path / "auth"), api.ENV_RESUME_TIMEOUT: "3", "UPLOAD_TARGET": "ns/vol"}
    srv = UploadServer(settings, env)
    srv.serve()
    srv.tmp = tmp_path
    yield srv
    srv.shutdown()


def test_an_uploaded_html_page_is_named_as_such(real_server):
    page = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>\n" * 20
    status, headers, text = request(real_server, "POST", "/v1beta1/upload", page)
    assert status == 400 and headers[api.HDR_REASON.lower()] == "NotAnImage"
    assert "uploaded file is an HTML page" in text and "URL" not in text, text
    assert state(real_server)["lastError"]["message"] == text.removeprefix("Saving stream failed: ").strip()
    assert not (real_server.tmp / "vol" / "disk.img").exists()


def test_answers_name_the_run_that_took_the_bytes(server):
    status, headers, _ = request(server, "POST", "/v1beta1/upload", b"TOOBIG" + b"x" * 100)
    assert status == 400 and headers[api.HDR_ATTEMPT.lower()] == "1"
    assert state(server)["lastError"]["attempt"] == 1
    status, headers, _ = request(server, "POST", "/v1beta1/upload-async", b"y" * 5000)
    assert status == 200 and headers[api.HDR_ATTEMPT.lower()] == "2"
    wait_for(lambda: state(server)["state"] == api.ST_DONE)
    assert state(server)["attempts"] == 2 and state(server)["lastError"]["attempt"] == 1  # history, not this run


def test_head_tells_the_length_once_it_is_known(server):
    status, headers, _ = request(server, "HEAD", "/v1beta1/upload-async")
    assert status == 200 and headers[api.HDR_OFFSET.lower()] == "0"
    assert api.HDR_LENGTH.lower() not in headers  # no upload yet: no length to tell
    request(server, "POST", "/v1beta1/upload", b"z" * 3000)
    status, headers, _ = request(server, "HEAD", "/v1beta1/upload-async")
    assert headers["x-upload-state"] == api.ST_DONE
    assert headers[api.HDR_LENGTH.lower()] == "3000" and headers[api.HDR_OFFSET.lower()] == "3000"


# --- framing, empty bodies and header limits (issue 9): refused before a run starts ------------


def _raw(srv, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], str]:
    s = _connect(srv)
    try:
        s.sendall(head + body)
        return _read_response(s)
    finally:
        s.close()


def _post_head(*lines: str, path: str = "/v1beta1/upload") -> bytes:
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: x", f"{api.HDR_PROXY_AUTH}: {SECRET}", *lines,
                        "", ""]).encode()


def _assert_no_run(srv) -> None:
    st = state(srv)
    assert st["state"] == api.ST_READY and st["attempts"] == 0 and st["lastError"] is None, st
    assert srv.session is None and srv.result is None
    assert not (srv.tmp / "vol" / "disk.img").exists()


@pytest.mark.parametrize("lines, body, status, reason, words", [
    # the attack of issue 9: chunked ending at once, with a conflicting Content-Length
    (("Transfer-Encoding: chunked", "Content-Length: 4"), b"0\r\n\r\n", 400, "BadRequest",
     "both Transfer-Encoding and Content-Length"),
    (("Transfer-Encoding: chunked",), b"0\r\n\r\n", 400, "EmptyUpload", "the upload body is empty"),
    (("Transfer-Encoding: chunked",), b"0\r\nX-T: 1\r\n\r\n", 400, "EmptyUpload", "the upload body is empty"),
    (("Content-Length: 0",), b"", 400, "EmptyUpload", "send the image file"),
    (("Content-Length: 4", "Content-Length: 4"), b"abcd", 400, "BadRequest", "more than one Content-Length"),
    (("Content-Length: 4x",), b"abcd", 400, "BadRequest", "invalid Content-Length"),
    (("Transfer-Encoding: gzip",), b"abcd", 501, "NotImplemented", "not supported"),
    (("Transfer-Encoding: chunked",), b"zz\r\nabcd\r\n0\r\n\r\n", 400, "BadRequest", "malformed chunk-size"),
    (("Transfer-Encoding: chunked",), b"4;" + b"e" * 5000 + b"\r\nabcd\r\n0\r\n\r\n", 400, "BadRequest",
     "extensions are limited"),
    (("Transfer-Encoding: chunked",), b"4\r\nabcdXX0\r\n\r\n", 400, "BadRequest", "not followed by CRLF"),
])
def test_bad_framing_and_empty_bodies_are_refused(server, lines, body, status, reason, words):
    code, headers, text = _raw(server, _post_head(*lines), body)
    assert (code, headers[api.HDR_REASON.lower()]) == (status, reason), text
    assert words in text and headers.get("connection") == "close"
    _assert_no_run(server)
    data = os.urandom(5000)  # the volume takes a real upload afterwards
    assert request(server, "POST", "/v1beta1/upload", data)[0] == 200 and disk(server) == data


def test_empty_form_file_part_is_refused(server):
    body = b"--BB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n\r\n--BB--\r\n"
    status, headers, text = request(server, "POST", "/v1beta1/upload-form", body,
                                    {"Content-Type": "multipart/form-data; boundary=BB"})
    assert status == 400 and headers[api.HDR_REASON.lower()] == "EmptyUpload"
    assert "the form's 'file' part has no content" in text
    _assert_no_run(server)


def test_form_part_headers_over_the_limit_get_431(server):
    body = (b"--BB\r\nContent-Disposition: form-data; name=\"file\"\r\n" + b"X: 1\r\n" * 200 + b"\r\nabc"
            b"\r\n--BB--\r\n")
    status, _, text = request(server, "POST", "/v1beta1/upload-form", body,
                              {"Content-Type": "multipart/form-data; boundary=BB"})
    assert status == 431 and "more than 100 form part header fields" in text
    _assert_no_run(server)


def test_a_chunked_body_malformed_midway_fails_its_run_and_the_server_stays_ready(server):
    s = _connect(server)
    try:
        s.sendall(_post_head("Transfer-Encoding: chunked") + b"5\r\nhello\r\n")
        wait_for(lambda: state(server)["state"] == api.ST_RECEIVING)
        s.sendall(b"5\r\nworldXX")
        status, headers, text = _read_response(s)
    finally:
        s.close()
    assert status == 400 and headers[api.HDR_REASON.lower()] == "BadRequest" and "not followed by CRLF" in text
    wait_for(lambda: state(server)["lastError"] is not None)
    st = state(server)
    assert st["state"] == api.ST_READY and st["lastError"]["reason"] == "BadRequest", st
    assert not (server.tmp / "vol" / "disk.img").exists() and server.result is None


@pytest.mark.parametrize("head, status, words", [
    (_post_head("X-Big: " + "a" * 100_000, "Content-Length: 3"), 431, "header line is longer than 8192"),
    (_post_head(*[f"X-{i}: 1" for i in range(5000)], "Content-Length: 3"), 431, "more than 100 header fields"),
    (f"POST /v1beta1/upload?{'a' * 9000} HTTP/1.1\r\nContent-Length: 3\r\n\r\n".encode(), 414, "request line"),
    (_post_head("X-Bad : 1", "Content-Length: 3"), 400, "malformed header line"),
])
def test_header_limits(server, head, status, words):
    code, headers, text = _raw(server, head, b"abc")
    assert code == status and words in text, text
    assert headers.get("connection") == "close"
    _assert_no_run(server)
