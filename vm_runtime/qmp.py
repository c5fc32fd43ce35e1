"""What libvirt does not report, asked of QEMU directly through QMP (``qemu.qmp``).

The domain builder gives each domain an extra QMP monitor on a unix socket in the VMI's run
directory (``HostOptions.qmp_socket``); libvirt keeps its own monitor. This module is the only
user of ``qemu.qmp``; each call connects, asks, and disconnects (the socket accepts one client at
a time), with a timeout, and returns plain data.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from qemu.qmp import QMPClient

from vm_runtime.errors import GuestFailed

DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class BlockStats:
    device: str  # qdev id, e.g. ua-rootdisk
    node: str
    rd_bytes: int
    wr_bytes: int
    rd_operations: int
    wr_operations: int
    failed_rd_operations: int
    failed_wr_operations: int


async def _execute(socket: str, commands: list[str], timeout: float) -> list[Any]:
    client = QMPClient("pycdi-vm-runtime")
    try:
        await asyncio.wait_for(client.connect(socket), timeout)
        return [await asyncio.wait_for(client.execute(c), timeout) for c in commands]
    finally:
        await client.disconnect()


def execute(socket: str, *commands: str, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
    """Run QMP commands (without arguments) in order; return their results.

    :raises GuestFailed: the socket is absent, QEMU refused, or the timeout passed.
    """
    try:
        return asyncio.run(_execute(socket, list(commands), timeout))
    except Exception as e:  # qemu.qmp raises its own tree; callers only need one kind
        raise GuestFailed(f"QMP {', '.join(commands)} on {socket}: {type(e).__name__}: {e}") from None


def run_state(socket: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """QEMU's run state: ``running``, ``paused``, ``guest-panicked``, ``io-error``, ``shutdown``..."""
    (status,) = execute(socket, "query-status", timeout=timeout)
    return str(status["status"])


def block_stats(socket: str, timeout: float = DEFAULT_TIMEOUT) -> list[BlockStats]:
    """Per-disk I/O counters (``query-blockstats``)."""
    (stats,) = execute(socket, "query-blockstats", timeout=timeout)
    out: list[BlockStats] = []
    for s in stats:
        st = s.get("stats", {})
        qdev = str(s.get("qdev", ""))
        out.append(
            BlockStats(
                device=qdev.split("/")[-2] if qdev.endswith("/virtio-backend") else qdev,
                node=str(s.get("node-name", "")),
                rd_bytes=int(st.get("rd_bytes", 0)),
                wr_bytes=int(st.get("wr_bytes", 0)),
                rd_operations=int(st.get("rd_operations", 0)),
                wr_operations=int(st.get("wr_operations", 0)),
                failed_rd_operations=int(st.get("failed_rd_operations", 0)),
                failed_wr_operations=int(st.get("failed_wr_operations", 0)),
            )
        )
    return out
