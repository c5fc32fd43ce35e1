"""``cdi delete KIND NAME... | -f FILE [--wait=true] [--timeout=60s] [--all]``."""

from __future__ import annotations

import time

from cdi.cli import kinds, manifests
from cdi.cli.context import CLIError, Context
from cdi.cli.get import not_found, resolve_kind
from cdi.cli.jsonpath import parse_duration
from cdi.common.errors import NotFoundError

POLL_INTERVAL = 0.2
DEFAULT_TIMEOUT = 60.0


def _targets(
    ctx: Context, args: list[str], files: list[str], all_: bool
) -> tuple[list[tuple[kinds.KindInfo, str, str]], bool]:
    """(kind, namespace, name) to delete, and whether reading the files failed."""
    out: list[tuple[kinds.KindInfo, str, str]] = []
    failed = False
    if files:
        if args:
            raise CLIError("error: names cannot be provided when a file is given with -f")
        for doc in manifests.load(files):
            if doc.error or doc.obj is None:
                ctx.eprint(doc.error or "error: empty document")
                failed = True
                continue
            info = kinds.by_kind(str(doc.obj.get("kind", "")))
            md = doc.obj.get("metadata") or {}
            if info is None or info.lister is not None or not md.get("name"):
                ctx.eprint(
                    f"error: cannot delete a {doc.obj.get('kind')} named {md.get('name')!r} "
                    f'from "{doc.source}": unknown kind or no name'
                )
                failed = True
                continue
            out.append((info, md.get("namespace") or ctx.namespace, md["name"]))
        return out, failed
    if not args:
        raise CLIError('error: you must specify the type of resource to delete, e.g. "cdi delete dv NAME"')
    if "/" in args[0]:
        for a in args:
            k, _, n = a.partition("/")
            out.append((resolve_kind(k), ctx.namespace, n))
    else:
        info = resolve_kind(args[0])
        names = args[1:]
        if all_:
            names = [o["metadata"]["name"] for o in ctx.store.list(info.kind, ctx.namespace)]
            if not names:
                ctx.eprint(f"No resources found in {ctx.namespace} namespace.")
        elif not names:
            raise CLIError(
                "error: resource(s) were provided, but no name was specified; give a NAME or --all"
            )
        out = [(info, ctx.namespace, n) for n in names]
    if any(info.lister is not None for info, _, _ in out):
        raise CLIError("error: events cannot be deleted; they go away with their object")
    return out, failed


def run(ctx: Context, args: list[str], files: list[str], wait: bool, timeout: str | None, all_: bool) -> int:
    targets, failed = _targets(ctx, args, files, all_)
    pending: list[tuple[kinds.KindInfo, str, str]] = []
    for info, ns, name in targets:
        try:
            left = ctx.store.delete(info.kind, ns, name)
        except NotFoundError:
            ctx.eprint(not_found(info, name))
            failed = True
            continue
        ctx.print(f'{info.resource} "{name}" deleted')
        if left is not None:
            pending.append((info, ns, name))
    if pending and wait:
        ctx.ensure_controller()
        try:
            seconds = parse_duration(timeout) if timeout else DEFAULT_TIMEOUT
        except ValueError as e:
            raise CLIError(f"error: {e}") from e
        if seconds <= 0:
            seconds = DEFAULT_TIMEOUT
        deadline = time.monotonic() + seconds
        for info, ns, name in pending:
            while ctx.store.get(info.kind, ns, name) is not None:
                if time.monotonic() >= deadline:
                    ctx.eprint(f"error: timed out waiting for the condition on {info.plural}/{name}")
                    failed = True
                    break
                if ctx.stop.wait(POLL_INTERVAL):
                    return 130
    return 1 if failed else 0
