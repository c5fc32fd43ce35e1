"""The upload proxy's request reader and chunked body pump (in process, no TLS); the real proxy
over TLS is exercised in tests/functional/upload and tests/functional/security/test_upload.py."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from cdi.api import upload as api
from uploadproxy import httputil, proxy

pytestmark = pytest.mark.timeout(30)


def _read(data: bytes, eof: bool = True) -> proxy.Request | None:
    async def go() -> proxy.Request | None:
        r = asyncio.StreamReader(limit=4 * proxy.CHUNK)
        r.feed_data(data)
        if eof:
            r.feed_eof()
        return await proxy.read_request(r)

    return asyncio.run(go())


def _refused(data: bytes, eof: bool = True) -> proxy.HTTPError:
    with pytest.raises(proxy.HTTPError) as e:
        _read(data, eof)
    return e.value


def test_a_request_head_is_parsed():
    req = _read(b"\r\npost /v1beta1/upload?x=1 HTTP/1.1\r\nHost: x\r\nAuthorization:  Bearer t \r\n"
                b"Content-Length: 12\r\n\r\nbody")
    assert req is not None and (req.method, req.path, req.version) == ("POST", "/v1beta1/upload", "HTTP/1.1")
    assert req.headers["authorization"] == "Bearer t" and req.framing == httputil.Framing(length=12)
    assert _read(b"") is None  # the client closed between requests


@pytest.mark.parametrize("head, status, reason", [
    (b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", 400, "BadRequest"),
    (b"POST /u HTTP/1.1\r\nTransfer-Encoding: x-custom\r\n\r\n", 501, "NotImplemented"),
    (b"POST /u HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "BadRequest"),
    (b"POST /u HTTP/1.1\r\nX: 1\nContent-Length: 0\r\n\r\n", 400, "BadRequest"),  # a bare LF inside a line
    (b"POST /u HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n", 400, "BadRequest"),
    (b"POST /u HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n", 431, "HeaderTooLarge"),
    (b"POST /u HTTP/1.1\r\nX: " + b"a" * (2 << 20) + b"\r\n\r\n", 431, "HeaderTooLarge"),  # over the buffer
    (b"POST /u HTTP/1.1\r\n" + b"X: 1\r\n" * 5000 + b"\r\n", 431, "HeaderTooLarge"),
    (b"POST /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", 414, "RequestLineTooLong"),
    (b"POST /u HTTP/3\r\n\r\n", 400, "BadRequest"),
    (b"POST /u HTTP/1.1\r\nHost: x\r\n", 400, "BadRequest"),  # the connection closed inside the head
    (b"POST /u HTTP/1.1\r\nX-Checksum: sha256:aa\r\nx-checksum: sha256:bb\r\nContent-Length: 1\r\n\r\n", 400,
     "BadRequest"),  # which one would be checked?
])
def test_bad_heads_are_refused(head, status, reason):
    e = _refused(head)
    assert (e.status, e.reason) == (status, reason), e.message


def test_a_trickled_head_times_out_and_an_idle_connection_closes(monkeypatch):
    monkeypatch.setattr(httputil, "HEAD_TIMEOUT", 0.3)
    monkeypatch.setattr(httputil, "IDLE_TIMEOUT", 0.3)
    t = time.monotonic()
    e = _refused(b"POST /v1beta1/upload HTTP/1.1\r\nX-Slow: aaa", eof=False)
    assert (e.status, e.reason) == (408, "RequestTimeout") and time.monotonic() - t < 5
    assert _read(b"", eof=False) is None  # nothing sent: closed without an answer


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass


def _pump(tmp_path, body: bytes) -> bytes:
    p = proxy.Proxy(str(tmp_path), api.UploadConfig())
    sink = _Sink()

    async def go() -> None:
        r = asyncio.StreamReader(limit=4 * proxy.CHUNK)
        r.feed_data(body)
        r.feed_eof()
        await p._pump(r, sink, None, True)  # type: ignore[arg-type]

    asyncio.run(go())
    return bytes(sink.data)


def test_chunked_bodies_are_forwarded_reframed(tmp_path):
    body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert _pump(tmp_path, body) == b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"


@pytest.mark.parametrize("body, status, words", [
    (b"0\r\n\r\n", 400, "the upload body is empty"),
    (b"0\r\nX-T: 1\r\n\r\n", 400, "the upload body is empty"),
    (b"zz\r\n", 400, "malformed chunk-size"),
    (b"4;" + b"e" * 2000 + b"\r\nWiki\r\n0\r\n\r\n", 400, "extensions are limited"),
    (b"4\r\nWikiXX0\r\n\r\n", 400, "not followed by CRLF"),
    (b"4\r\nWiki\n0\r\n\r\n", 400, "not followed by CRLF"),
    (b"4\r\nWiki\r\n0\r\n" + b"T: 1\r\n" * 101 + b"\r\n", 431, "more than 100 trailer fields"),
])
def test_malformed_or_empty_chunked_bodies_never_end_for_the_server(tmp_path, body, status, words):
    with pytest.raises(httputil.RequestError) as e:
        _pump(tmp_path, body)
    assert e.value.status == status and words in e.value.message


def test_errors_are_answered_and_the_connection_closed(tmp_path):
    """Through Proxy.handle on a plain socket: the answer arrives although the client is still
    sending its (too long) head, then the connection closes."""
    p = proxy.Proxy(str(tmp_path), api.UploadConfig())
    result: dict[str, bytes] = {}

    async def go() -> None:
        server = await asyncio.start_server(p.handle, "127.0.0.1", 0, limit=4 * proxy.CHUNK)
        port = server.sockets[0].getsockname()[1]

        def client() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"POST /v1beta1/upload HTTP/1.1\r\n" + b"X: 1\r\n" * 5000 + b"\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                result["answer"] = data

        await asyncio.to_thread(client)
        server.close()
        await server.wait_closed()

    asyncio.run(go())
    head = result["answer"].split(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 431 ") and b"Connection: close" in head
    assert b"more than 100 header fields" in result["answer"]
