"""``cdi logs dv NAME [-f]``: the importer worker's log (``status.workerLog`` of the DataVolume)."""

from __future__ import annotations

import os

from cdi.cli import kinds
from cdi.cli.context import CLIError, Context
from cdi.cli.get import not_found, resolve_kind
from cdi.cli.printers import dig

POLL_INTERVAL = 0.2
TERMINAL = ("Succeeded", "Failed")


def _parse(args: list[str]) -> tuple[kinds.KindInfo, str]:
    if len(args) == 1 and "/" in args[0]:
        k, _, n = args[0].partition("/")
        return resolve_kind(k), n
    if len(args) == 1:
        return kinds.DATAVOLUME, args[0]
    if len(args) == 2:
        return resolve_kind(args[0]), args[1]
    raise CLIError("error: expected `cdi logs dv NAME`")


def run(ctx: Context, args: list[str], follow: bool) -> int:
    info, name = _parse(args)
    if info.kind != "DataVolume":
        raise CLIError(
            f"error: logs are kept for DataVolumes only, not for {info.plural}; use `cdi logs dv NAME`"
        )
    o = ctx.store.get(info.kind, ctx.namespace, name)
    if o is None:
        ctx.eprint(not_found(info, name))
        return 1
    path = dig(o, "status", "workerLog")
    if not path:
        phase = dig(o, "status", "phase") or "not started"
        ctx.eprint(
            f"error: datavolume {name} has no worker log yet (phase: {phase}); the log appears once the "
            "controller starts its importer (is it running? see `cdi controller status`)"
        )
        return 1
    if not os.path.exists(path):
        ctx.eprint(f"error: the worker log of datavolume {name} ({path}) no longer exists")
        return 1
    with open(path, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                ctx.out.write(chunk.decode("utf-8", errors="replace"))
                ctx.out.flush()
                continue
            if not follow:
                return 0
            o = ctx.store.get(info.kind, ctx.namespace, name)
            if o is None or dig(o, "status", "phase") in TERMINAL:
                rest = f.read()
                if rest:
                    ctx.out.write(rest.decode("utf-8", errors="replace"))
                    ctx.out.flush()
                return 0
            if ctx.stop.wait(POLL_INTERVAL):
                return 0
