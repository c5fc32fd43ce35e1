from __future__ import annotations

import pytest

from cdi.api.virtualmachine import RunStrategy, VMIPhase
from vm_runtime.policy import Action, next_action, restart_delay

pytestmark = pytest.mark.timeout(5)
S, F, R = VMIPhase.SUCCEEDED, VMIPhase.FAILED, VMIPhase.RUNNING


@pytest.mark.parametrize(
    ("strategy", "phase", "by_user", "expected"),
    [
        (RunStrategy.ALWAYS, S, False, Action.START),
        (RunStrategy.ALWAYS, F, False, Action.START),
        (RunStrategy.ALWAYS, S, True, Action.NONE),
        (RunStrategy.RERUN_ON_FAILURE, F, False, Action.START),
        (RunStrategy.RERUN_ON_FAILURE, S, False, Action.NONE),
        (RunStrategy.RERUN_ON_FAILURE, F, True, Action.NONE),
        (RunStrategy.MANUAL, F, False, Action.NONE),
        (RunStrategy.HALTED, F, False, Action.NONE),
        (RunStrategy.HALTED, R, False, Action.STOP),
        (RunStrategy.ALWAYS, R, False, Action.NONE),
        (RunStrategy.ALWAYS, VMIPhase.SCHEDULED, False, Action.NONE),
    ],
)
def test_next_action(strategy: RunStrategy, phase: VMIPhase, by_user: bool, expected: Action) -> None:
    assert next_action(strategy, phase, stopped_by_user=by_user) == expected


def test_restart_delay_backs_off_to_a_cap() -> None:
    assert [restart_delay(n) for n in range(5)] == [0.0, 2.0, 4.0, 8.0, 16.0]
    assert restart_delay(100) == 300.0
