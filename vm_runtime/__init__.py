"""pycdi's VM runtime: a KubeVirt VMI as a libvirt domain on this machine.

Public API (what the controller integration uses)::

    from vm_runtime import Launcher, Identity, ResolvedVolume, VolumeMode
    from cdi.api.virtualmachine import RunStrategy, VMIPhase, parse_vmi_spec

    launcher = Launcher(
        Identity(namespace="default", name="vm1", uid=vmi_uid),   # domain name "default_vm1"
        vmi_spec_dict,                       # VMI .spec (or VM .spec.template.spec), dict or VMISpec
        {                                    # volume name -> what the controller resolved
            "rootdisk": ResolvedVolume(VolumeMode.FILESYSTEM, "/pool/fs/default/<uid>/disk.img"),
            "data": ResolvedVolume(VolumeMode.BLOCK, "/dev/loop7", shared=False),
            "cd": ResolvedVolume(VolumeMode.FILESYSTEM, "/images/base.qcow2"),  # containerDisk image
        },                                   # (cloudInitNoCloud / emptyDisk need no entry)
        run_dir=Path(data_dir) / "vms" / "default" / "vm1",
        run_strategy=RunStrategy.RERUN_ON_FAILURE,
        on_status=callback,                  # optional: called with the status dict on change
    )
    launcher.start()                         # raises VolumeNotReady (retry), DomainError, GuestFailed
    launcher.status()                        # {"phase": "Running", "conditions": [...],
                                             #  "volumeStatus": [...], "accelerator": "TCG",
                                             #  "consoleLog": ".../console.log", "restartCount": 0, ...}
    launcher.wait_for_phase(VMIPhase.RUNNING, timeout=60)
    launcher.pause(); launcher.unpause()
    launcher.stop(grace=30)                  # ACPI, then destroy after the grace period
    launcher.restart(); launcher.destroy()
    launcher.delete()                        # stop, undefine, remove run_dir, end the state loop
    launcher.close()                         # end the state loop, leave the domain running

A new Launcher for a name whose domain already exists adopts it (controller restart). The run
strategy is applied by the launcher's state loop (``vm_runtime.policy.next_action``); the VM's
printableStatus is computed by ``cdi.api.virtualmachine.printable_status``.

Importing ``vm_runtime`` registers the admission of VirtualMachine and VirtualMachineInstance
with ``cdi.api.validation`` (``vm_runtime.admission``).

Modules: ``domain`` (pure XML builder), ``volumes`` (overlays, cidata ISO, emptyDisk),
``cloudinit``, ``connection`` (the only importer of libvirt), ``lifecycle`` (Launcher),
``qmp`` (qemu.qmp: run state, block stats), ``policy`` (run strategies), ``host`` (accelerator
detection), ``errors``. ``connection``, ``lifecycle`` and ``qmp`` need the ``vm`` extra
(libvirt-python, qemu.qmp); importing this package does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vm_runtime import admission
from vm_runtime.domain import DiskSource, HostOptions, Identity, build_domain_xml
from vm_runtime.volumes import ResolvedVolume, VolumeMode

# `cdi apply` / cdi.api.validation.admit learn VirtualMachine and VirtualMachineInstance here.
admission.register()

if TYPE_CHECKING:
    from vm_runtime.lifecycle import Launcher

__all__ = [
    "DiskSource",
    "HostOptions",
    "Identity",
    "Launcher",
    "ResolvedVolume",
    "VolumeMode",
    "build_domain_xml",
]


def __getattr__(name: str) -> Any:
    if name == "Launcher":  # imported lazily: it needs libvirt-python
        from vm_runtime.lifecycle import Launcher

        return Launcher
    raise AttributeError(name)
