"""Condition types and reasons of a DataVolume, and the one function that sets them.

``lastTransitionTime`` changes only when a condition's status flips; a new reason or message
with the same status only bumps ``lastHeartbeatTime``. Ready and Running are never both True.
"""

from __future__ import annotations

from typing import Any

BOUND = "Bound"
RUNNING = "Running"
READY = "Ready"

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"

# Reasons (CDI's strings where CDI has one).
REASON_BOUND = "Bound"
REASON_PENDING = "Pending"
REASON_CLAIM_LOST = "ClaimLost"
REASON_NOT_FOUND = "NotFound"
REASON_POD_RUNNING = "Pod is running"  # CDI's literal reason for Running=True
REASON_TRANSFER_RUNNING = "TransferRunning"
REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"
REASON_RETRY_LIMIT = "RetryLimitExceeded"
REASON_NOT_SUPPORTED = "NotSupported"
REASON_STORAGE_CLASS = "StorageClassNotFound"
REASON_BACKOFF = "BackOff"
REASON_SCHEDULED = "Scheduled"

Condition = dict[str, Any]


def find(conditions: list[Condition], type_: str) -> Condition | None:
    for c in conditions:
        if c.get("type") == type_:
            return c
    return None


def set_condition(
    conditions: list[Condition], type_: str, status: str, reason: str, message: str, now: str
) -> list[Condition]:
    """Return a new list with ``type_`` set; keeps the order types first appeared in."""
    out: list[Condition] = []
    found = False
    for c in conditions:
        if c.get("type") != type_:
            out.append(dict(c))
            continue
        found = True
        new = dict(c)
        if c.get("status") != status:
            new["lastTransitionTime"] = now
        if (c.get("status"), c.get("reason"), c.get("message")) != (status, reason, message):
            new["lastHeartbeatTime"] = now
        new.update(status=status, reason=reason, message=message)
        out.append(new)
    if not found:
        out.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }
        )
    return out
