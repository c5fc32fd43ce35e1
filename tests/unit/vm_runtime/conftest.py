"""Importing ``vm_runtime`` registers the VM admitters with cdi.api.validation (a process-wide
side effect); ``vm_admitters`` makes sure they are registered for a test and removes them after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


def unregister_vm_admitters() -> None:
    from cdi.api import validation
    from vm_runtime import admission

    for kind, fn in (("VirtualMachine", admission.admit_vm), ("VirtualMachineInstance", admission.admit_vmi)):
        if validation.ADMITTERS.get(kind) is fn:
            del validation.ADMITTERS[kind]


@pytest.fixture
def vm_admitters() -> Iterator[None]:
    from vm_runtime import admission

    admission.register()
    yield
    unregister_vm_admitters()
