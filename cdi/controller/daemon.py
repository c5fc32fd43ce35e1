"""The controller as a daemon: one per data dir, started by ``cdi serve`` or on demand.

A lock file (``controller.lock``, flock) guarantees one controller per data dir; its pid is in
``controller.pid`` and its log in ``controller.log``. Workers run in their own sessions, so
stopping or restarting the controller does not stop imports: a new controller picks them up.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from cdi.common.locks import lock_held

LOCK = "controller.lock"
PID = "controller.pid"
LOG = "controller.log"
CODE = "controller.code"  # fingerprint of the code the running controller loaded
_PACKAGES = ("cdi", "importers", "uploadproxy", "vm_runtime")


def code_fingerprint() -> str:
    """Changes whenever a source file of the project changes (an upgrade, a git pull)."""
    import hashlib

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    h = hashlib.sha256()
    for pkg in _PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, pkg)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for f in sorted(filenames):
                if f.endswith(".py"):
                    st = os.stat(os.path.join(dirpath, f))
                    h.update(f"{dirpath}/{f}:{st.st_mtime_ns}:{st.st_size}\n".encode())
    return h.hexdigest()[:16]


def _lock_held(data_dir: str) -> bool:
    return lock_held(os.path.join(data_dir, LOCK))


def _pid(data_dir: str) -> int | None:
    try:
        with open(os.path.join(data_dir, PID)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def status(data_dir: str) -> dict[str, Any]:
    running = _lock_held(data_dir)
    return {"running": running, "pid": _pid(data_dir) if running else None, "log": os.path.join(data_dir, LOG)}


def ensure_running(data_dir: str, timeout: float = 10.0) -> None:
    """Start the controller for ``data_dir`` in the background unless one runs."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    if _lock_held(data_dir):
        try:
            with open(os.path.join(data_dir, CODE)) as f:
                running_code = f.read().strip()
        except OSError:
            running_code = ""
        if running_code == code_fingerprint():
            return
        # The code changed under a running controller: restart it (workers keep running).
        stop(data_dir)
    with open(os.path.join(data_dir, LOG), "ab") as logf:
        subprocess.Popen(
            [sys.executable, "-m", "cdi.controller.daemon", data_dir],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _lock_held(data_dir):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the controller did not start; see {os.path.join(data_dir, LOG)}")


def stop(data_dir: str, timeout: float = 15.0) -> bool:
    """Stop the controller; returns False if none was running."""
    if not _lock_held(data_dir):
        return False
    pid = _pid(data_dir)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _lock_held(data_dir):
        time.sleep(0.05)
    if _lock_held(data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def stop_upload_proxy(data_dir: str) -> bool:
    """Stop the upload proxy of ``data_dir`` (the controller or ``cdi image-upload`` starts it when
    needed); returns False if none was running."""
    try:
        from cdi.controller.upload import stop_proxy
    except ImportError:
        return False
    return stop_proxy(data_dir)


def serve(data_dir: str) -> int:
    """Run the controller in the foreground until SIGTERM or SIGINT."""
    from cdi.backends.embedded import datadir
    from cdi.common.errors import PermanentError
    from cdi.controller.manager import Manager

    try:  # before writing anything into it: a data dir another user owns is refused
        datadir.secure(data_dir)
    except PermanentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    fd = os.open(os.path.join(data_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"a controller already runs for {data_dir} (pid {_pid(data_dir)})", file=sys.stderr)
        return 1
    with open(os.path.join(data_dir, PID), "w") as f:
        f.write(f"{os.getpid()}\n")
    with open(os.path.join(data_dir, CODE), "w") as f:
        f.write(code_fingerprint() + "\n")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manager = Manager.embedded(data_dir)
    for extension in _extensions():
        extension(manager)

    def _stop(signum: int, frame: object) -> None:
        manager.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        manager.run()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(data_dir, PID))
        os.close(fd)
    return 0


def _extensions() -> list[Any]:
    """Reconcilers of other components (VM runtime, upload) that register themselves if installed."""
    out = []
    for mod in ("cdi.controller.vm", "cdi.controller.upload"):
        try:
            m = __import__(mod, fromlist=["register"])
        except ImportError:
            continue
        out.append(m.register)
    return out


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
