"""Pure parts of the http source and the worker: headers, redaction, status mapping, config errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cdi.api.contract import ImportSettings, Outcome, Reason, WorkerResult
from cdi.common.errors import NotSupportedError, PermanentError, TemporaryError
from importers import main as worker
from importers.redact import redact_url, redacted_settings, scrub, settings_secrets
from importers.sources import SOURCES, make_source
from importers.sources.blank import BlankSource
from importers.sources.http import (
    HTTPSource,
    _same_origin,
    basic_auth,
    load_secret_headers,
    parse_header_line,
    status_error,
)

pytestmark = pytest.mark.timeout(30)


def http_settings(url: str = "https://example.com/disk.img", **kw: object) -> ImportSettings:
    return ImportSettings(source="http", endpoint=url, **kw)  # type: ignore[arg-type]


# --- headers ---


def test_parse_header_line() -> None:
    assert parse_header_line("X-Token:  abc: def ", "h") == ("X-Token", "abc: def")
    assert parse_header_line("Empty:", "h") == ("Empty", "")


@pytest.mark.parametrize("bad", ["no colon here", ": value", "Bad Name: v", "X: a\r\nInjected: b", "X\0: v"])
def test_parse_header_line_rejects_without_echoing_the_value(bad: str) -> None:
    with pytest.raises(PermanentError) as e:
        parse_header_line(bad, "extraHeaders[3]")
    assert e.value.reason == Reason.CONFIG_ERROR
    assert "extraHeaders[3]" in e.value.message
    assert "value" not in e.value.message.replace("'Name: value'", "")
    assert "Injected" not in e.value.message


def test_secret_headers_dir_layout_of_a_mounted_secret(tmp_path: Path) -> None:
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "token").write_text("Authorization: Bearer s3cr3t\n")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "a").write_text("X-One: 1\n\nX-Two: 2")
    (tmp_path / "..data").mkdir()  # Kubernetes' atomic-writer directory: skipped
    (tmp_path / "..data" / "token").write_text("X-Hidden: no")
    (tmp_path / ".hidden").write_text("X-Hidden: no")
    assert load_secret_headers(str(tmp_path)) == [
        ("Authorization", "Bearer s3cr3t"),
        ("X-One", "1"),
        ("X-Two", "2"),
    ]


def test_secret_header_errors_name_the_file_not_the_content(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("this-is-the-secret-value\n")
    with pytest.raises(PermanentError) as e:
        load_secret_headers(str(tmp_path))
    assert "tok" in e.value.message and "this-is-the-secret" not in e.value.message
    with pytest.raises(PermanentError):
        load_secret_headers(str(tmp_path / "missing"))


def test_basic_auth() -> None:
    assert basic_auth("u", "p:w") == "Basic " + base64.b64encode(b"u:p:w").decode()


# --- redaction ---


def test_redact_url() -> None:
    assert redact_url("https://user:pw@host:8443/a/b?x=1") == "https://<redacted>@host:8443/a/b?x=<redacted>"
    # every query value goes, whatever its name: a presigned URL's credential may be under any
    red = redact_url("https://s3/b/o?X-Amz-Signature=abcd&X-Amz-Credential=AK%2F1&partNumber=2&Expires=77#frag")
    assert red == "https://s3/b/o?X-Amz-Signature=<redacted>&X-Amz-Credential=<redacted>&partNumber=<redacted>" \
        "&Expires=<redacted>#<redacted>"
    assert redact_url("http://h/p") == "http://h/p"
    assert redact_url("http://h:99999999/p?a=1") == "<redacted>"


def test_scrub_and_settings_secrets() -> None:
    s = http_settings(
        "https://alice:urlpass@h/x",
        access_key_id="alice",
        secret_key="topsecret",
        extra_headers=("X-Api-Key: k3y-value",),
    )
    text = "failed with topsecret and k3y-value and urlpass"
    assert scrub(text, settings_secrets(s)) == "failed with <redacted> and <redacted> and <redacted>"
    dumped = json.dumps(redacted_settings(s))
    for secret in ("topsecret", "k3y-value", "urlpass", "alice"):
        assert secret not in dumped


# --- status mapping ---


@pytest.mark.parametrize(
    ("status", "cls", "reason", "words"),
    [
        (404, PermanentError, Reason.NOT_FOUND, "spec.source.http.url"),
        (410, PermanentError, Reason.NOT_FOUND, "spec.source.http.url"),
        (401, PermanentError, Reason.UNAUTHORIZED, "secretRef"),
        (403, PermanentError, Reason.UNAUTHORIZED, "accessKeyId"),
        (500, TemporaryError, Reason.TRANSIENT, "retry"),
        (503, TemporaryError, Reason.TRANSIENT, "retry"),
        (408, TemporaryError, Reason.TRANSIENT, "retry"),
        (429, TemporaryError, Reason.TRANSIENT, "retry"),
        (400, PermanentError, Reason.HTTP_ERROR, "400"),
        (418, PermanentError, Reason.HTTP_ERROR, "418"),
    ],
)
def test_status_error(status: int, cls: type, reason: str, words: str) -> None:
    e = status_error(status, "Some Phrase", "https://h/x")
    assert type(e) is cls
    assert e.reason == reason
    assert words in e.message and f"returned {status} Some Phrase" in e.message


def test_unauthorized_wording_depends_on_credentials() -> None:
    assert "wants credentials" in status_error(401, "", "u").message
    assert "refused" in status_error(401, "", "u", sent_credentials=True).message


def test_same_origin() -> None:
    assert _same_origin("https://a:443/x", "https://a/y")
    assert not _same_origin("https://a/x", "https://b/x")
    assert not _same_origin("https://a/x", "https://a:8443/x")
    assert not _same_origin("https://a/x", "http://a/x")  # downgrade
    assert _same_origin("http://a/x", "https://a/x")  # upgrade on default ports


# --- source construction ---


@pytest.mark.parametrize("url", ["ftp://h/x", "not a url", "https:///x", "http://h:99999/x"])
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(PermanentError) as e:
        HTTPSource(http_settings(url))
    assert e.value.reason == Reason.CONFIG_ERROR


def test_url_userinfo_is_used_as_credentials_and_stripped() -> None:
    src = HTTPSource(http_settings("https://bob:pw%40x@h/x"))
    assert src.url == "https://h/x"
    assert ("Authorization", basic_auth("bob", "pw@x")) in src._private
    assert "pw" not in src.redacted_url


def test_registry() -> None:
    assert set(SOURCES) >= {"http", "blank"}
    assert isinstance(make_source(ImportSettings(source="blank")), BlankSource)
    with pytest.raises(NotSupportedError) as e:
        make_source(ImportSettings(source="s3"))
    assert "source 's3' is not supported yet" in e.value.message
    assert e.value.reason == Reason.NOT_SUPPORTED


# --- the worker's own exit paths (in process; no data path needed) ---


def run_worker(tmp_path: Path, env: dict[str, str]) -> tuple[int, WorkerResult]:
    log = tmp_path / "termination-log"
    code = worker.main({**env, "CDI_TERMINATION_LOG": str(log)})
    return code, WorkerResult.from_json(log.read_text())


def test_worker_bad_env_is_a_permanent_config_error(tmp_path: Path) -> None:
    code, result = run_worker(tmp_path, {"IMPORTER_SOURCE": "http", "PREALLOCATION": "maybe"})
    assert code == 2
    assert (result.outcome, result.reason) == (Outcome.PERMANENT, Reason.CONFIG_ERROR)
    assert "PREALLOCATION" in result.message
    code, result = run_worker(tmp_path, {})
    assert code == 2 and "IMPORTER_SOURCE" in result.message


def test_worker_unsupported_source(tmp_path: Path) -> None:
    code, result = run_worker(tmp_path, {"IMPORTER_SOURCE": "vddk"})
    assert code == 2 and result.reason == Reason.NOT_SUPPORTED


def test_worker_bad_header_message_has_no_secret(tmp_path: Path) -> None:
    env = http_settings("https://h/x", secret_key="pw", extra_headers=("broken-header-with-s3cret",)).to_env()
    code, result = run_worker(tmp_path, env)
    assert code == 2 and result.reason == Reason.CONFIG_ERROR
    assert "s3cret" not in result.message
