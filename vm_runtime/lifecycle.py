"""The launcher: one VMI's domain under libvirtd, and the status that stays true.

:class:`Launcher` does for one VMI what virt-handler + virt-launcher do in KubeVirt::

    Pending --start()--> Scheduled --(domain started)--> Running <--pause()/unpause()--> (Paused)
    Running --guest poweroff / stop()--------------------> Succeeded
    Running --crash (pvpanic), qemu failure, paused by error, domain vanished--> Failed
    Succeeded/Failed --policy.next_action (runStrategy)--> start again (a fresh run)

The state loop (a thread per launcher) wakes on libvirt lifecycle events (and every
``poll_interval`` seconds as a safety net), reads the domain state, recomputes the VMI status and
applies the run strategy. Callers read :meth:`Launcher.status` or block in
:meth:`Launcher.wait_for` (always with a timeout). A guest paused by an error (emulation
failure, crash) is a failure, not a pause.

Files in ``run_dir``: ``console.log`` (serial console, appended across restarts), ``domain.xml``
(last defined), ``qmp.sock`` (extra QMP monitor), ``nvram.fd`` (EFI), the per-run overlays, the
cidata ISO and emptyDisk files (see ``vm_runtime.volumes``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cdi.api import conditions as cond
from cdi.api.virtualmachine import (
    COND_FAILURE,
    COND_PAUSED,
    COND_READY,
    REASON_CRASHED,
    REASON_GUEST_NOT_RUNNING,
    REASON_PAUSED_BY_ERROR,
    REASON_PAUSED_BY_USER,
    REASON_PAUSED_IO_ERROR,
    RunStrategy,
    VMIPhase,
    VMISpec,
    parse_vmi_spec,
)
from cdi.common.errors import CDIError
from vm_runtime import policy
from vm_runtime.connection import DEFAULT_URI, Connection, Domain, DomainState, LifecycleEvent
from vm_runtime.domain import HostOptions, Identity, build_domain_xml, disk_targets
from vm_runtime.errors import InvalidState, WaitTimeout
from vm_runtime.host import accelerator_label, detect_accelerator
from vm_runtime.volumes import ResolvedVolume, prepare_volumes

Status = dict[str, Any]
_BENIGN_PAUSE = {"user", "migration", "save", "snapshot", "starting-up", "shutting-down", "dump", "postcopy"}

log = logging.getLogger(__name__)


VNC_LISTEN = "127.0.0.1"  # the display is for this machine only


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Launcher:
    """Runs one VMI. Thread-safe; every blocking call takes a timeout."""

    def __init__(
        self,
        identity: Identity,
        spec: VMISpec | Mapping[str, Any],
        volumes: Mapping[str, ResolvedVolume],
        *,
        run_dir: Path,
        run_strategy: RunStrategy = RunStrategy.MANUAL,
        uri: str = DEFAULT_URI,
        accelerator: str | None = None,
        on_status: Callable[[Status], None] | None = None,
        poll_interval: float = 5.0,
    ) -> None:
        self.identity = identity
        self.spec = spec if isinstance(spec, VMISpec) else parse_vmi_spec(spec)
        self.volumes = dict(volumes)
        self.run_dir = Path(run_dir)
        self.run_strategy = run_strategy
        self.accelerator = accelerator or detect_accelerator()
        self.console_log = self.run_dir / "console.log"
        self.qmp_socket = self.run_dir / "qmp.sock"
        self._on_status = on_status
        self._poll = poll_interval
        self._cv = threading.Condition(threading.RLock())
        self._events: queue.Queue[LifecycleEvent | None] = queue.Queue()
        self._phase = VMIPhase.PENDING
        self._conditions: list[cond.Condition] = []
        self._reason = ""
        self._message = ""
        self._domain_state = ""
        self._restarts = 0
        self._stopped_by_user = False
        self._final = False  # this run reached Succeeded/Failed
        self._restart_at: float | None = None
        self._closed = False
        self._transitions: list[dict[str, str]] = []
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._conn = Connection(uri)
        self._conn.on_lifecycle(self._on_event)
        self._dom: Domain | None = self._conn.lookup(identity.domain_name)
        if self._dom is not None and identity.uid and self._dom.uuid != identity.uid:
            # left by an earlier VMI of the same name: not this one's to adopt
            if self._dom.state()[0] in (DomainState.SHUTOFF, DomainState.UNDEFINED):
                log.info("%s: removing the stopped domain of an earlier VMI (uid %s)",
                         identity.domain_name, self._dom.uuid)
                with contextlib.suppress(Exception):  # gone meanwhile: nothing to remove
                    self._dom.undefine()
            else:
                log.warning("%s: a domain of an earlier VMI (uid %s) still runs; starting this VMI will fail "
                            "until it stops", identity.domain_name, self._dom.uuid)
            self._dom = None
        self._vnc = ""
        if self._dom is not None:  # adopt a domain left by a previous launcher
            with self._cv:
                self._vnc = self._read_vnc()
                self._refresh()
        self._thread = threading.Thread(target=self._loop, name=f"vmi-{identity.domain_name}", daemon=True)
        self._thread.start()

    # --- public operations ------------------------------------------------------------------

    def start(self) -> None:
        """Prepare the volumes, define the domain and start it. No-op when already running.

        :raises VolumeNotReady: a volume is not there yet (retry later).
        :raises DomainError, GuestFailed: the domain cannot be built or libvirt refused it.
        """
        with self._cv:
            self._require_open()
            if self._dom is not None and self._dom.state()[0] in (DomainState.RUNNING, DomainState.PAUSED):
                return
            self._stopped_by_user = False
            self._restart_at = None
            self._start_domain()

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: ACPI power button, wait up to ``grace`` seconds (default the spec's
        terminationGracePeriodSeconds), then destroy. The VMI ends Succeeded."""
        grace = float(self.spec.termination_grace_period if grace is None else grace)
        with self._cv:
            self._require_open()
            self._stopped_by_user = True
            self._restart_at = None
            dom = self._dom
            if dom is None or dom.state()[0] in (DomainState.SHUTOFF, DomainState.UNDEFINED):
                self._refresh()
                return
            if dom.state()[0] != DomainState.PAUSED and grace > 0:
                with contextlib.suppress(CDIError):
                    dom.shutdown()
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline:
                    if dom.state()[0] in (DomainState.SHUTOFF, DomainState.UNDEFINED):
                        break
                    self._cv.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            if dom.state()[0] not in (DomainState.SHUTOFF, DomainState.UNDEFINED):
                dom.destroy()
            self._refresh()

    def destroy(self) -> None:
        """Hard stop (pull the plug). The VMI ends Succeeded (stopped on request)."""
        self.stop(grace=0)

    def restart(self, grace: float | None = None) -> None:
        self.stop(grace)
        self.start()

    def pause(self) -> None:
        with self._cv:
            self._require_running("pause")
            assert self._dom is not None
            self._dom.suspend()
            self._refresh()

    def unpause(self) -> None:
        with self._cv:
            self._require_open()
            if self._dom is None or self._dom.state()[0] != DomainState.PAUSED:
                raise InvalidState(f"VMI {self.identity.name} is not paused")
            self._dom.resume()
            self._refresh()

    def delete(self, grace: float | None = None, *, keep_run_dir: bool = False) -> None:
        """Stop (gracefully), undefine the domain, end the state loop, remove the run dir."""
        if self._closed:
            return
        self.stop(grace)
        with self._cv:
            if self._dom is not None:
                with contextlib.suppress(CDIError):
                    self._dom.undefine()
                self._dom = None
        self.close()
        if not keep_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def close(self) -> None:
        """End the state loop and the connection; the domain is left as it is."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        self._events.put(None)
        self._thread.join(timeout=10)
        self._conn.close()

    def status(self) -> Status:
        """The VMI status (KubeVirt's shape plus ``accelerator``, ``consoleLog``, ``restartCount``)."""
        with self._cv:
            targets = disk_targets(self.spec)
            st: Status = {
                "phase": self._phase.value,
                "conditions": [dict(c) for c in self._conditions],
                "phaseTransitionTimestamps": list(self._transitions),
                "volumeStatus": [
                    {"name": v.name, "target": targets.get(v.name, ""), "kind": v.kind.value}
                    for v in self.spec.volumes
                ],
                "machine": {"type": self.spec.domain.machine_type},
                "accelerator": accelerator_label(self.accelerator),
                "consoleLog": str(self.console_log),
                "restartCount": self._restarts,
                "runStrategy": self.run_strategy.value,
                "domainState": self._domain_state,
            }
            if self._vnc and self._phase == VMIPhase.RUNNING:
                st["vnc"] = self._vnc
            if self._reason:
                st["reason"] = self._reason
            if self._message:
                st["message"] = self._message
            return st

    def wait_for(self, predicate: Callable[[Status], bool], timeout: float) -> Status:
        """Block until ``predicate(status)`` holds; return that status.

        :raises WaitTimeout: after ``timeout`` seconds, with the last status in the message.
        """
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                st = self.status()
                if predicate(st):
                    return st
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise WaitTimeout(
                        f"VMI {self.identity.name}: condition not met in {timeout:.0f}s "
                        f"(phase {st['phase']}, domain {st['domainState']}, {st.get('message', '')})"
                    )
                self._cv.wait(min(left, 1.0))

    def wait_for_phase(self, *phases: VMIPhase, timeout: float) -> Status:
        wanted = {p.value for p in phases}
        return self.wait_for(lambda s: s["phase"] in wanted, timeout)

    # --- internals --------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise InvalidState(f"the launcher of VMI {self.identity.name} is closed")

    def _require_running(self, op: str) -> None:
        self._require_open()
        state = self._dom.state()[0] if self._dom is not None else DomainState.UNDEFINED
        if state not in (DomainState.RUNNING, DomainState.BLOCKED):
            raise InvalidState(f"cannot {op} VMI {self.identity.name}: it is {state.value}, not running")

    def _start_domain(self) -> None:
        sources = prepare_volumes(
            self.spec,
            self.volumes,
            self.run_dir,
            instance_id=self.identity.uid or self.identity.domain_name,
            hostname=self.identity.name,
        )
        self.qmp_socket.unlink(missing_ok=True)
        xml = build_domain_xml(
            self.identity,
            self.spec,
            sources,
            HostOptions(
                accelerator=self.accelerator,
                console_log=str(self.console_log),
                nvram_path=str(self.run_dir / "nvram.fd"),
                qmp_socket=str(self.qmp_socket),
                vnc_listen=VNC_LISTEN,
            ),
        )
        (self.run_dir / "domain.xml").write_text(xml)
        self._final = False
        self._reason = self._message = ""
        self._set_phase(VMIPhase.SCHEDULED)
        self._dom = self._conn.define(xml)
        try:
            self._dom.start()
        except CDIError as e:
            self._fail("FailedCreate", str(e))
            raise
        self._vnc = self._read_vnc()
        self._refresh()

    def _read_vnc(self) -> str:
        """``address:port`` of the running domain's VNC display, or "" (libvirt picks the port)."""
        if self._dom is None:
            return ""
        try:
            root = ET.fromstring(self._dom.xml())
        except Exception:
            return ""
        g = root.find("./devices/graphics[@type='vnc']")
        if g is None or g.get("port") in (None, "-1"):
            return ""
        return f"{g.get('listen') or VNC_LISTEN}:{g.get('port')}"

    def _on_event(self, ev: LifecycleEvent) -> None:
        if ev.domain == self.identity.domain_name:
            self._events.put(ev)

    def _loop(self) -> None:
        while True:
            try:
                ev = self._events.get(timeout=self._poll)
            except queue.Empty:
                ev = None
            with self._cv:
                if self._closed:
                    return
                try:
                    self._refresh(ev)
                    self._apply_policy()
                except CDIError as e:
                    self._message = str(e)
                    self._cv.notify_all()

    def _apply_policy(self) -> None:
        if self._restart_at is not None:
            if time.monotonic() >= self._restart_at:
                self._restart_at = None
                self._restarts += 1
                if self._dom is not None and self._dom.state()[0] not in (
                    DomainState.SHUTOFF,
                    DomainState.UNDEFINED,
                ):
                    self._dom.destroy()  # e.g. still "crashed" while libvirt tears it down
                self._start_domain()
            return
        action = policy.next_action(self.run_strategy, self._phase, stopped_by_user=self._stopped_by_user)
        if action == policy.Action.START and self._final:
            delay = policy.restart_delay(self._restarts)
            self._restart_at = time.monotonic() + delay
            if delay == 0:
                self._apply_policy()
            else:  # wake the loop in time
                threading.Timer(delay, lambda: self._events.put(None)).start()
        elif action == policy.Action.STOP and self._dom is not None:
            self._stopped_by_user = True
            self._dom.destroy()
            self._refresh()

    def _set_phase(self, phase: VMIPhase) -> None:
        if phase != self._phase:
            self._phase = phase
            self._transitions.append({"phase": phase.value, "phaseTransitionTimestamp": _now()})
            self._transitions = self._transitions[-20:]

    def _fail(self, reason: str, message: str) -> None:
        self._final = True
        self._reason, self._message = reason, message
        self._set_phase(VMIPhase.FAILED)
        self._set_cond(COND_READY, cond.FALSE, REASON_GUEST_NOT_RUNNING, "the guest is not running")
        self._set_cond(COND_FAILURE, cond.TRUE, reason, message)

    def _set_cond(self, type_: str, status: str, reason: str, message: str) -> None:
        self._conditions = cond.set_condition(self._conditions, type_, status, reason, message, _now())

    def _drop_cond(self, type_: str) -> None:
        self._conditions = [c for c in self._conditions if c.get("type") != type_]

    def _refresh(self, ev: LifecycleEvent | None = None) -> None:
        """Recompute the status from the domain's state (``ev`` only adds detail)."""
        before = (self._phase, self._reason, self._message, len(self._conditions), self._domain_state)
        before_conds = [dict(c) for c in self._conditions]
        state, reason = self._dom.state() if self._dom is not None else (DomainState.UNDEFINED, "")
        self._domain_state = f"{state.value}/{reason}" if reason else state.value
        if not self._final:
            self._derive(state, reason, ev)
        after = (self._phase, self._reason, self._message, len(self._conditions), self._domain_state)
        if after != before or self._conditions != before_conds:
            self._cv.notify_all()
            if self._on_status is not None:
                with contextlib.suppress(Exception):  # a broken observer must not stop the loop
                    self._on_status(self.status())

    def _derive(self, state: DomainState, reason: str, ev: LifecycleEvent | None) -> None:
        if state in (DomainState.RUNNING, DomainState.BLOCKED, DomainState.PMSUSPENDED, DomainState.SHUTDOWN):
            self._set_phase(VMIPhase.RUNNING)
            self._set_cond(COND_READY, cond.TRUE, "", "")
            self._drop_cond(COND_PAUSED)
        elif state == DomainState.PAUSED:
            if reason in _BENIGN_PAUSE:
                if self._phase != VMIPhase.SCHEDULED or reason == "user":
                    self._set_phase(VMIPhase.RUNNING)
                if reason == "user":
                    self._set_cond(COND_PAUSED, cond.TRUE, REASON_PAUSED_BY_USER, "VMI was paused by user")
                    self._set_cond(COND_READY, cond.FALSE, REASON_PAUSED_BY_USER, "VMI was paused by user")
            elif reason == "ioerror":
                self._set_phase(VMIPhase.RUNNING)
                self._set_cond(COND_PAUSED, cond.TRUE, REASON_PAUSED_IO_ERROR, "VMI was paused, I/O error")
                self._set_cond(COND_READY, cond.FALSE, REASON_PAUSED_IO_ERROR, "VMI was paused, I/O error")
            else:  # crashed, watchdog, unknown (an emulation failure stops the vCPUs): a failure
                self._set_cond(COND_PAUSED, cond.TRUE, REASON_PAUSED_BY_ERROR, f"paused by {reason}")
                self._fail(REASON_PAUSED_BY_ERROR, f"the guest stopped by error (paused, reason {reason})")
                if self._dom is not None:  # do not leave a stuck qemu behind
                    self._dom.destroy()
        elif state == DomainState.CRASHED or (state == DomainState.SHUTOFF and reason == "crashed"):
            self._fail(REASON_CRASHED, "the guest crashed (kernel panic)")
        elif state == DomainState.SHUTOFF:
            if self._phase == VMIPhase.PENDING:
                return  # defined earlier, never started by us
            self._drop_cond(COND_PAUSED)
            if reason == "shutdown" or self._stopped_by_user:
                self._final = True
                self._set_phase(VMIPhase.SUCCEEDED)
                why = (
                    "stopped on request"
                    if self._stopped_by_user and reason != "shutdown"
                    else "guest powered off"
                )
                self._reason, self._message = "", why
                self._set_cond(COND_READY, cond.FALSE, REASON_GUEST_NOT_RUNNING, why)
            elif reason == "failed":
                self._fail("FailedCreate", "qemu failed to start the guest (see the libvirt qemu log)")
            else:
                self._fail("GuestStopped", f"the domain stopped unexpectedly ({reason})")
        elif state == DomainState.UNDEFINED and self._phase not in (VMIPhase.PENDING,):
            if self._stopped_by_user:
                self._final = True
                self._set_phase(VMIPhase.SUCCEEDED)
            else:
                self._fail("DomainLost", "the domain disappeared from libvirt")
