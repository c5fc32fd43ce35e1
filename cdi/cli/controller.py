"""``cdi serve``, ``cdi controller start|status|stop``: the controller daemon of the embedded backend."""

from __future__ import annotations

import json

from cdi.cli.context import Context, daemon


def serve(ctx: Context) -> int:
    _ = ctx.store  # checks the data dir (refuses one that is not private) before the controller runs
    rc = daemon().serve(ctx.data_dir)
    return int(rc or 0)


def start(ctx: Context) -> int:
    _ = ctx.store  # checks the data dir first, as serve does
    d = daemon()
    d.ensure_running(ctx.data_dir)
    st = d.status(ctx.data_dir)
    if st.get("running"):
        ctx.print(f"controller running (pid {st.get('pid')}, data dir {ctx.data_dir})")
        return 0
    ctx.eprint(f"error: the controller did not start; run `cdi serve` to see why (data dir {ctx.data_dir})")
    return 1


def status(ctx: Context, output: str) -> int:
    st = dict(daemon().status(ctx.data_dir))
    if output == "json":
        ctx.print(json.dumps({"dataDir": ctx.data_dir, **st}, indent=4, default=str))
        return 0
    if st.get("running"):
        ctx.print(f"controller: running (pid {st.get('pid')})")
    else:
        ctx.print("controller: not running (it starts on the next `cdi apply`, or run `cdi serve`)")
    ctx.print(f"data dir:   {ctx.data_dir}")
    return 0


def stop(ctx: Context) -> int:
    d = daemon()
    if d.stop(ctx.data_dir):  # first: a running controller would start the proxy again
        ctx.print("controller stopped")
    else:
        ctx.print("controller was not running")
    if d.stop_upload_proxy(ctx.data_dir):
        ctx.print("upload proxy stopped")
    return 0
