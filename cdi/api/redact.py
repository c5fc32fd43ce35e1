"""Credentials out of URLs before a URL is shown anywhere (logs, messages, events, annotations).

One function for the controller (the claim's endpoint annotation) and the workers (their logs
and results): userinfo goes, and so do the values of query parameters that carry a credential
in presigned URLs (S3's X-Amz-Signature/Credential/Security-Token, Azure's sig, GCS's
X-Goog-Signature, generic token/key/password).
"""

from __future__ import annotations

import re
import urllib.parse

REDACTED = "<redacted>"

# Query parameters that carry a credential in presigned URLs (S3 X-Amz-Signature, Azure sig,
# GCS X-Goog-Signature, generic token/key/password).
_SECRET_QUERY = re.compile(r"(signature|sig|token|key|credential|password|secret|auth)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL without userinfo and without the values of credential-like query parameters."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{urllib.parse.quote(k)}={REDACTED if _SECRET_QUERY.search(k) else urllib.parse.quote(v)}"
            for k, v in pairs
        )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
