"""Upload tokens: signature, lifetime, claims, key rotation (pure, files in tmp_path)."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest

from cdi.api import upload as api
from uploadproxy.tokens import KeyRing, TokenError, bearer

pytestmark = pytest.mark.timeout(30)


def _parts(token: str) -> tuple[dict, dict, str]:
    h, c, s = token.split(".")
    dec = lambda x: json.loads(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))  # noqa: E731
    return dec(h), dec(c), s


def _enc(d: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def test_issue_and_verify_carry_cdi_claims(tmp_path):
    ring = KeyRing(str(tmp_path / "keys"))
    token = ring.issue("ns1", "vol-a")
    header, claims, _ = _parts(token)
    assert header["alg"] == "EdDSA" and header["kid"]
    assert claims["iss"] == "cdi-apiserver"
    assert claims["operation"] == "Upload"
    assert claims["resource"] == {"group": "", "version": "v1", "resource": "persistentvolumeclaims"}
    assert claims["exp"] - claims["iat"] == 300
    c = ring.verify(token)
    assert (c.namespace, c.name) == ("ns1", "vol-a")
    assert oct(os.stat(tmp_path / "keys" / f"{header['kid']}.key").st_mode & 0o777) == "0o600"


def test_another_process_verifies_with_the_public_key_only(tmp_path):
    token = KeyRing(str(tmp_path / "keys")).issue("default", "disk")
    other = KeyRing(str(tmp_path / "keys"))
    assert other.verify(token).name == "disk"


def test_expired_token_is_401_with_reason(tmp_path):
    ring = KeyRing(str(tmp_path / "k"))
    token = ring.issue("default", "a", ttl=5, now=time.time() - 100)
    with pytest.raises(TokenError) as e:
        ring.verify(token)
    assert e.value.status == 401 and e.value.reason == "TokenExpired"
    assert "expired" in e.value.message


def test_leeway_of_ten_seconds(tmp_path):
    ring = KeyRing(str(tmp_path / "k"))
    token = ring.issue("default", "a", ttl=5, now=time.time() - 12)  # expired 7 s ago
    assert ring.verify(token).name == "a"


def test_configurable_lifetime(tmp_path):
    ring = KeyRing(str(tmp_path / "k"))
    _, claims, _ = _parts(ring.issue("default", "a", ttl=60))
    assert claims["exp"] - claims["iat"] == 60
    with pytest.raises(ValueError):
        ring.issue("default", "a", ttl=10 * 3600)


def test_tampered_claims_are_401(tmp_path):
    ring = KeyRing(str(tmp_path / "k"))
    token = ring.issue("default", "vol-a")
    h, _c, s = token.split(".")
    claims = _parts(token)[1]
    claims["name"] = "vol-b"  # reuse A's signature for B
    forged = ".".join([h, _enc(claims), s])
    with pytest.raises(TokenError) as e:
        ring.verify(forged)
    assert e.value.status == 401 and e.value.reason == "TokenInvalidSignature"


def test_unsigned_token_is_401(tmp_path):
    ring = KeyRing(str(tmp_path / "k"))
    _, claims, _ = _parts(ring.issue("default", "a"))
    for header in ({"alg": "none", "typ": "JWT"}, {"alg": "HS256", "typ": "JWT"}):
        with pytest.raises(TokenError) as e:
            ring.verify(".".join([_enc(header), _enc(claims), ""]))
        assert e.value.status == 401 and e.value.reason == "TokenUnsigned"


def test_token_of_another_key_is_401(tmp_path):
    token = KeyRing(str(tmp_path / "mine")).issue("default", "a")
    with pytest.raises(TokenError) as e:
        KeyRing(str(tmp_path / "theirs")).verify(token)
    assert e.value.status == 401 and e.value.reason == "TokenUnknownKey"


def test_garbage_is_401(tmp_path):
    ring = KeyRing(str(tmp_path / "k"))
    ring.ensure()
    for bad in ("", "abc", "a.b.c", "....."):
        with pytest.raises(TokenError) as e:
            ring.verify(bad)
        assert e.value.status == 401


def test_rotation_keeps_old_tokens_valid_until_they_expire(tmp_path):
    ring = KeyRing(str(tmp_path / "k"), max_ttl=300)
    old = ring.issue("default", "a")
    kid_old = _parts(old)[0]["kid"]
    kid_new = ring.rotate()
    assert kid_new != kid_old
    new = ring.issue("default", "a")
    assert _parts(new)[0]["kid"] == kid_new
    fresh = KeyRing(str(tmp_path / "k"), max_ttl=300)  # e.g. the proxy, after the rotation
    assert fresh.verify(old).name == "a"
    assert fresh.verify(new).name == "a"
    assert not (tmp_path / "k" / f"{kid_old}.key").exists()  # the retired key signs nothing any more
    # Once every token of the old key has expired, the key no longer verifies and is pruned.
    (tmp_path / "k" / f"{kid_old}.retired").write_text(f"{time.time() - 1}\n")
    with pytest.raises(TokenError):
        KeyRing(str(tmp_path / "k")).verify(old)
    ring.rotate()
    assert not (tmp_path / "k" / f"{kid_old}.pub").exists()


def test_wrong_operation_is_400(tmp_path):
    ring = KeyRing(str(tmp_path / "k"))
    # sign a token with another operation using the ring's own key
    kid = ring.ensure()
    header = {"alg": "EdDSA", "typ": "JWT", "kid": kid}
    now = int(time.time())
    claims = {"iss": "cdi-apiserver", "iat": now, "nbf": now, "exp": now + 60, "operation": "Clone",
              "name": "a", "namespace": "default", "resource": api.PVC_RESOURCE}
    signing = _enc(header) + "." + _enc(claims)
    sig = ring._private(kid).sign(signing.encode())
    token = signing + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    with pytest.raises(TokenError) as e:
        ring.verify(token)
    assert e.value.status == 400 and e.value.reason == "TokenWrongOperation"


def test_bearer_header():
    assert bearer("Bearer abc.def.ghi") == "abc.def.ghi"
    for bad in (None, "", "Basic xyz", "Bearer "):
        with pytest.raises(TokenError) as e:
            bearer(bad)
        assert e.value.status == 400


def test_upload_token_request_round_trip():
    req = api.UploadTokenRequest.from_dict({
        "apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"name": "t", "namespace": "ns"}, "spec": {"pvcName": "disk"}})
    assert (req.namespace, req.pvc_name) == ("ns", "disk")
    d = api.UploadTokenRequest("ns", "disk", "t", "tok").to_dict()
    assert d["status"]["token"] == "tok" and d["spec"]["pvcName"] == "disk"
    with pytest.raises(ValueError):
        api.UploadTokenRequest.from_dict({"apiVersion": "upload.cdi.kubevirt.io/v1beta1",
                                          "kind": "UploadTokenRequest", "spec": {"pvcName": "Bad_Name"}})


def test_upload_config():
    c = api.UploadConfig.from_mapping({"proxyPort": 0, "tokenTTLSeconds": 60})
    assert c.proxy_port == 0 and c.token_ttl == 60
    with pytest.raises(ValueError, match="tokenTTLSeconds"):
        api.UploadConfig.from_mapping({"tokenTTLSeconds": "x"})
    with pytest.raises(ValueError, match="go together"):
        api.UploadConfig.from_mapping({"proxyCertFile": "/x"})


def test_absurdly_nested_claims_are_a_malformed_token(tmp_path):
    ring = KeyRing(str(tmp_path / "k"))
    deep = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).rstrip(b"=").decode()
    with pytest.raises(TokenError) as e:
        ring.verify(f"{_enc({'alg': 'EdDSA'})}.{deep}.c2ln")
    assert e.value.status == 401 and e.value.reason == "TokenMalformed"
