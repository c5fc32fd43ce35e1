"""Errors of the VM runtime, placed in the project's tree (``cdi.common.errors``)::

    CDIError
    +-- TemporaryError
    |   +-- LibvirtUnavailable     libvirtd does not answer (start it: scripts/setup_vm.sh)
    |   +-- VolumeNotReady         a volume the VMI needs is not resolved / its disk is missing
    |   +-- WaitTimeout            a wait ended before the VMI reached the wanted state
    +-- PermanentError
        +-- DomainError            the spec cannot be turned into a libvirt domain
        +-- InvalidState           the operation does not apply in the current state
        +-- GuestFailed            libvirt/qemu refused the domain or it failed to start

libvirt's own exception never leaves ``vm_runtime.connection``: it is translated there.
"""

from __future__ import annotations

from cdi.common.errors import PermanentError, TemporaryError


class LibvirtUnavailable(TemporaryError):
    reason = "LibvirtUnavailable"


class VolumeNotReady(TemporaryError):
    reason = "VolumeNotReady"


class WaitTimeout(TemporaryError):
    reason = "Timeout"


class DomainError(PermanentError):
    reason = "InvalidDomain"


class InvalidState(PermanentError):
    reason = "InvalidState"


class GuestFailed(PermanentError):
    reason = "GuestFailed"
