"""``cdi wait KIND NAME --for=condition=Ready|jsonpath={...}=V|delete|create [--timeout=30s]``.

kubectl's semantics, plus one thing kubectl cannot do: waiting for a DataVolume to become Ready
(or Succeeded) stops at once when it fails, with the reason and message of the failure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cdi.cli import jsonpath, kinds
from cdi.cli.context import CLIError, Context
from cdi.cli.get import not_found, resolve_kind
from cdi.cli.printers import dig

Obj = dict[str, Any]

POLL_INTERVAL = 0.2


@dataclass(frozen=True)
class Condition:
    mode: str  # condition, jsonpath, delete, create
    name: str = ""  # condition type, or the jsonpath expression
    value: str | None = None  # wanted value (condition: "True" unless given)

    def met(self, o: Obj | None) -> bool:
        if self.mode == "delete":
            return o is None
        if o is None:
            return False
        if self.mode == "create":
            return True
        if self.mode == "condition":
            want = (self.value or "True").lower()
            for c in dig(o, "status", "conditions") or []:
                if isinstance(c, dict) and str(c.get("type", "")).lower() == self.name.lower():
                    return str(c.get("status", "")).lower() == want
            return False
        values = jsonpath.evaluate(o, self.name)
        if self.value is None:
            return any(v not in (None, "", [], {}) for v in values)
        return any(jsonpath.scalar(v) == self.value for v in values)

    def wants_success(self) -> bool:
        """Ready=True or .status.phase=Succeeded: a Failed DataVolume can never meet it."""
        if self.mode == "condition":
            return self.name.lower() == "ready" and (self.value or "True").lower() == "true"
        if self.mode == "jsonpath":
            return self.name.strip().lstrip("$") == ".status.phase" and self.value == "Succeeded"
        return False


def parse_for(text: str) -> Condition:
    t = text.strip()
    if t == "delete":
        return Condition("delete")
    if t == "create":
        return Condition("create")
    if t.startswith("condition="):
        rest = t[len("condition=") :]
        name, sep, value = rest.partition("=")
        if not name:
            raise CLIError("error: --for=condition= needs a condition name, e.g. --for=condition=Ready")
        return Condition("condition", name, value if sep else None)
    if t.startswith("jsonpath="):
        try:
            expr, want = jsonpath.split_condition(t[len("jsonpath=") :])
            jsonpath.evaluate({}, expr)  # syntax check now, not after the timeout
        except jsonpath.JSONPathError as e:
            raise CLIError(f"error: {e}") from e
        return Condition("jsonpath", expr, want)
    raise CLIError(
        f"error: unrecognized condition: {text!r}; use --for=condition=Ready, "
        "--for=jsonpath='{.status.phase}'=Succeeded, --for=delete or --for=create"
    )


def failure_of(o: Obj) -> str | None:
    """``reason: message`` when ``o`` is a failed DataVolume."""
    if o.get("kind") != "DataVolume" or dig(o, "status", "phase") != "Failed":
        return None
    conds = {c.get("type"): c for c in dig(o, "status", "conditions") or [] if isinstance(c, dict)}
    c = conds.get("Running") or conds.get("Ready") or {}
    reason, message = c.get("reason") or "Failed", c.get("message") or "no message"
    return f"{reason}: {message}"


def wait_for(ctx: Context, info: kinds.KindInfo, name: str, cond: Condition, deadline: float) -> int:
    store = ctx.store
    o = store.get(info.kind, ctx.namespace, name)
    if o is None and cond.mode not in ("delete", "create"):
        ctx.eprint(not_found(info, name))
        return 1
    while True:
        if cond.met(o):
            ctx.print(f"{info.resource}/{name} condition met")
            return 0
        if o is not None and cond.wants_success():
            why = failure_of(o)
            if why is not None:
                ctx.eprint(f"error: {info.kind.lower()} {name} failed: {why}")
                return 1
        if time.monotonic() >= deadline:
            ctx.eprint(f"error: timed out waiting for the condition on {info.plural}/{name}")
            return 1
        if ctx.stop.wait(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic()))):
            return 130
        o = store.get(info.kind, ctx.namespace, name)


def run(ctx: Context, args: list[str], for_: str | None, timeout: str) -> int:
    if not for_:
        raise CLIError("error: --for must be set, e.g. --for=condition=Ready")
    cond = parse_for(for_)
    try:
        seconds = jsonpath.parse_duration(timeout)
    except ValueError as e:
        raise CLIError(f"error: {e}") from e
    if seconds < 0:
        seconds = 7 * 24 * 3600.0  # kubectl: a negative timeout means a week
    if not args:
        raise CLIError("error: resource(s) were provided, but no name was specified; e.g. cdi wait dv NAME")
    pairs: list[tuple[kinds.KindInfo, str]] = []
    if "/" in args[0]:
        for a in args:
            k, _, n = a.partition("/")
            pairs.append((resolve_kind(k), n))
    else:
        info = resolve_kind(args[0])
        if len(args) < 2:
            raise CLIError(
                "error: resource(s) were provided, but no name was specified; e.g. cdi wait dv NAME"
            )
        pairs = [(info, n) for n in args[1:]]
    deadline = time.monotonic() + seconds
    rc = 0
    for info, name in pairs:
        rc = max(rc, wait_for(ctx, info, name, cond, deadline))
    return rc
