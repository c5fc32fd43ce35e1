"""Keeping secrets out of logs, messages and termination results.

The importer gets credentials (``IMPORTER_SECRET_KEY``, secret header files, userinfo in the URL,
signatures in presigned URLs). Everything it prints goes through these helpers first.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from typing import Any

from cdi.api.contract import ImportSettings
from cdi.api.redact import REDACTED, redact_url

__all__ = ["REDACTED", "redact_url", "redacted_settings", "scrub", "settings_secrets"]

def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of every (non-trivial) secret replaced."""
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def settings_secrets(settings: ImportSettings) -> list[str]:
    """The secret strings an importer knows of, for ``scrub``."""
    found: list[str] = []
    if settings.secret_key:
        found.append(settings.secret_key)
    for header in settings.extra_headers:
        found.append(header.split(":", 1)[1].strip() if ":" in header else header)
    try:
        parts = urllib.parse.urlsplit(settings.endpoint)
        if parts.password:
            found.append(urllib.parse.unquote(parts.password))
            found.append(parts.password)
    except ValueError:
        pass
    return found


def redacted_settings(settings: ImportSettings) -> dict[str, Any]:
    """``settings.redacted()`` plus the endpoint's userinfo and the access key id."""
    d = settings.redacted()
    d["endpoint"] = redact_url(settings.endpoint) if settings.endpoint else ""
    if d.get("access_key_id") is not None:
        d["access_key_id"] = REDACTED
    return d
