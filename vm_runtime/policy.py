"""What to do when a VMI's guest stops: the run strategy as one pure function.

=================  ================  ===================  ==================
runStrategy        guest powered off  guest crashed/failed  stopped by the user
=================  ================  ===================  ==================
Always             start again        start again          stay stopped
RerunOnFailure     stay stopped       start again          stay stopped
Manual             stay stopped       stay stopped         stay stopped
Halted             stay stopped       stay stopped         stay stopped
=================  ================  ===================  ==================

A running VMI under ``Halted`` is stopped. Restarts back off (:func:`restart_delay`), like
KubeVirt's CrashLoopBackOff.
"""

from __future__ import annotations

import enum

from cdi.api.virtualmachine import RunStrategy, VMIPhase


class Action(enum.StrEnum):
    NONE = "None"
    START = "Start"
    STOP = "Stop"


def next_action(run_strategy: RunStrategy, phase: VMIPhase, *, stopped_by_user: bool = False) -> Action:
    if phase == VMIPhase.RUNNING:
        return Action.STOP if run_strategy == RunStrategy.HALTED else Action.NONE
    if stopped_by_user or phase not in (VMIPhase.SUCCEEDED, VMIPhase.FAILED):
        return Action.NONE
    if run_strategy == RunStrategy.ALWAYS:
        return Action.START
    if run_strategy == RunStrategy.RERUN_ON_FAILURE and phase == VMIPhase.FAILED:
        return Action.START
    return Action.NONE


def restart_delay(restarts: int, *, base: float = 2.0, cap: float = 300.0) -> float:
    """Seconds to wait before restart number ``restarts + 1``: 0, 2, 4, 8, ... up to ``cap``."""
    if restarts <= 0:
        return 0.0
    return float(min(cap, base * 2 ** (restarts - 1)))
