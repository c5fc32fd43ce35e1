"""The exception tree shared by every package of the project.

Errors are sorted by what happens next, not by where they came from::

    CDIError                      root of everything we raise on purpose
    +-- TemporaryError            retry with backoff (connection reset, 5xx, timeout, worker killed)
    +-- PermanentError            fail now with a reason a user can act on
        +-- ValidationError       a manifest is wrong (field path + what to write instead)
        +-- NotFoundError         an object the request names does not exist
        +-- ConflictError         the object exists / changed under us
        +-- NotSupportedError     accepted by the schema, not built yet

Each error carries a CamelCase ``reason`` (the condition/event reason a user sees) and a message.
Messages never contain secrets: callers pass redacted text only.
"""

from __future__ import annotations


class CDIError(Exception):
    """Root of the project's exceptions."""

    reason: str = "Error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return self.message


class TemporaryError(CDIError):
    """Retrying the same operation later may succeed."""

    reason = "TransientError"


class PermanentError(CDIError):
    """Retrying will not help: the input or the environment must change first."""

    reason = "PermanentError"


class ValidationError(PermanentError):
    """A manifest failed validation; ``field`` is the JSON path of the offending field."""

    reason = "Invalid"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.detail = message


class ValidationErrors(PermanentError):
    """Several validation errors at once (all are reported, not only the first)."""

    reason = "Invalid"

    def __init__(self, errors: list[ValidationError]) -> None:
        self.errors = errors
        super().__init__("; ".join(e.message for e in errors))


class NotFoundError(PermanentError):
    reason = "NotFound"


class ConflictError(PermanentError):
    reason = "Conflict"


class NotSupportedError(PermanentError):
    reason = "NotSupported"
