"""The value types every layer shares: one checksum rule, one URL redaction rule."""

from __future__ import annotations

import pytest

from cdi.api.values import Checksum, SourceURL, redact_url
from cdi.common.errors import ValidationError


def test_checksum_parses_the_four_algorithms_case_insensitively() -> None:
    for algo, n in (("md5", 32), ("sha1", 40), ("sha256", 64), ("sha512", 128)):
        c = Checksum.parse(f" {algo.upper()}:{'A' * n} ")
        assert (c.algorithm, c.digest, str(c)) == (algo, "a" * n, f"{algo}:{'a' * n}")
        assert c.matches("A" * n) and not c.matches("b" * n)
        assert c.hasher().name == algo


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("abcd", "has no algorithm"),
        ("sha3_256:" + "0" * 64, "is not supported"),
        ("sha256:xyz", "not hexadecimal"),
        ("sha256:", "not hexadecimal"),
        ("sha256:abcd", "has 64 hex digits, this one has 4"),
    ],
)
def test_checksum_refusals_name_the_field_and_the_fix(value: str, words: str) -> None:
    with pytest.raises(ValidationError) as e:
        Checksum.parse(value, "spec.source.http.checksum")
    assert e.value.field == "spec.source.http.checksum"
    assert words in e.value.message


def test_source_url_never_shows_userinfo_or_query_values() -> None:
    u = SourceURL("https://AKIA:s3cr3t@bucket.example/disk.img?X-Amz-Signature=f00d&token=t0k")
    for shown in (str(u), repr(u), u.redacted, f"{u}"):
        for secret in ("AKIA", "s3cr3t", "f00d", "t0k"):
            assert secret not in shown
    assert u.redacted == "https://<redacted>@bucket.example/disk.img?X-Amz-Signature=<redacted>&token=<redacted>"
    assert u.url.endswith("token=t0k")  # the worker still gets the real URL


def test_redact_url_keeps_names_only() -> None:
    assert redact_url("http://h/p?a&b=") == "http://h/p?a=<redacted>&b=<redacted>"
