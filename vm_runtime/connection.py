"""The only module that imports ``libvirt``: connection, domains, events, error translation.

* :func:`open_connection` starts (once per process) libvirt's default event loop in a daemon
  thread *before* opening the connection, which domain lifecycle events need.
* :class:`Connection` / :class:`Domain` expose what the launcher uses, in our own vocabulary:
  :class:`DomainState` + a reason string, :class:`LifecycleEvent`. ``libvirt.libvirtError``
  never escapes: it becomes :class:`~vm_runtime.errors.LibvirtUnavailable`,
  :class:`~cdi.common.errors.NotFoundError` or :class:`~vm_runtime.errors.GuestFailed`.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from cdi.common.errors import NotFoundError
from vm_runtime.errors import GuestFailed, LibvirtUnavailable

DEFAULT_URI = "qemu:///system"
T = TypeVar("T")


class DomainState(enum.StrEnum):
    NOSTATE = "nostate"
    RUNNING = "running"
    BLOCKED = "blocked"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # shutting down
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    PMSUSPENDED = "pmsuspended"
    UNDEFINED = "undefined"  # not (or no longer) defined


_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: DomainState.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PMSUSPENDED,
}

_PAUSED_REASONS = {
    libvirt.VIR_DOMAIN_PAUSED_UNKNOWN: "unknown",
    libvirt.VIR_DOMAIN_PAUSED_USER: "user",
    libvirt.VIR_DOMAIN_PAUSED_MIGRATION: "migration",
    libvirt.VIR_DOMAIN_PAUSED_SAVE: "save",
    libvirt.VIR_DOMAIN_PAUSED_DUMP: "dump",
    libvirt.VIR_DOMAIN_PAUSED_IOERROR: "ioerror",
    libvirt.VIR_DOMAIN_PAUSED_WATCHDOG: "watchdog",
    libvirt.VIR_DOMAIN_PAUSED_FROM_SNAPSHOT: "snapshot",
    libvirt.VIR_DOMAIN_PAUSED_SHUTTING_DOWN: "shutting-down",
    libvirt.VIR_DOMAIN_PAUSED_SNAPSHOT: "snapshot",
    libvirt.VIR_DOMAIN_PAUSED_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PAUSED_STARTING_UP: "starting-up",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY: "postcopy",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED: "postcopy-failed",
}

_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: "unknown",
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed",
    libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: "snapshot",
}

_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}

# Details of STOPPED (the only event whose detail the launcher reads).
_STOPPED_DETAILS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "snapshot",
}
_SUSPENDED_DETAILS = {
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED: "user",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR: "ioerror",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG: "watchdog",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR: "api-error",
}


@dataclass(frozen=True)
class LifecycleEvent:
    domain: str  # domain name
    event: str  # started, suspended, resumed, stopped, shutdown, crashed, defined, undefined, ...
    detail: str  # e.g. stopped: shutdown|destroyed|crashed|failed; suspended: user|ioerror|...


_loop_lock = threading.Lock()
_loop_started = False


def _ignore_errors(_ctx: object, _err: object) -> None:
    """libvirt-python prints every error to stderr by default; we raise them instead."""


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it in a daemon thread (once)."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(_ignore_errors, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def _translate(e: libvirt.libvirtError, what: str) -> Exception:
    code = e.get_error_code()
    msg = e.get_error_message() or str(e)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NotFoundError(f"{what}: no such domain")
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC):
        return LibvirtUnavailable(f"{what}: libvirtd unavailable ({msg}); start it with scripts/setup_vm.sh")
    return GuestFailed(f"{what}: {msg}")


def _call(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except libvirt.libvirtError as e:
        raise _translate(e, what) from None


class Domain:
    def __init__(self, dom: Any) -> None:
        self._dom = dom
        self.name: str = dom.name()
        self.uuid: str = dom.UUIDString()

    def start(self) -> None:
        _call(f"start {self.name}", self._dom.create)

    def shutdown(self) -> None:
        """Ask the guest to power off (ACPI power button)."""
        _call(
            f"shutdown {self.name}",
            lambda: self._dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN),
        )

    def destroy(self) -> None:
        _call(f"destroy {self.name}", lambda: self._dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL))

    def suspend(self) -> None:
        _call(f"pause {self.name}", self._dom.suspend)

    def resume(self) -> None:
        _call(f"unpause {self.name}", self._dom.resume)

    def undefine(self) -> None:
        _call(f"undefine {self.name}", lambda: self._dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM))

    def state(self) -> tuple[DomainState, str]:
        """The domain's state and reason; ``UNDEFINED`` when it no longer exists."""
        try:
            st, reason = self._dom.state()
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return DomainState.UNDEFINED, ""
            raise _translate(e, f"state of {self.name}") from None
        state = _STATES.get(st, DomainState.NOSTATE)
        if state == DomainState.PAUSED:
            return state, _PAUSED_REASONS.get(reason, "unknown")
        if state == DomainState.SHUTOFF:
            return state, _SHUTOFF_REASONS.get(reason, "unknown")
        return state, ""

    def xml(self) -> str:
        return _call(f"XML of {self.name}", lambda: str(self._dom.XMLDesc(0)))

    def block_stats(self, target: str) -> tuple[int, int, int, int, int]:
        """(rd_req, rd_bytes, wr_req, wr_bytes, errs) as libvirt reports them."""
        return _call(f"block stats of {self.name}", lambda: tuple(self._dom.blockStats(target)))


class Connection:
    """A libvirt connection with lifecycle events delivered to one callback."""

    def __init__(self, uri: str = DEFAULT_URI) -> None:
        ensure_event_loop()
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as e:
            raise LibvirtUnavailable(
                f"cannot connect to {uri}: {e.get_error_message()}; start libvirtd (scripts/setup_vm.sh)"
            ) from None
        self.uri = uri
        self._callbacks: list[int] = []

    def define(self, xml: str) -> Domain:
        return Domain(_call("define domain", lambda: self._conn.defineXML(xml)))

    def lookup(self, name: str) -> Domain | None:
        try:
            return Domain(self._conn.lookupByName(name))
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise _translate(e, f"lookup {name}") from None

    def on_lifecycle(self, callback: Callable[[LifecycleEvent], None]) -> None:
        """Call ``callback`` (in the libvirt event thread; keep it short) on every lifecycle event."""

        def cb(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            name = _EVENTS.get(event, str(event))
            if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
                d = _STOPPED_DETAILS.get(detail, str(detail))
            elif event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
                d = _SUSPENDED_DETAILS.get(detail, str(detail))
            else:
                d = str(detail)
            callback(LifecycleEvent(dom.name(), name, d))

        cid = _call(
            "register events",
            lambda: self._conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, None),
        )
        self._callbacks.append(cid)

    def close(self) -> None:
        for cid in self._callbacks:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.domainEventDeregisterAny(cid)
        self._callbacks.clear()
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()
