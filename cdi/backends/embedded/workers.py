"""Workers of the embedded backend: local processes, one directory each.

``<data dir>/workers/<name>/`` holds ``pid`` ("<pid> <start time>"), ``log`` (stdout+stderr),
``termination-log`` (the worker's result), ``progress.json`` and the worker's private files
(CA bundles, secret header files; the directory is mode 0700). A worker runs in its own session
(process group), so it survives a restart of the controller; ``status`` then finds it by pid
and start time (pid reuse safe), and reads its outcome from the termination log, which the
worker writes on every exit path. A worker that ended without one was killed: the runner then
kills whatever is left of its process group (nbdkit, qemu-img) so that no stray writer
survives into the next attempt.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

from cdi.api.contract import ENV_PROGRESS_FILE, ENV_TERMINATION_LOG, Progress, WorkerResult
from cdi.backends.base import WorkerStatus
from cdi.common.errors import PermanentError

ENTRYPOINTS: dict[str, list[str]] = {
    "importer": [sys.executable, "-m", "importers"],
    "upload-server": [sys.executable, "-m", "uploadproxy.server"],
}

# Only these variables of the controller's environment reach a worker (plus its own settings).
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "http_proxy", "https_proxy", "no_proxy",
             "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "PYTHONPATH",
             "CDI_IMAGE_SANDBOX")  # cdi.datapath.sandbox.ENV_SWITCH


def _proc_start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # zombie: it has exited
        return None
    return fields[19]  # starttime (field 22 of stat, counting from 1)


class LocalWorkers:
    """WorkerRunner over local processes."""

    def __init__(self, root: str, entrypoints: dict[str, list[str]] | None = None) -> None:
        self.root = root
        self.entrypoints = dict(ENTRYPOINTS if entrypoints is None else entrypoints)
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def _dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def workdir(self, name: str) -> str:
        d = self._dir(name)
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        return d

    def _read_pid(self, name: str) -> tuple[int, str] | None:
        try:
            with open(os.path.join(self._dir(name), "pid")) as f:
                pid, start = f.read().split()
            return int(pid), start
        except (OSError, ValueError):
            return None

    def _alive(self, name: str) -> int | None:
        """The worker's pid while it runs, else None."""
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is not None:
            return None
        rec = self._read_pid(name)
        if rec is None:
            return None
        pid, start = rec
        return pid if _proc_start_time(pid) == start else None

    def start(self, name: str, entrypoint: str, env: dict[str, str]) -> None:
        if self._alive(name) is not None:
            return
        argv = self.entrypoints.get(entrypoint)
        if argv is None:
            raise PermanentError(f"unknown worker entrypoint {entrypoint!r}")
        d = self.workdir(name)
        for stale in ("termination-log", "progress.json", "pid", "exit"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, stale))
        full_env = {k: v for k, v in os.environ.items() if k in _PASS_ENV}
        full_env.update(env)
        full_env[ENV_TERMINATION_LOG] = os.path.join(d, "termination-log")
        full_env[ENV_PROGRESS_FILE] = os.path.join(d, "progress.json")
        full_env["PYTHONUNBUFFERED"] = "1"
        with open(os.path.join(d, "log"), "ab") as logf:
            logf.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} starting {name}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                argv, env=full_env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=d,
            )
        start = _proc_start_time(proc.pid) or "0"
        tmp = os.path.join(d, "pid.tmp")
        with open(tmp, "w") as f:
            f.write(f"{proc.pid} {start}\n")
        os.replace(tmp, os.path.join(d, "pid"))
        self._procs[name] = proc

    def status(self, name: str) -> WorkerStatus | None:
        d = self._dir(name)
        rec = self._read_pid(name)
        if rec is None:
            return None
        pid, _ = rec
        progress = Progress.read(os.path.join(d, "progress.json"))
        started = os.stat(os.path.join(d, "pid")).st_mtime
        log_path = os.path.join(d, "log")
        if self._alive(name) is not None:
            return WorkerStatus(name, True, None, None, None, progress, started, None, log_path)
        exit_code: int | None = None
        sig: int | None = None
        proc = self._procs.get(name)
        if proc is not None and proc.returncode is None:
            # it ended between _alive's poll and its /proc check (a zombie counts as ended): collect it
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        if proc is not None and proc.returncode is not None:
            if proc.returncode < 0:
                sig = -proc.returncode
            else:
                exit_code = proc.returncode
        result: WorkerResult | None = None
        term = os.path.join(d, "termination-log")
        try:
            with open(term) as f:
                result = WorkerResult.from_json(f.read())
            finished = os.stat(term).st_mtime
        except (OSError, ValueError):
            finished = time.time()
        if result is None:
            # Killed without a word: make sure no child of it (qemu-img, nbdkit) still writes.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        return WorkerStatus(name, False, exit_code, sig, result, progress, started, finished, log_path)

    def stop(self, name: str, grace: float = 5.0) -> None:
        pid = self._alive(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._alive(name) is not None:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        proc = self._procs.get(name)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def clear(self, name: str) -> None:
        self.stop(name)
        self._procs.pop(name, None)
        for stale in ("termination-log", "progress.json", "pid"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._dir(name), stale))

    def delete(self, name: str) -> None:
        self.stop(name)
        self._procs.pop(name, None)
        shutil.rmtree(self._dir(name), ignore_errors=True)

    def reap(self) -> None:
        """Collect exit codes of finished children (call from the controller loop)."""
        for proc in self._procs.values():
            proc.poll()
