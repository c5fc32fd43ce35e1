from __future__ import annotations

from pathlib import Path

import pytest

from vm_runtime.host import accelerator_label, detect_accelerator, supports_direct_io

pytestmark = pytest.mark.timeout(5)


def test_tcg_without_hardware_kvm_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYCDI_ACCEL", raising=False)
    (tmp_path / "kvm").mkdir()
    (tmp_path / "kvm_pvm").mkdir()  # a paravirtual KVM is not enough
    dev = tmp_path / "kvm-dev"
    dev.write_bytes(b"")
    assert detect_accelerator(tmp_path, dev) == "qemu"
    (tmp_path / "kvm_intel").mkdir()
    assert detect_accelerator(tmp_path, dev) == "kvm"
    assert detect_accelerator(tmp_path, tmp_path / "missing") == "qemu"
    assert accelerator_label("qemu") == "TCG" and accelerator_label("kvm") == "KVM"


def test_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYCDI_ACCEL", "tcg")
    (tmp_path / "kvm_amd").mkdir()
    assert detect_accelerator(tmp_path, Path("/dev/null")) == "qemu"


def test_direct_io_probe(tmp_path: Path) -> None:
    f = tmp_path / "disk.img"
    f.write_bytes(b"\0" * 4096)
    assert isinstance(supports_direct_io(str(f)), bool)
    assert supports_direct_io(str(tmp_path / "not-yet.img")) == supports_direct_io(str(f))
