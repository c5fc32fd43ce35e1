"""Kept for importers' use: the one redaction rule lives in :mod:`cdi.api.values`."""

from cdi.api.values import REDACTED, redact_url

__all__ = ["REDACTED", "redact_url"]
