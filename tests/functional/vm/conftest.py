"""Fixtures for booting the test guest (images/guest) under the real libvirtd.

Every wait has a timeout; a VMI that fails (crash, paused by error) ends a wait at once unless
the test expects it. Guests are TCG unless the host has hardware KVM (vm_runtime.host).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
BOOT_TIMEOUT = float(os.environ.get("PYCDI_BOOT_TIMEOUT", "90"))


@dataclass(frozen=True)
class Guest:
    raw: Path
    qcow2: Path
    token: str


@pytest.fixture(scope="session")
def libvirt_ready() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (libvirtd qemu:///system, loop devices)")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        pytest.skip("libvirt-python is not installed (pip install -e .[vm])")
    proc = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip("libvirtd does not answer on qemu:///system (run scripts/setup_vm.sh)")


@pytest.fixture(scope="session")
def guest(libvirt_ready: None) -> Guest:
    proc = subprocess.run(
        ["bash", str(ROOT / "images" / "guest" / "build.sh")], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"guest build failed:\n{proc.stderr[-3000:]}")
    out = Path(proc.stdout.strip().splitlines()[-1])
    return Guest(out / "disk.raw", out / "disk.qcow2", (out / "token").read_text().strip())


def console_lines(path: str | Path) -> list[str]:
    """Complete (newline-terminated) lines of the serial log; the guest may be mid-line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    text = data.decode(errors="replace")
    return [line.rstrip("\r") for line in text.split("\n")[:-1]]


def wait_console(
    launcher: Any, prefix: str, *, count: int = 1, timeout: float = BOOT_TIMEOUT, allow_failed: bool = False
) -> list[str]:
    """Wait until ``count`` lines starting with ``prefix`` are in the console log; return them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [ln for ln in console_lines(launcher.console_log) if ln.startswith(prefix)]
        if len(found) >= count:
            return found
        st = launcher.status()
        if st["phase"] == "Failed" and not allow_failed:
            pytest.fail(f"VMI failed while waiting for {prefix!r}: {st}\nconsole:\n{tail(launcher)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {prefix!r} line after {timeout:.0f}s; status {st}\nconsole:\n{tail(launcher)}")
        time.sleep(0.2)


def tail(launcher: Any) -> str:
    return "\n".join(console_lines(launcher.console_log)[-20:])


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\S+?)=(\S*)", line))


@pytest.fixture
def make_launcher(tmp_path: Path, libvirt_ready: None) -> Iterator[Callable[..., Any]]:
    from vm_runtime.domain import Identity
    from vm_runtime.lifecycle import Launcher

    made: list[Any] = []

    def make(spec: dict[str, Any], volumes: dict[str, Any], **kw: Any) -> Any:
        name = f"t-{uuid.uuid4().hex[:8]}"
        launcher = Launcher(
            Identity("pycdi-test", name, str(uuid.uuid4())),
            spec,
            volumes,
            run_dir=tmp_path / "vms" / name,
            **kw,
        )
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        with contextlib.suppress(Exception):  # teardown must go on to the next launcher
            launcher.delete(grace=0, keep_run_dir=True)


@pytest.fixture
def loop_device() -> Iterator[Callable[[Path], str]]:
    """Attach files to loop devices (``losetup -f --show``); detach exactly those at the end."""
    devices: list[str] = []

    def attach(path: Path) -> str:
        dev = subprocess.run(
            ["losetup", "-f", "--show", str(path)], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        devices.append(dev)
        return dev

    yield attach
    for dev in devices:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=30)


def copy_disk(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst
