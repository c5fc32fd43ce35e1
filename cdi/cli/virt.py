"""``cdi virt``: virtctl's VM commands (start, stop, restart, pause, unpause, console, vnc-info).

Like virtctl they change the VirtualMachine, never the domain directly: ``start``/``stop`` flip
``spec.running`` or the run strategy (Halted <-> Always), or queue a state change request for
``runStrategy: Manual``; ``restart`` queues Stop then Start; ``pause``/``unpause`` set a request
on the VMI. The controller carries them out and reports the VM's printableStatus.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from cdi.cli.context import CLIError, Context
from cdi.common.errors import ConflictError

VM = "VirtualMachine"
VMI = "VirtualMachineInstance"
PAUSED = "pycdi.kubevirt.io/paused"
FINAL = ("Succeeded", "Failed")


def add_parser(sub: Any, g: argparse.ArgumentParser) -> None:
    p = sub.add_parser("virt", parents=[g], help="Start, stop, pause VirtualMachines and read their console (like virtctl)")
    vs = p.add_subparsers(dest="virt_cmd", metavar="ACTION")
    for action, text in (("start", "Start a VirtualMachine"), ("stop", "Stop a VirtualMachine (ACPI, then force)"),
                         ("restart", "Restart a VirtualMachine"), ("vnc-info", "Show how to reach a VM's display")):
        q = vs.add_parser(action, parents=[g], help=text)
        q.add_argument("name", metavar="NAME")
    for action, text in (("pause", "Pause a running VirtualMachine (vm NAME or vmi NAME)"),
                         ("unpause", "Unpause a paused VirtualMachine")):
        q = vs.add_parser(action, parents=[g], help=text)
        q.add_argument("args", nargs="+", metavar="[vm|vmi] NAME")
    q = vs.add_parser("console", parents=[g], help="Print a VM's serial console and follow it")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--timeout", type=float, default=None, help="stop following after this many seconds")
    q.add_argument("--no-follow", action="store_true", help="print what there is and return")


def run(ctx: Context, ns: argparse.Namespace) -> int:
    cmd = ns.virt_cmd
    if cmd == "start":
        return start(ctx, ns.name)
    if cmd == "stop":
        return stop(ctx, ns.name)
    if cmd == "restart":
        return restart(ctx, ns.name)
    if cmd in ("pause", "unpause"):
        args = [a for a in ns.args if a not in ("vm", "vmi")]
        if len(args) != 1:
            raise CLIError(f"error: expected `cdi virt {cmd} vm NAME`")
        return pause(ctx, args[0], cmd == "pause")
    if cmd == "console":
        return console(ctx, ns.name, ns.timeout, not ns.no_follow)
    if cmd == "vnc-info":
        return vnc_info(ctx, ns.name)
    raise CLIError("error: cdi virt needs an action: start, stop, restart, pause, unpause, console, vnc-info")


def _vm(ctx: Context, name: str) -> dict[str, Any]:
    vm = ctx.store.get(VM, ctx.namespace, name)
    if vm is None:
        raise CLIError(f'Error from server (NotFound): virtualmachines.kubevirt.io "{name}" not found')
    return vm


def _vmi_active(ctx: Context, name: str) -> bool:
    vmi = ctx.store.get(VMI, ctx.namespace, name)
    return vmi is not None and ((vmi.get("status") or {}).get("phase") not in FINAL)


def _change(ctx: Context, name: str, mutate: Any) -> None:
    for _ in range(10):
        vm = _vm(ctx, name)
        mutate(vm)
        try:
            ctx.store.update(vm)
            return
        except ConflictError:
            time.sleep(0.05)
    raise CLIError(f"error: VirtualMachine {name} kept changing; try again")


def _request(*actions: str) -> Any:
    def mutate(vm: dict[str, Any]) -> None:
        st = vm.setdefault("status", {})
        st["stateChangeRequests"] = [*(st.get("stateChangeRequests") or []), *({"action": a} for a in actions)]

    return mutate


def _set_spec(key: str, value: Any, drop: str | None = None) -> Any:
    def mutate(vm: dict[str, Any]) -> None:
        vm["spec"][key] = value
        if drop:
            vm["spec"].pop(drop, None)

    return mutate


def _ensure_controller(ctx: Context) -> None:
    if not ctx.no_controller:
        from cdi.controller import daemon

        daemon.ensure_running(ctx.data_dir)


def start(ctx: Context, name: str) -> int:
    spec = _vm(ctx, name).get("spec") or {}
    active = _vmi_active(ctx, name)
    if "running" in spec:
        if spec["running"] is True and active:
            raise CLIError(f'Error starting VirtualMachine: VirtualMachine "{name}" is already running')
        _change(ctx, name, _set_spec("running", True) if spec["running"] is not True else _request("Start"))
    else:
        strategy = spec.get("runStrategy")
        if strategy == "Halted":
            _change(ctx, name, _set_spec("runStrategy", "Always"))
        elif active:
            raise CLIError(f'Error starting VirtualMachine: VirtualMachine "{name}" is already running')
        else:
            _change(ctx, name, _request("Start"))
    _ensure_controller(ctx)
    ctx.print(f"VM {name} was scheduled to start")
    return 0


def stop(ctx: Context, name: str) -> int:
    spec = _vm(ctx, name).get("spec") or {}
    exists = ctx.store.get(VMI, ctx.namespace, name) is not None
    if "running" in spec:
        if spec["running"] is not True and not exists:
            raise CLIError(f'Error stopping VirtualMachine: VirtualMachine "{name}" is not running')
        _change(ctx, name, _set_spec("running", False))
    else:
        strategy = spec.get("runStrategy")
        if strategy in ("Always", "RerunOnFailure"):
            _change(ctx, name, _set_spec("runStrategy", "Halted"))
        elif not exists:
            raise CLIError(f'Error stopping VirtualMachine: VirtualMachine "{name}" is not running')
        elif strategy == "Halted":
            ctx.store.delete(VMI, ctx.namespace, name)
        else:
            _change(ctx, name, _request("Stop"))
    _ensure_controller(ctx)
    ctx.print(f"VM {name} was scheduled to stop")
    return 0


def restart(ctx: Context, name: str) -> int:
    _vm(ctx, name)
    if ctx.store.get(VMI, ctx.namespace, name) is None:
        raise CLIError(f'Error restarting VirtualMachine: VirtualMachine "{name}" is not running')
    _change(ctx, name, _request("Stop", "Start"))
    _ensure_controller(ctx)
    ctx.print(f"VM {name} was scheduled to restart")
    return 0


def pause(ctx: Context, name: str, paused: bool) -> int:
    verb = "pause" if paused else "unpause"
    for _ in range(10):
        vmi = ctx.store.get(VMI, ctx.namespace, name)
        if vmi is None or (vmi.get("status") or {}).get("phase") != "Running":
            raise CLIError(f'Error {verb[:-1]}ing VirtualMachineInstance: VMI "{name}" is not running')
        vmi["metadata"].setdefault("annotations", {})[PAUSED] = "true" if paused else "false"
        try:
            ctx.store.update(vmi)
            break
        except ConflictError:
            time.sleep(0.05)
    _ensure_controller(ctx)
    ctx.print(f"VMI {name} was scheduled to {verb}")
    return 0


def console(ctx: Context, name: str, timeout: float | None, follow: bool) -> int:
    """The serial console as the guest wrote it, then new output until the VMI stops."""
    deadline = None if timeout is None else time.monotonic() + timeout
    path = None
    while path is None:
        vmi = ctx.store.get(VMI, ctx.namespace, name)
        path = ((vmi or {}).get("status") or {}).get("consoleLog")
        if path and os.path.exists(path):
            break
        path = None
        if vmi is None and ctx.store.get(VM, ctx.namespace, name) is None:
            raise CLIError(f'Error from server (NotFound): virtualmachineinstances.kubevirt.io "{name}" not found')
        if not follow or (deadline is not None and time.monotonic() > deadline):
            raise CLIError(f"error: VMI {name} has no console output yet (is it running? `cdi get vmi {name}`)")
        time.sleep(0.2)
    ctx.eprint(f"Successfully connected to {name} console (read-only serial log {path}). Press Ctrl-C to leave.")
    with open(path, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                ctx.out.write(chunk.decode("utf-8", errors="replace"))
                ctx.out.flush()
                continue
            if not follow or ctx.stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                return 0
            vmi = ctx.store.get(VMI, ctx.namespace, name)
            if vmi is None or (vmi.get("status") or {}).get("phase") in FINAL:
                ctx.out.write(f.read().decode("utf-8", errors="replace"))
                return 0
            time.sleep(0.1)


def vnc_info(ctx: Context, name: str) -> int:
    vmi = ctx.store.get(VMI, ctx.namespace, name)
    if vmi is None:
        raise CLIError(f'Error from server (NotFound): virtualmachineinstances.kubevirt.io "{name}" not found')
    vnc = (vmi.get("status") or {}).get("vnc")
    if vnc:
        ctx.print(f"VNC display of {name}: {vnc}  (e.g. remote-viewer vnc://{vnc})")
        return 0
    phase = (vmi.get("status") or {}).get("phase")
    ctx.eprint(f"error: VMI {name} has no VNC display now (phase {phase}); it has one while it runs. "
               f"The serial console: `cdi virt console {name}`")
    return 1
