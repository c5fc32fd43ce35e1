"""Upload tokens: Ed25519-signed JWTs with CDI's claims, and the key ring that signs them.

Keys live in ``<data dir>/upload/keys/`` (directory 0700)::

    <kid>.key       private key, PKCS#8 PEM, mode 0600
    <kid>.pub       public key, PEM
    <kid>.retired   (after a rotation) unix time after which the old key may be removed
    current         the kid that signs new tokens

``KeyRing.ensure()`` generates the first key (under an flock, so the CLI and the proxy can race);
``KeyRing.rotate()`` makes a new current key and keeps the previous public keys until every
token they signed has expired (``max_ttl`` + leeway), so rotation needs no downtime: the
verifier reloads the directory when it meets an unknown ``kid``.

Who signs: in the embedded backend the ``cdi`` command plays CDI's API server and issues an
UploadTokenRequest by signing with the current key (``issue``); the proxy only verifies.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cdi.api import upload as api

ALG = "EdDSA"


class TokenError(Exception):
    """A token was refused; ``status`` is the HTTP status to answer (400 or 401)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Claims:
    namespace: str
    name: str
    issued_at: float
    expires_at: float
    kid: str
    params: dict[str, Any]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    pad = "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(text + pad)


class KeyRing:
    def __init__(self, directory: str, max_ttl: float = api.MAX_TOKEN_TTL) -> None:
        self.dir = directory
        self.max_ttl = max_ttl
        self._public: dict[str, Ed25519PublicKey] = {}

    @classmethod
    def for_data_dir(cls, data_dir: str) -> KeyRing:
        return cls(os.path.join(api.upload_dir(data_dir), "keys"))

    # -- key management ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Any:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _current_kid(self) -> str | None:
        try:
            with open(os.path.join(self.dir, "current")) as f:
                kid = f.read().strip()
        except OSError:
            return None
        return kid if kid and os.path.exists(os.path.join(self.dir, f"{kid}.key")) else None

    def _generate(self) -> str:
        kid = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)
        key = Ed25519PrivateKey.generate()
        priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        path = os.path.join(self.dir, f"{kid}.key")
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # exactly: a leftover .tmp keeps its old mode
        with os.fdopen(fd, "wb") as f:
            f.write(priv)
        os.replace(path + ".tmp", path)
        with open(os.path.join(self.dir, f"{kid}.pub.tmp"), "wb") as f:
            f.write(pub)
        os.replace(os.path.join(self.dir, f"{kid}.pub.tmp"), os.path.join(self.dir, f"{kid}.pub"))
        with open(os.path.join(self.dir, "current.tmp"), "w") as f:
            f.write(kid + "\n")
        os.replace(os.path.join(self.dir, "current.tmp"), os.path.join(self.dir, "current"))
        return kid

    def ensure(self) -> str:
        """The current kid, generating the first key if there is none."""
        kid = self._current_kid()
        if kid:
            return kid
        with self._locked():
            return self._current_kid() or self._generate()

    def rotate(self) -> str:
        """Make a new signing key; older public keys stay valid until their tokens expired."""
        with self._locked():
            old = self._current_kid()
            kid = self._generate()
            if old:
                with open(os.path.join(self.dir, f"{old}.retired"), "w") as f:
                    f.write(f"{time.time() + self.max_ttl + api.TOKEN_LEEWAY:.0f}\n")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.dir, f"{old}.key"))  # it signs nothing any more
            self._prune()
            return kid

    def _prune(self) -> None:
        now = time.time()
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for fname in names:
            if not fname.endswith(".retired"):
                continue
            kid = fname[: -len(".retired")]
            try:
                with open(os.path.join(self.dir, fname)) as f:
                    not_after = float(f.read().strip())
            except (OSError, ValueError):
                continue
            if now > not_after:
                for ext in (".pub", ".key", ".retired"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.dir, kid + ext))
                self._public.pop(kid, None)

    def _private(self, kid: str) -> Ed25519PrivateKey:
        with open(os.path.join(self.dir, f"{kid}.key"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return key

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        if kid in self._public:
            return self._public[kid]
        if not kid or "/" in kid or kid.startswith("."):
            return None
        path = os.path.join(self.dir, f"{kid}.pub")
        try:
            with open(path, "rb") as f:
                key = serialization.load_pem_public_key(f.read())
        except (OSError, ValueError):
            return None
        if not isinstance(key, Ed25519PublicKey):
            return None
        # A retired key past its time no longer verifies, even if nobody pruned it yet.
        try:
            with open(os.path.join(self.dir, f"{kid}.retired")) as f:
                if time.time() > float(f.read().strip()):
                    return None
        except (OSError, ValueError):
            pass
        self._public[kid] = key
        return key

    # -- tokens ------------------------------------------------------------------------------

    def issue(self, namespace: str, name: str, ttl: float = api.DEFAULT_TOKEN_TTL,
              params: dict[str, Any] | None = None, now: float | None = None) -> str:
        if ttl <= 0 or ttl > self.max_ttl:
            raise ValueError(f"token lifetime must be in (0, {self.max_ttl:.0f}] seconds, got {ttl}")
        kid = self.ensure()
        now = time.time() if now is None else now
        header = {"alg": ALG, "typ": "JWT", "kid": kid}
        claims: dict[str, Any] = {
            "iss": api.ISSUER,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + ttl),
            "operation": api.OPERATION_UPLOAD,
            "name": name,
            "namespace": namespace,
            "resource": dict(api.PVC_RESOURCE),
        }
        if params:
            claims["params"] = params
        signing_input = _b64(json.dumps(header, separators=(",", ":")).encode()) + "." + _b64(
            json.dumps(claims, separators=(",", ":")).encode())
        sig = self._private(kid).sign(signing_input.encode())
        return signing_input + "." + _b64(sig)

    def verify(self, token: str, now: float | None = None) -> Claims:
        """:raises TokenError: 401 for bad signature, expired, unsigned; 400 for wrong claims."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError(401, "TokenMalformed", "the upload token is not a JWT (three dot-separated parts)")
        try:
            header = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
            sig = _unb64(parts[2])
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly nested JSON
            raise TokenError(401, "TokenMalformed", "the upload token is not valid base64url JSON") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise TokenError(401, "TokenMalformed", "the upload token header or claims are not JSON objects")
        if header.get("alg") != ALG or not sig:
            raise TokenError(401, "TokenUnsigned",
                             f"the upload token is not signed with {ALG} (alg {header.get('alg')!r}); "
                             "get a new one with an UploadTokenRequest")
        kid = str(header.get("kid") or "")
        key = self.public_key(kid)
        if key is None:
            self._prune()
            raise TokenError(401, "TokenUnknownKey",
                             "the upload token was signed by a key this proxy does not know (or one retired "
                             "since); get a new token")
        try:
            key.verify(sig, (parts[0] + "." + parts[1]).encode())
        except InvalidSignature:
            raise TokenError(401, "TokenInvalidSignature",
                             "the upload token's signature does not match its content (tampered?)") from None
        now = time.time() if now is None else now
        if claims.get("iss") != api.ISSUER:
            raise TokenError(401, "TokenInvalidIssuer", f"the upload token's issuer is {claims.get('iss')!r}")
        try:
            exp, nbf = float(claims["exp"]), float(claims.get("nbf", claims.get("iat", 0)) or 0)
        except (KeyError, TypeError, ValueError):
            raise TokenError(401, "TokenMalformed", "the upload token has no valid exp/nbf claims") from None
        if now > exp + api.TOKEN_LEEWAY:
            raise TokenError(401, "TokenExpired",
                             f"the upload token expired {now - exp:.0f}s ago; get a new one (they last "
                             f"{api.DEFAULT_TOKEN_TTL:.0f}s by default)")
        if now + api.TOKEN_LEEWAY < nbf:
            raise TokenError(401, "TokenNotYetValid", "the upload token is not valid yet (clock skew?)")
        if claims.get("operation") != api.OPERATION_UPLOAD or claims.get("resource") != api.PVC_RESOURCE:
            raise TokenError(400, "TokenWrongOperation",
                             "the token is not an upload token for a persistentvolumeclaim")
        ns, name = claims.get("namespace"), claims.get("name")
        if not isinstance(ns, str) or not isinstance(name, str) or not api.is_name(ns) or not api.is_name(name):
            raise TokenError(400, "TokenMalformed", "the upload token does not name a namespace and volume")
        raw_params = claims.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        return Claims(ns, name, float(claims.get("iat", 0)), exp, kid, params)


def bearer(header_value: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; TokenError(400) otherwise (as CDI)."""
    if not header_value:
        raise TokenError(400, "MissingToken", "no Authorization header; send Authorization: Bearer <upload token>")
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError(400, "MalformedAuthorization", "the Authorization header must be 'Bearer <upload token>'")
    return token.strip()


def main(argv: list[str] | None = None) -> int:
    """``python -m uploadproxy.tokens rotate|issue --data-dir D``: key rotation and manual tokens."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m uploadproxy.tokens")
    p.add_argument("action", choices=["rotate", "issue", "current"])
    p.add_argument("--data-dir", required=True)
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--name", help="volume (PVC) name, for issue")
    p.add_argument("--ttl", type=float, default=api.DEFAULT_TOKEN_TTL)
    a = p.parse_args(argv)
    ring = KeyRing.for_data_dir(os.path.abspath(a.data_dir))
    if a.action == "rotate":
        print(f"new signing key {ring.rotate()}; tokens of the previous key stay valid until they expire")
    elif a.action == "current":
        print(ring.ensure())
    else:
        if not a.name:
            print("error: issue needs --name", file=sys.stderr)
            return 2
        print(ring.issue(a.namespace, a.name, a.ttl))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
