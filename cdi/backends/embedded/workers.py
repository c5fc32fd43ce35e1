"""Workers of the embedded backend: local processes, one directory each, each under its own uid.

``<data dir>/workers/<name>/`` (root, 0700) holds ``pid`` ("<pid> <start time>"), ``log``
(stdout+stderr) and ``grants.json`` (what the worker was given, to take back when it ends). Its
``run/`` subdirectory belongs to the worker: ``termination-log`` (the worker's result),
``progress.json``, the upload server's state and socket, and ``secrets/`` (CA bundles, secret
header files, the proxy's shared secret), which is removed as soon as the worker has ended.

A worker runs in its own session (process group), so it survives a restart of the controller;
``status`` then finds it by pid and start time (pid reuse safe), and reads its outcome from the
termination log, which the worker writes on every exit path. A worker that ended without one was
killed: the runner then kills whatever is left of its process group (nbdkit, qemu-img) so that no
stray writer survives into the next attempt.

Least privilege (when the controller runs as root, and ``isolate`` is on): each worker gets a uid
and gid of its own, derived from its name in ``[uid_base, uid_base + uid_count)``, far above
the ids of real users. Before the start the runner gives that uid the run directory, the
worker's volume directory (or block device node) and its scratch directory, and passes a
``cdi.common.confinement.Spec``; the worker confines itself (private mount namespace showing only
those, then the uid with no capabilities) before it reads a byte of its source. When the worker
has ended, every process of its uid is killed, a device node goes back to its owner and mode,
and ``run/secrets`` is deleted. Files the worker wrote are read without following links and only
up to a small size (``cdi.api.contract.read_worker_file``).
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence

from cdi.api import naming
from cdi.api.contract import ENV_PROGRESS_FILE, ENV_TERMINATION_LOG, Progress, WorkerResult, read_worker_file
from cdi.backends.base import WorkerStatus
from cdi.common import confinement
from cdi.common.confinement import Grant
from cdi.common.errors import PermanentError

log = logging.getLogger(__name__)

ENTRYPOINTS: dict[str, list[str]] = {
    "importer": [sys.executable, "-m", "importers"],
    "upload-server": [sys.executable, "-m", "uploadproxy.server"],
}

# The packages each worker loads in full before it drops its privileges.
PRELOAD: dict[str, tuple[str, ...]] = {
    "importer": ("importers", "cdi.datapath"),
    "upload-server": ("uploadproxy.server", "uploadproxy.httputil", "cdi.datapath"),  # not the proxy's TLS/tokens
}

# Only these variables of the controller's environment reach a worker (plus its own settings).
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "http_proxy", "https_proxy", "no_proxy",
             "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "PYTHONPATH")

RUN_DIR = naming.RUN_DIR
SECRETS_DIR = naming.SECRETS_DIR
GRANTS = "grants.json"
UID_BASE = 0x70000000  # 1879048192: above systemd's container range, below its foreign one and 2**31
UID_COUNT = 1_000_000


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

    def __init__(self, root: str, entrypoints: dict[str, list[str]] | None = None, *,
                 isolate: bool | None = None, uid_base: int = UID_BASE, uid_count: int = UID_COUNT,
                 env: dict[str, str] | None = None) -> None:
        """``env``: settings every worker gets (e.g. ``CDI_IMAGE_SANDBOX=off`` from config.yaml)."""
        self.root = root
        self.entrypoints = dict(ENTRYPOINTS if entrypoints is None else entrypoints)
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.isolate = os.geteuid() == 0 if isolate is None else isolate
        if self.isolate and os.geteuid() != 0:
            raise PermanentError("worker isolation needs a controller running as root; set workerIsolation: false")
        self.uid_base, self.uid_count = uid_base, uid_count
        self.env = dict(env or {})

    def _dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _run_dir(self, name: str) -> str:
        return os.path.join(self.root, name, RUN_DIR)

    def workdir(self, name: str) -> str:
        """The worker's run directory (its result, progress and state files go there)."""
        for d in (self._dir(name), self._run_dir(name)):
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, 0o700)
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode):
                raise PermanentError(f"{d} is not a directory; remove it")
        os.chmod(self._dir(name), 0o700)
        return self._run_dir(name)

    def secrets_dir(self, name: str) -> str:
        """A fresh private directory for the worker's secret inputs, deleted when the worker ends."""
        d = os.path.join(self.workdir(name), SECRETS_DIR)
        shutil.rmtree(d, ignore_errors=True)
        os.mkdir(d, 0o700)
        return d

    def held_secret(self, name: str, filename: str) -> str:
        """Where the controller side keeps its copy of a secret it shares with worker ``name``
        (root's, beside the run dir: never one the worker could have replaced); deleted when the
        worker ends, like its secrets_dir."""
        self.workdir(name)
        d = os.path.join(self._dir(name), SECRETS_DIR)
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)
        return os.path.join(d, filename)

    def ids(self, name: str) -> tuple[int, int]:
        """The uid and gid for a new run of worker ``name``: derived from its name, moved on to the
        next free one while another worker that has not been released holds it (two workers must
        never share a uid: the end of one kills every process of its uid)."""
        taken = set()
        for other in os.listdir(self.root):
            if other != name:
                rec = read_worker_file(os.path.join(self.root, other, GRANTS), 4096)
                with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                    taken.add(int(json.loads(rec or "")["uid"]))
        n = zlib.crc32(name.encode()) % self.uid_count
        for i in range(self.uid_count):
            uid = self.uid_base + (n + i) % self.uid_count
            if uid not in taken and not _known_id(uid):
                return uid, uid
        raise PermanentError(f"all {self.uid_count} worker uids are in use; raise workerUidCount in config.yaml")

    def _read_pid(self, name: str) -> tuple[int, str] | None:
        text = read_worker_file(os.path.join(self._dir(name), "pid"), 256)
        try:
            pid, start = (text or "").split()
            return int(pid), start
        except ValueError:
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

    def start(self, name: str, entrypoint: str, env: dict[str, str], grants: Sequence[Grant] = ()) -> None:
        """Start worker ``name``; ``grants`` are the volume and scratch paths it may use."""
        if self._alive(name) is not None:
            return
        argv = self.entrypoints.get(entrypoint)
        if argv is None:
            raise PermanentError(f"unknown worker entrypoint {entrypoint!r}")
        d = self._dir(name)
        run = self.workdir(name)
        for stale in ("termination-log", "progress.json"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(run, stale))
        for stale in ("pid", "exit"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, stale))
        full_env = {k: v for k, v in os.environ.items() if k in _PASS_ENV}
        full_env.update(self.env)
        full_env.update(env)
        full_env[ENV_TERMINATION_LOG] = os.path.join(run, "termination-log")
        full_env[ENV_PROGRESS_FILE] = os.path.join(run, "progress.json")
        full_env["PYTHONUNBUFFERED"] = "1"
        if self.isolate:
            full_env[confinement.ENV_CONFINE] = self._grant(name, entrypoint, run, grants)
        with open(os.path.join(d, "log"), "ab") as logf:
            logf.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} starting {name}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                argv, env=full_env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=run,
            )
        start = _proc_start_time(proc.pid) or "0"
        tmp = os.path.join(d, "pid.tmp")
        with open(tmp, "w") as f:
            f.write(f"{proc.pid} {start}\n")
        os.replace(tmp, os.path.join(d, "pid"))
        self._procs[name] = proc

    def _grant(self, name: str, entrypoint: str, run: str, grants: Sequence[Grant]) -> str:
        """Give the worker's uid its run directory and ``grants``; returns the confinement spec."""
        self._release(name, keep_secrets=True)  # what an earlier run was given, if a crash left it out
        uid, gid = self.ids(name)
        _kill_uid(uid)  # nothing of an earlier run of this uid may still be around
        restore: list[dict[str, object]] = []
        for g in grants:
            st = os.lstat(g.path)
            if g.kind == confinement.DEVICE and not stat.S_ISBLK(st.st_mode):
                raise PermanentError(f"{g.path} is not a block device")
            if g.kind != confinement.DEVICE and not stat.S_ISDIR(st.st_mode):
                raise PermanentError(f"{g.path} is not a directory")
            restore.append({"path": g.path, "kind": g.kind, "uid": st.st_uid, "gid": st.st_gid,
                            "mode": stat.S_IMODE(st.st_mode)})
        # recorded before anything changes hands: a controller that dies here still takes it back
        _write_json(os.path.join(self._dir(name), GRANTS), {"uid": uid, "grants": restore})
        for g in grants:
            os.chown(g.path, uid, gid)
            if g.kind == confinement.DEVICE:
                os.chmod(g.path, 0o600)
        _chown_tree(run, uid, gid)
        spec = confinement.Spec(
            uid, gid, (Grant(confinement.RUN, run), *grants), PRELOAD.get(entrypoint, ()),
        )
        return spec.to_env()

    def _release(self, name: str, keep_secrets: bool = False) -> None:
        """The worker has ended: kill what is left of its uid, give its volume, scratch and device
        back to their owner (everything the worker made in them included: it keeps nothing it could
        come back to), and delete its secrets (idempotent)."""
        path = os.path.join(self._dir(name), GRANTS)
        try:
            with open(path) as f:
                granted = json.load(f)
        except (OSError, ValueError):
            granted = None
        if granted is not None:
            _kill_uid(int(granted["uid"]))
            for g in granted.get("grants") or []:
                with contextlib.suppress(OSError):
                    if g["kind"] == confinement.DEVICE:
                        os.chown(str(g["path"]), int(g["uid"]), int(g["gid"]))
                        os.chmod(str(g["path"]), int(g["mode"]))
                    else:
                        _chown_tree(str(g["path"]), int(g["uid"]), int(g["gid"]))
        if not keep_secrets:
            for d in (os.path.join(self._run_dir(name), SECRETS_DIR), os.path.join(self._dir(name), SECRETS_DIR)):
                shutil.rmtree(d, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def status(self, name: str) -> WorkerStatus | None:
        d = self._dir(name)
        run = self._run_dir(name)
        rec = self._read_pid(name)
        if rec is None:
            return None
        pid, _ = rec
        progress = Progress.read(os.path.join(run, "progress.json"))
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
        term = os.path.join(run, "termination-log")
        text = read_worker_file(term)
        try:
            result = WorkerResult.from_json(text) if text is not None else None
            finished = os.lstat(term).st_mtime
        except (OSError, ValueError):
            finished = time.time()
        if result is None:
            # Killed without a word: make sure no child of it (qemu-img, nbdkit) still writes.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self._release(name)
        return WorkerStatus(name, False, exit_code, sig, result, progress, started, finished, log_path)

    def stop(self, name: str, grace: float = 5.0) -> None:
        pid = self._alive(name)
        if pid is not None:
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
        self._release(name)

    def clear(self, name: str) -> None:
        self.stop(name)
        self._procs.pop(name, None)
        for stale in (os.path.join(RUN_DIR, "termination-log"), os.path.join(RUN_DIR, "progress.json"), "pid"):
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


def _write_json(path: str, data: dict[str, object]) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _chown_tree(top: str, uid: int, gid: int) -> None:
    """chown ``top`` and everything in it, never following a link (the tree is ours: no worker of
    this uid runs while we do this)."""
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            os.chown(os.path.join(dirpath, n), uid, gid, follow_symlinks=False)


def _known_id(uid: int) -> bool:
    """Whether a user or group of this machine has ``uid`` (the end of a worker kills every process
    of its uid: never one that belongs to someone)."""
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        pass
    try:
        grp.getgrgid(uid)
        return True
    except KeyError:
        return False


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (``kill -KILL -1`` run as that uid reaches exactly those)."""
    if uid == 0 or uid == os.geteuid():
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["kill", "-KILL", "-1"], user=uid, group=uid, extra_groups=[],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=10, check=False)
