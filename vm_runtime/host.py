"""Facts about this host the domain builder needs as inputs (I/O lives here, not in domain.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def detect_accelerator(sys_module: Path = Path("/sys/module"), dev_kvm: Path = Path("/dev/kvm")) -> str:
    """``"kvm"`` only with real hardware virtualization, else ``"qemu"`` (TCG).

    ``/dev/kvm`` alone proves nothing: some sandboxes expose a paravirtual KVM (PVM) that cannot
    run stock guests, and libvirt's capabilities still list kvm there. So we require the
    kvm_intel or kvm_amd module *and* an openable ``/dev/kvm``. ``PYCDI_ACCEL`` (kvm|qemu|tcg)
    overrides.
    """
    forced = os.environ.get("PYCDI_ACCEL", "").lower()
    if forced in ("kvm", "qemu"):
        return forced
    if forced == "tcg":
        return "qemu"
    if not ((sys_module / "kvm_intel").exists() or (sys_module / "kvm_amd").exists()):
        return "qemu"
    try:
        fd = os.open(dev_kvm, os.O_RDWR)
    except OSError:
        return "qemu"
    os.close(fd)
    return "kvm"


def accelerator_label(accelerator: str) -> str:
    """How VMI status names it: ``KVM`` or ``TCG``."""
    return "KVM" if accelerator == "kvm" else "TCG"


def supports_direct_io(path: str) -> bool:
    """Whether ``path`` (a file or block device; for a missing file, its directory) opens with
    O_DIRECT. tmpfs and some FUSE file systems refuse it with EINVAL."""
    target = path if os.path.exists(path) else os.path.dirname(path) or "."
    flags = os.O_RDONLY | getattr(os, "O_DIRECT", 0)
    if os.path.isdir(target):
        try:
            fd, name = _tmp_in(target)
        except OSError:
            return False
        try:
            os.close(fd)
            fd = os.open(name, flags)
            os.close(fd)
            return True
        except OSError as e:
            return e.errno not in (errno.EINVAL, errno.EOPNOTSUPP)
        finally:
            os.unlink(name)
    try:
        fd = os.open(target, flags)
    except OSError as e:
        return e.errno not in (errno.EINVAL, errno.EOPNOTSUPP)
    os.close(fd)
    return True


def _tmp_in(directory: str) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix=".odirect-", dir=directory)
