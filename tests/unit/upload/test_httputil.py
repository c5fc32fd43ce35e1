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


# --- framing (RFC 9112 section 6): what the proxy and the upload server both refuse -------------


def _fields(*lines: str) -> list[tuple[str, str]]:
    return [httputil.parse_field_line(x.encode()) for x in lines]


def test_framing_of_plain_and_chunked_bodies():
    assert httputil.body_framing(_fields("Content-Length: 42")) == httputil.Framing(length=42)
    assert httputil.body_framing(_fields("Transfer-Encoding: chunked")) == httputil.Framing(chunked=True)
    assert httputil.body_framing(_fields("transfer-encoding:  Chunked ")).chunked
    assert httputil.body_framing(_fields("Host: x")) == httputil.Framing()
    assert not httputil.Framing(length=0).has_body and httputil.Framing(length=1).has_body


@pytest.mark.parametrize("lines, status, words", [
    # the smuggling vector of issue 9: chunked that ends at once, plus a Content-Length
    (("Transfer-Encoding: chunked", "Content-Length: 4"), 400, "both Transfer-Encoding and Content-Length"),
    (("Content-Length: 4", "Transfer-Encoding: identity"), 400, "both"),
    (("Transfer-Encoding: gzip, chunked",), 501, "gzip is not supported"),
    (("Transfer-Encoding: chunked, gzip",), 501, "not supported"),
    (("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), 400, "exactly"),
    (("Transfer-Encoding: chunked, chunked",), 400, "exactly"),
    (("Transfer-Encoding: ",), 400, "exactly"),
    (("Content-Length: 4", "Content-Length: 4"), 400, "more than one Content-Length"),
    (("Content-Length: 4, 4",), 400, "more than one"),
    (("Content-Length: 4", "Content-Length: 5"), 400, "more than one"),
    (("Content-Length: -1",), 400, "invalid Content-Length"),
    (("Content-Length: +4",), 400, "invalid"),
    (("Content-Length: 0x10",), 400, "invalid"),
    (("Content-Length: 4_000",), 400, "invalid"),
    (("Content-Length: ",), 400, "invalid"),
    (("Content-Length: 99999999999999999999",), 400, "invalid"),
])
def test_framing_refusals(lines, status, words):
    with pytest.raises(httputil.RequestError) as e:
        httputil.body_framing(_fields(*lines))
    assert e.value.status == status and words in e.value.message


def test_chunked_needs_http_1_1():
    with pytest.raises(httputil.RequestError, match=r"HTTP/1\.1"):
        httputil.body_framing(_fields("Transfer-Encoding: chunked"), "HTTP/1.0")


@pytest.mark.parametrize("line", [
    b"Bad Name: x", b"Name : x", b" folded: x", b"\tfolded", b"NoColon", b"X: a\nContent-Length: 0",
    b"X: a\x00b", b": empty name",
])
def test_malformed_field_lines(line):
    with pytest.raises(httputil.RequestError) as e:
        httputil.parse_field_line(line)
    assert e.value.status == 400


def test_request_line():
    assert httputil.parse_request_line(b"POST /v1beta1/upload?x=1 HTTP/1.1\r\n") == (
        "POST", "/v1beta1/upload?x=1", "HTTP/1.1")
    for bad in (b"POST /x\r\n", b"POST  /x HTTP/1.1\r\n", b"POST /x HTTP/1.1\n", b"POST /x y HTTP/1.1\r\n",
                b"PO ST /x HTTP/1.1\r\n"):
        with pytest.raises(httputil.RequestError) as e:
            httputil.parse_request_line(bad)
        assert e.value.status == 400, bad
    with pytest.raises(httputil.RequestError) as e:
        httputil.parse_request_line(b"POST /x HTTP/2.0\r\n")
    assert e.value.status == 505
    with pytest.raises(httputil.RequestError) as e:
        httputil.parse_request_line(b"GET /" + b"a" * httputil.MAX_LINE + b" HTTP/1.1\r\n")
    assert e.value.status == 414


def test_header_section_limits():
    ok = b"".join(f"X-{i}: {'v' * 80}\r\n".encode() for i in range(httputil.MAX_FIELDS)) + b"\r\n"
    assert len(httputil.read_fields(io.BytesIO(ok), "header")) == httputil.MAX_FIELDS
    longest = b"X: " + b"v" * (httputil.MAX_LINE - 3) + b"\r\n\r\n"
    assert httputil.read_fields(io.BytesIO(longest), "header")[0][1] == "v" * (httputil.MAX_LINE - 3)
    too_many = b"X: 1\r\n" * (httputil.MAX_FIELDS + 1) + b"\r\n"
    too_long = b"X: " + b"v" * (httputil.MAX_LINE - 2) + b"\r\n\r\n"
    too_big = b"".join(f"X-{i}: {'v' * 8000}\r\n".encode() for i in range(9)) + b"\r\n"
    for data, words in ((too_many, "more than 100 header fields"), (too_long, "longer than 8192 bytes"),
                        (too_big, "larger than 64 KiB")):
        with pytest.raises(httputil.HeaderTooLarge, match=words) as e:
            httputil.read_fields(io.BytesIO(data), "header")
        assert e.value.status == 431
    with pytest.raises(httputil.RequestError, match="CRLF"):
        httputil.read_fields(io.BytesIO(b"X: 1\n\n"), "header")
    with pytest.raises(httputil.BodyError):
        httputil.read_fields(io.BytesIO(b"X: 1\r\n"), "header")


# --- chunked bodies --------------------------------------------------------------------------


def test_chunk_size_lines():
    assert httputil.parse_chunk_size(b"1A\r\n") == 26
    assert httputil.parse_chunk_size(b"4 ; name=value\r\n") == 4
    for bad in (b"\r\n", b"x\r\n", b"-1\r\n", b"0x10\r\n", b"4\n", b"4\rx\r\n", b" 4\r\n", b"1" * 17 + b"\r\n",
                b"4;a\x00b\r\n"):
        with pytest.raises(httputil.RequestError):
            httputil.parse_chunk_size(bad)
    with pytest.raises(httputil.RequestError, match="extensions are limited"):
        httputil.parse_chunk_size(b"4;" + b"e" * httputil.MAX_CHUNK_LINE + b"\r\n")
    with pytest.raises(httputil.BodyError):
        httputil.parse_chunk_size(b"4;e")  # the connection closed


@pytest.mark.parametrize("body, error", [
    (b"4\r\nWikiXX5\r\npedia\r\n0\r\n\r\n", "not followed by CRLF"),  # a chunk longer than its size
    (b"4\r\nWiki\n5\r\npedia\r\n0\r\n\r\n", "not followed by CRLF"),
    (b"4\r\nWik\r\n0\r\n\r\n", "not followed by CRLF"),  # shorter than its size
    (b"4;" + b"x" * 2000 + b"\r\nWiki\r\n0\r\n\r\n", "extensions are limited"),
    (b"zz\r\nWiki\r\n0\r\n\r\n", "malformed chunk-size"),
    (b"4\r\nWiki\r\n0\r\n" + b"T: 1\r\n" * 101 + b"\r\n", "more than 100 trailer fields"),
    (b"4\r\nWiki\r\n0\r\nT: " + b"v" * 9000 + b"\r\n\r\n", "trailer line is longer"),
])
def test_malformed_chunked_bodies_are_refused(body, error):
    with pytest.raises(httputil.RequestError, match=error):
        _drain(httputil.ChunkedReader(io.BufferedReader(io.BytesIO(body))))


def test_chunked_body_cut_short_is_an_interruption():
    for body in (b"4\r\nWiki", b"4\r\nWiki\r", b"4\r\nWiki\r\n0\r\n", b"4\r\nWiki\r\n0\r\nT: 1\r\n"):
        with pytest.raises(httputil.BodyError):
            _drain(httputil.ChunkedReader(io.BufferedReader(io.BytesIO(body))))


def test_read_ahead_sees_an_empty_body_and_keeps_the_bytes():
    first, r = httputil.read_ahead(httputil.ChunkedReader(io.BytesIO(b"0\r\n\r\n")))
    assert first == b"" and _drain(r) == b""
    body = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    first, r = httputil.read_ahead(httputil.ChunkedReader(io.BytesIO(body)), 2)
    assert first == b"ab" and _drain(r, 1) == b"abcde"


# --- multipart forms -------------------------------------------------------------------------


def _form(part_head: bytes, content: bytes, boundary: bytes = b"B") -> httputil.MultipartFileReader:
    body = b"--" + boundary + b"\r\n" + part_head + b"\r\n" + content + b"\r\n--" + boundary + b"--\r\n"
    return httputil.MultipartFileReader(httputil.LengthReader(io.BytesIO(body), len(body)), boundary)


def test_multipart_empty_file_part_reads_as_empty():
    first, _ = httputil.read_ahead(_form(b'Content-Disposition: form-data; name="file"\r\n', b""))
    assert first == b""


def test_multipart_part_header_limits():
    disp = b'Content-Disposition: form-data; name="file"\r\n'
    assert _drain(_form(disp + b"X: 1\r\n" * (httputil.MAX_FIELDS - 1), b"data")) == b"data"
    for head, words in ((disp + b"X: 1\r\n" * httputil.MAX_FIELDS, "more than 100 form part header fields"),
                        (disp + b"X: " + b"v" * 9000 + b"\r\n", "form part header line is longer"),
                        (disp + b"X: " + b"v" * 100_000, "larger than 64 KiB")):
        with pytest.raises(httputil.HeaderTooLarge, match=words):
            _drain(_form(head, b"data"))
    with pytest.raises(httputil.RequestError, match="malformed form part header"):
        _drain(_form(b"Content-Disposition form-data\r\n", b"data"))


def test_multipart_file_is_the_part_named_file_not_filename():
    body = (b"--B\r\nContent-Disposition: form-data; filename=\"file\"; name=\"other\"\r\n\r\nnot it\r\n"
            b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d\"\r\n\r\nimage\r\n--B--\r\n")
    r = httputil.MultipartFileReader(httputil.LengthReader(io.BytesIO(body), len(body)), b"B")
    assert _drain(r) == b"image"
