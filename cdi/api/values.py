"""Value types that cross every layer: a checksum and a source URL.

Each is parsed once, by one rule, wherever it enters (a manifest, a request header, a worker's
environment), so that admission, the worker and the upload server can never disagree on what
is valid. No I/O here.

``SourceURL`` is also the one place that decides what of a URL may be shown: userinfo and the
value of *every* query parameter are removed (a presigned URL carries its credential in the
query, under names no list can foresee). Every log line, event, annotation and message that
names a source URL shows ``SourceURL.redacted``.
"""

from __future__ import annotations

import hashlib
import string
import urllib.parse
from dataclasses import dataclass

from cdi.common.errors import ValidationError

REDACTED = "<redacted>"

# Algorithm -> hex digits. CDI's importer accepts these four; so do the admission webhook, the
# worker and the upload server (one rule, here).
CHECKSUM_HEX_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_HEX = frozenset(string.hexdigits)
_ALGOS = ", ".join(f"{a}:" for a in CHECKSUM_HEX_LENGTHS)


@dataclass(frozen=True)
class Checksum:
    """An expected digest: ``algorithm`` (one of :data:`CHECKSUM_HEX_LENGTHS`) and lower-case hex."""

    algorithm: str
    digest: str

    @classmethod
    def parse(cls, value: str, where: str = "checksum") -> Checksum:
        """``"sha256:<hex>"`` -> Checksum; :class:`ValidationError` naming ``where`` and the fix."""
        algo, sep, digest = value.strip().partition(":")
        algo, digest = algo.strip().lower(), digest.strip().lower()
        if not sep:
            raise ValidationError(
                where, f"{_show(value)} has no algorithm; write it as algo:hex, e.g. sha256:<64 hex digits> ({_ALGOS})"
            )
        want = CHECKSUM_HEX_LENGTHS.get(algo)
        if want is None:
            raise ValidationError(
                where, f"algorithm {_show(algo)} is not supported; write one of {_ALGOS} followed by the hex digest"
            )
        if not digest or not set(digest) <= _HEX:
            raise ValidationError(where, f"the digest after '{algo}:' is not hexadecimal; write {algo}:<{want} hex digits>")
        if len(digest) != want:
            raise ValidationError(
                where,
                f"a {algo} digest has {want} hex digits, this one has {len(digest)}; "
                "copy the whole digest (e.g. from sha256sum)",
            )
        return cls(algo, digest)

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    def matches(self, hexdigest: str) -> bool:
        return hexdigest.lower() == self.digest

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.digest}"


def _show(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


@dataclass(frozen=True)
class SourceURL:
    """A URL a source reads from; ``str()`` and :attr:`redacted` never show a credential."""

    url: str

    @property
    def redacted(self) -> str:
        return redact_url(self.url)

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"SourceURL({self.redacted!r})"


def redact_url(url: str) -> str:
    """``url`` without userinfo and with every query parameter's value replaced by <redacted>.

    Parameter names stay (they tell a user which URL this was); the path and host stay. A URL
    that does not parse is shown as <redacted> whole.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        names = [p.split("=", 1)[0] for p in query.split("&") if p]
        query = "&".join(f"{n}={REDACTED}" for n in names)
    fragment = REDACTED if parts.fragment else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
