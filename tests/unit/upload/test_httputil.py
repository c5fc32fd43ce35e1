"""Body readers of the upload server: chunked, multipart, Content-Range."""

from __future__ import annotations

import io
import os

import pytest

from cdi.common.errors import PermanentError
from uploadproxy import httputil

pytestmark = pytest.mark.timeout(30)


def _drain(reader, size: int = 7) -> bytes:
    out = bytearray()
    buf = bytearray(size)
    while True:
        n = reader.readinto(memoryview(buf))
        if n == 0:
            return bytes(out)
        out += buf[:n]


def test_length_reader_short_body_is_an_interruption():
    r = httputil.LengthReader(io.BytesIO(b"abc"), 5)
    with pytest.raises(httputil.BodyError):
        _drain(r)


def test_chunked_reader():
    body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert _drain(httputil.ChunkedReader(io.BytesIO(body))) == b"Wikipedia"
    with pytest.raises(httputil.BodyError):
        _drain(httputil.ChunkedReader(io.BytesIO(b"4\r\nWi")))


@pytest.mark.parametrize("bufsize", [64, 4096, 1 << 20])
def test_multipart_file_part_streams(bufsize):
    data = os.urandom(300_000) + b"\r\n--notquite"
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nvalue\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.img\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--XyZ--\r\n")
    inner = httputil.LengthReader(io.BytesIO(body), len(body))
    r = httputil.MultipartFileReader(inner, b"XyZ")
    assert _drain(r, bufsize) == data


def test_multipart_without_file_part():
    body = b"--B\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--B--\r\n"
    r = httputil.MultipartFileReader(httputil.LengthReader(io.BytesIO(body), len(body)), b"B")
    with pytest.raises(PermanentError, match="file"):
        _drain(r)


def test_boundary_and_content_range():
    assert httputil.boundary_of('multipart/form-data; boundary="abc"') == b"abc"
    assert httputil.boundary_of("multipart/form-data; boundary=----x1") == b"----x1"
    assert httputil.parse_content_range("bytes 10-99/100") == (10, 99, 100)
    for bad in ("bytes 10-9/100", "bytes 0-100/100", "10-20/30", ""):
        with pytest.raises(ValueError):
            httputil.parse_content_range(bad)
