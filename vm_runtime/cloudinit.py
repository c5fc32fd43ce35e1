"""NoCloud seed ISOs (volume label ``cidata``) for ``cloudInitNoCloud`` volumes.

The ISO holds ``meta-data`` (instance-id, local-hostname), ``user-data`` and, when given,
``network-config``. user-data may hold secrets: the staging files and the ISO are mode 0600 and
their content never reaches argv or logs. Built with ``xorriso -as mkisofs`` (``XORRISO``
overrides the binary), else ``genisoimage``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cdi.common.errors import PermanentError


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def meta_data(instance_id: str, hostname: str) -> str:
    return f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n"


def build_nocloud_iso(
    out: Path, *, user_data: str, meta_data_text: str, network_data: str | None = None
) -> Path:
    """Write the seed ISO to ``out`` (replaced atomically) and return ``out``.

    :raises PermanentError: no ISO tool installed, or the tool failed (its stderr attached).
    """
    tool = os.environ.get("XORRISO") or shutil.which("xorriso")
    if tool:
        argv_head = [tool, "-as", "mkisofs"]
    else:
        geniso = shutil.which("genisoimage")
        if not geniso:
            raise PermanentError(
                "no ISO tool: install xorriso (scripts/setup_vm.sh does)", reason="MissingTool"
            )
        argv_head = [geniso]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cidata-", dir=out.parent) as tmp:
        stage = Path(tmp) / "seed"
        stage.mkdir(mode=0o700)
        _write_private(stage / "user-data", user_data)
        _write_private(stage / "meta-data", meta_data_text)
        if network_data:
            _write_private(stage / "network-config", network_data)
        part = Path(tmp) / "cidata.iso"
        argv = [*argv_head, "-quiet", "-o", str(part), "-V", "cidata", "-J", "-r", str(stage)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise PermanentError(
                f"building the cidata ISO failed: {proc.stderr.strip()[-500:]}", reason="CloudInitError"
            )
        os.chmod(part, 0o600)
        os.replace(part, out)
    return out
