"""HTTPSource against real nginx (TLS, basic auth, redirects, Range) and the misbehaving server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cdi.api.contract import ImportSettings, Reason
from cdi.common.errors import PermanentError, TemporaryError
from cdi.datapath.nbdkit import Nbdkit
from importers.sources.http import HTTPSource
from tests.peers.bad_http import BadHTTPServer
from tests.peers.nginx import NginxServer

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

SIZE = 3 * 1024 * 1024 + 123


@pytest.fixture
def image(tmp_images: Path, served_path: Callable[[Path], str]) -> tuple[str, bytes]:
    """A random file in the served directory: (its URL path, its bytes)."""
    data = os.urandom(SIZE)
    path = tmp_images / "disk.img"
    path.write_bytes(data)
    return served_path(path), data


def settings(url: str, **kw: object) -> ImportSettings:
    kw.setdefault("idle_timeout", 5.0)
    return ImportSettings(source="http", endpoint=url, **kw)  # type: ignore[arg-type]


def read_all(src: HTTPSource, offset: int = 0, bufsize: int = 256 * 1024) -> bytes:
    stream = src.open(offset)
    out = bytearray()
    buf = bytearray(bufsize)
    try:
        while n := stream.readinto(memoryview(buf)):
            out += buf[:n]
    finally:
        stream.close()
    return bytes(out)


# --- nginx: TLS, auth, redirects, Range ---


def test_plain_http(nginx: NginxServer, image: tuple[str, bytes]) -> None:
    rel, data = image
    src = HTTPSource(settings(f"{nginx.http_url}/{rel}"))
    info = src.info()
    assert (info.size, info.supports_range) == (SIZE, True)
    assert info.validator and info.description == f"{nginx.http_url}/{rel}"
    assert read_all(src) == data


def test_https_with_the_ca_in_cert_dir(nginx: NginxServer, image: tuple[str, bytes]) -> None:
    rel, data = image
    src = HTTPSource(settings(f"{nginx.https_url}/{rel}", cert_dir=nginx.cert_dir))
    assert src.info().size == SIZE
    assert read_all(src) == data


def test_https_without_the_ca_is_a_tls_error(nginx: NginxServer, image: tuple[str, bytes]) -> None:
    rel, _ = image
    # SSL_CERT_FILE etc. are set on this machine: the system store must still not trust the test CA.
    with pytest.raises(PermanentError) as e:
        HTTPSource(settings(f"{nginx.https_url}/{rel}")).info()
    assert e.value.reason == Reason.TLS_ERROR
    assert "certConfigMap" in e.value.message and "insecureSkipVerify" in e.value.message


def test_https_insecure(nginx: NginxServer, image: tuple[str, bytes]) -> None:
    rel, data = image
    src = HTTPSource(settings(f"{nginx.https_url}/{rel}", insecure_tls=True))
    assert read_all(src) == data


def test_https_to_a_plain_port_says_so(nginx: NginxServer, image: tuple[str, bytes]) -> None:
    rel, _ = image
    url = f"https://127.0.0.1:{nginx.http_port}/{rel}"
    with pytest.raises(PermanentError) as e:
        HTTPSource(settings(url, cert_dir=nginx.cert_dir)).info()
    assert e.value.reason == Reason.TLS_ERROR


def test_basic_auth(nginx: NginxServer, image: tuple[str, bytes]) -> None:
    rel, data = image
    url = f"{nginx.auth_url}/{rel}"
    src = HTTPSource(
        settings(url, cert_dir=nginx.cert_dir, access_key_id=nginx.user, secret_key=nginx.password)
    )
    assert src.info().size == SIZE
    assert read_all(src, offset=1000) == data[1000:]
    assert any(e.user == nginx.user and e.range == "bytes=1000-" for e in nginx.access_log())


def test_basic_auth_missing_or_wrong(nginx: NginxServer, image: tuple[str, bytes]) -> None:
    rel, _ = image
    url = f"{nginx.auth_url}/{rel}"
    with pytest.raises(PermanentError) as e:
        HTTPSource(settings(url, cert_dir=nginx.cert_dir)).info()
    assert e.value.reason == Reason.UNAUTHORIZED and "secretRef" in e.value.message
    with pytest.raises(PermanentError) as e:
        HTTPSource(
            settings(url, cert_dir=nginx.cert_dir, access_key_id=nginx.user, secret_key="wrong-pw")
        ).open()
    assert e.value.reason == Reason.UNAUTHORIZED and "refused" in e.value.message
    assert "wrong-pw" not in e.value.message


def test_redirect_same_host_keeps_auth(nginx: NginxServer, image: tuple[str, bytes]) -> None:
    rel, data = image
    url = f"{nginx.https_url}/redirect/auth/{rel}"
    src = HTTPSource(
        settings(url, cert_dir=nginx.cert_dir, access_key_id=nginx.user, secret_key=nginx.password)
    )
    info = src.info()
    assert info.description == f"{nginx.auth_url}/{rel}"
    assert read_all(src) == data


def test_redirect_to_another_host_drops_auth(nginx: NginxServer, image: tuple[str, bytes]) -> None:
    rel, data = image
    # 127.0.0.1 -> localhost: another host, so the credentials are not sent there (nginx: 401).
    url = f"{nginx.https_url}/xredirect/auth/{rel}"
    src = HTTPSource(
        settings(url, cert_dir=nginx.cert_dir, access_key_id=nginx.user, secret_key=nginx.password)
    )
    with pytest.raises(PermanentError) as e:
        src.info()
    assert e.value.reason == Reason.UNAUTHORIZED
    # Without auth on the target the cross-host redirect just works (and TLS checks "localhost").
    src = HTTPSource(settings(f"{nginx.https_url}/xredirect/{rel}", cert_dir=nginx.cert_dir))
    assert src.info().description.startswith("https://localhost:")
    assert read_all(src) == data


def test_range_reads(nginx: NginxServer, image: tuple[str, bytes]) -> None:
    rel, data = image
    src = HTTPSource(settings(f"{nginx.http_url}/{rel}"))
    src.info()
    for offset in (1, 65536, SIZE - 1):
        assert read_all(src, offset) == data[offset:]
    assert read_all(src, SIZE) == b""  # 416 at exactly the end is an empty stream


def test_not_found(nginx: NginxServer) -> None:
    with pytest.raises(PermanentError) as e:
        HTTPSource(settings(f"{nginx.http_url}/no/such/file.img")).info()
    assert e.value.reason == Reason.NOT_FOUND
    assert "404" in e.value.message and "spec.source.http.url" in e.value.message


def test_connection_refused_is_temporary() -> None:
    from tests.peers import free_port

    with pytest.raises(TemporaryError) as e:
        HTTPSource(settings(f"http://127.0.0.1:{free_port()}/x")).info()
    assert "refused" in e.value.message


def test_nbdkit_plan_reads_the_same_bytes(
    nginx: NginxServer, image: tuple[str, bytes], tmp_path: Path
) -> None:
    rel, data = image
    url = f"{nginx.https_url}/redirect/auth/{rel}"
    src = HTTPSource(
        settings(url, cert_dir=nginx.cert_dir, access_key_id=nginx.user, secret_key=nginx.password)
    )
    try:
        plan = src.nbdkit_plan()
        assert plan is not None and plan.plugin == "curl"
        argv = " ".join(plan.args)
        assert nginx.password not in argv and nginx.user not in argv
        out = tmp_path / "out.raw"
        with Nbdkit(plan, filters=()) as uri:
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(out)],
                           check=True, timeout=60, capture_output=True)  # fmt: skip
        got = out.read_bytes()
        # qemu sees whole 512-byte sectors: the tail is padded with zeroes.
        assert hashlib.sha256(got[:SIZE]).digest() == hashlib.sha256(data).digest()
        assert got[SIZE:] == bytes(len(got) - SIZE)
    finally:
        src.close()


# --- the misbehaving server ---


def test_head_refused_falls_back_to_get(bad_http: BadHTTPServer, image: tuple[str, bytes]) -> None:
    rel, data = image
    src = HTTPSource(settings(bad_http.url_for(f"nohead/{rel}")))
    info = src.info()
    assert (info.size, info.supports_range) == (SIZE, True)
    assert read_all(src, 10) == data[10:]


def test_head_that_hangs_falls_back_to_get(bad_http: BadHTTPServer, image: tuple[str, bytes]) -> None:
    rel, _ = image
    src = HTTPSource(settings(bad_http.url_for(f"hanghead/{rel}"), idle_timeout=0.5))
    assert src.info().size == SIZE


def test_no_length(bad_http: BadHTTPServer, image: tuple[str, bytes]) -> None:
    rel, data = image
    src = HTTPSource(settings(bad_http.url_for(f"nolength/{rel}")))
    info = src.info()
    assert (info.size, info.supports_range) == (None, False)
    assert src.nbdkit_plan() is None
    assert read_all(src) == data


def test_server_ignoring_range(bad_http: BadHTTPServer, image: tuple[str, bytes]) -> None:
    rel, data = image
    src = HTTPSource(settings(bad_http.url_for(f"norange/{rel}")))
    info = src.info()
    assert (info.size, info.supports_range) == (SIZE, False)
    assert src.nbdkit_plan() is None
    # Asked anyway: the 200 answer is skipped up to the offset.
    assert read_all(src, 5000) == data[5000:]


def test_file_changed_between_requests(bad_http: BadHTTPServer, image: tuple[str, bytes]) -> None:
    rel, _ = image
    src = HTTPSource(settings(bad_http.url_for(f"changing/{rel}")))
    src.info()
    with pytest.raises(TemporaryError) as e:
        src.open(1000)
    assert "changed" in e.value.message


@pytest.mark.parametrize("kind", ["drop", "reset"])
def test_drop_mid_body_then_resume(bad_http: BadHTTPServer, image: tuple[str, bytes], kind: str) -> None:
    rel, data = image
    src = HTTPSource(settings(bad_http.url_for(f"{kind}/100000/{rel}")))
    assert src.info().supports_range
    stream = src.open(0)
    got = bytearray()
    buf = bytearray(32768)
    with pytest.raises(TemporaryError) as e:
        while n := stream.readinto(memoryview(buf)):
            got += buf[:n]
    stream.close()
    assert e.value.reason == Reason.TRANSIENT
    assert len(got) == 100000 and bytes(got) == data[:100000]
    if kind == "drop":
        assert f"after 100000 of {SIZE} bytes" in e.value.message
    assert read_all(src, len(got)) == data[len(got) :]
    assert bad_http.count(f"/{kind}/100000/{rel}", "GET") == 2


def test_flaky_500_is_temporary(bad_http: BadHTTPServer, image: tuple[str, bytes]) -> None:
    rel, data = image
    url = bad_http.url_for(f"flaky500/2/{rel}")
    with pytest.raises(TemporaryError) as e:
        HTTPSource(settings(url)).info()  # HEAD: 500
    assert "500" in e.value.message and e.value.reason == Reason.TRANSIENT
    src = HTTPSource(settings(url))
    with pytest.raises(TemporaryError):
        src.open()  # second request: 500
    assert read_all(src) == data  # third: fine


def test_stall_hits_the_idle_timeout(bad_http: BadHTTPServer, image: tuple[str, bytes]) -> None:
    rel, _ = image
    src = HTTPSource(settings(bad_http.url_for(f"stall/1000/{rel}"), idle_timeout=0.5))
    stream = src.open()
    buf = bytearray(65536)
    start = time.monotonic()
    with pytest.raises(TemporaryError) as e:
        while stream.readinto(memoryview(buf)):
            pass
    stream.close()
    assert "no data" in e.value.message and "0.5 s" in e.value.message
    assert time.monotonic() - start < 5


def test_trickle_is_slow_but_fine(bad_http: BadHTTPServer, tmp_images: Path, served_path) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(100_000)
    (tmp_images / "small.img").write_bytes(data)
    src = HTTPSource(
        settings(bad_http.url_for(f"trickle/{served_path(tmp_images / 'small.img')}"), idle_timeout=2)
    )
    assert read_all(src) == data


def test_html_page(bad_http: BadHTTPServer) -> None:
    src = HTTPSource(settings(bad_http.url_for("html/login")))
    assert src.info().content_type.startswith("text/html")
    assert read_all(src).startswith(b"<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("path", "reason", "cls"),
    [
        ("404/x", Reason.NOT_FOUND, PermanentError),
        ("401/x", Reason.UNAUTHORIZED, PermanentError),
        ("status/410/x", Reason.NOT_FOUND, PermanentError),
        ("status/418/x", Reason.HTTP_ERROR, PermanentError),
        ("status/503/x", Reason.TRANSIENT, TemporaryError),
        ("status/429/x", Reason.TRANSIENT, TemporaryError),
    ],
)
def test_status_codes(bad_http: BadHTTPServer, path: str, reason: str, cls: type) -> None:
    with pytest.raises(cls) as e:
        HTTPSource(settings(bad_http.url_for(path))).info()
    assert e.value.reason == reason


def test_redirect_limit(bad_http: BadHTTPServer, image: tuple[str, bytes]) -> None:
    rel, data = image
    src = HTTPSource(settings(bad_http.url_for(f"redirect/9/{rel}")))  # 10 redirects: fine
    assert read_all(src) == data
    with pytest.raises(PermanentError) as e:
        HTTPSource(settings(bad_http.url_for(f"redirect/10/{rel}"))).info()
    assert "more than 10" in e.value.message


def test_headers_are_sent(bad_http: BadHTTPServer, image: tuple[str, bytes], tmp_path: Path) -> None:
    rel, _ = image
    secret_dir = tmp_path / "hdrs"
    (secret_dir / "0").mkdir(parents=True)
    (secret_dir / "0" / "token").write_text("X-Secret: value-1\n")
    url = bad_http.url_for(f"redirect/1/{rel}")
    src = HTTPSource(settings(url, extra_headers=("X-Plain: p",), secret_headers_dir=str(secret_dir),
                              access_key_id="u", secret_key="pw"))  # fmt: skip
    bad_http.reset()
    src.info()
    final = [r for r in bad_http.requests if r.path == f"/{rel}"]
    assert final
    for r in final:
        assert r.headers.get("X-Plain") == "p" and r.headers.get("X-Secret") == "value-1"
        assert r.headers.get("Authorization", "").startswith("Basic ")
        assert r.headers.get("User-Agent", "").startswith("cdi-importer")
    plan = src.nbdkit_plan()
    assert plan is not None
    assert "value-1" not in " ".join(plan.args) and "pw" not in " ".join(plan.args)
    assert b"X-Secret: value-1" in plan.secret_files["headers"]
