"""Measuring one run: wall time, CPU of the process tree, peak RSS of the tree, allocated bytes,
and a check of the result against the reference raw image.

A run is one or more processes started by us (a command, or a pipeline of commands connected by
pipes). CPU time comes from ``os.wait4`` of every process we started: the rusage of a waited-for
child includes its own waited-for descendants (nbdkit's ``--run`` command, qemu-img's helpers,
a pipeline member's children). Processes we did not start (an importer worker started by the
controller daemon) are measured by ``TreeSampler`` from /proc instead.

Peak RSS is sampled every ``interval`` seconds (default 50 ms) from /proc: the sum of the
resident set of every live process in the tree, and the largest single process.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20


# --- /proc helpers ----------------------------------------------------------------------------


@dataclass
class ProcStat:
    pid: int
    ppid: int
    state: str
    starttime: int  # clock ticks since boot: (pid, starttime) identifies a process
    utime: float  # seconds
    stime: float
    cutime: float  # waited-for children, seconds
    cstime: float
    rss: int  # bytes


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    rest = data[data.rfind(b")") + 2 :].split()
    # rest[0] = state (field 3); field n is rest[n - 3]
    try:
        return ProcStat(
            pid=pid,
            ppid=int(rest[1]),
            state=rest[0].decode(),
            starttime=int(rest[19]),
            utime=int(rest[11]) / CLK_TCK,
            stime=int(rest[12]) / CLK_TCK,
            cutime=int(rest[13]) / CLK_TCK,
            cstime=int(rest[14]) / CLK_TCK,
            rss=int(rest[21]) * PAGE,
        )
    except (IndexError, ValueError):
        return None


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads), from /proc/PID/task/TID/children."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


_HAVE_CHILDREN_FILE = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _children_by_scan() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = read_stat(int(name))
        if st is not None:
            tree.setdefault(st.ppid, []).append(st.pid)
    return tree


def tree_pids(roots: Iterable[int]) -> list[int]:
    """``roots`` and all their live descendants."""
    roots = list(roots)
    scan = None if _HAVE_CHILDREN_FILE else _children_by_scan()
    seen: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack.extend(children_of(pid) if scan is None else scan.get(pid, []))
    return seen


def cpu_pressure() -> float | None:
    """CPU PSI 'some avg10' (percent), a measure of how contended the machine is right now."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return float(line.split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return None


# --- the sampler ------------------------------------------------------------------------------


class TreeSampler:
    """Samples a process tree from /proc every ``interval`` seconds in a thread.

    ``roots`` is a callable returning the current root pids (so a root that appears later, such
    as a worker started by a daemon, can be picked up). Records the peak of the summed RSS and of
    the largest process, and for CPU the last seen utime+stime of every process in the tree
    (keyed by pid and start time). The sampled CPU misses processes that lived less than one
    interval and the last interval of every process; ``wait4`` figures are exact and preferred.
    """

    def __init__(self, roots: Callable[[], Sequence[int]], interval: float = 0.05) -> None:
        self._roots = roots
        self.interval = interval
        self.peak_tree_rss = 0
        self.peak_proc_rss = 0
        self.peak_proc_name = ""
        self.samples = 0
        self.cpu_last: dict[tuple[int, int], tuple[float, float]] = {}  # (pid, start) -> (u, s)
        self.names: dict[tuple[int, int], str] = {}
        self.first_seen: dict[int, ProcStat] = {}  # root pid -> stat at first sight
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # one last look

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        try:
            roots = list(self._roots())
        except Exception:
            roots = []
        if not roots:
            return
        total = 0
        for pid in tree_pids(roots):
            st = read_stat(pid)
            if st is None or st.state == "Z":
                continue
            if pid in roots and pid not in self.first_seen:
                self.first_seen[pid] = st
            key = (pid, st.starttime)
            self.cpu_last[key] = (st.utime, st.stime)
            total += st.rss
            if st.rss > self.peak_proc_rss:
                self.peak_proc_rss = st.rss
                self.peak_proc_name = _comm(pid)
            if key not in self.names:
                self.names[key] = _comm(pid)
        self.samples += 1
        self.peak_tree_rss = max(self.peak_tree_rss, total)

    @property
    def cpu_user(self) -> float:
        return sum(u for u, _ in self.cpu_last.values())

    @property
    def cpu_sys(self) -> float:
        return sum(s for _, s in self.cpu_last.values())

    def process_names(self) -> list[str]:
        return sorted(set(self.names.values()))


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


# --- results ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One timed run of one tool on one image and target."""

    format: str
    target: str  # file | block
    tool: str
    run: int
    ok: bool = False
    error: str = ""
    rc: int | None = None
    wall_s: float = 0.0
    virtual_size: int = 0
    mbps_virtual: float = 0.0  # MB/s (10^6) of virtual size
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    cpu_s: float = 0.0
    cpu_source: str = ""  # wait4 | reaped | sampled
    peak_rss_tree: int = 0  # bytes
    peak_rss_largest: int = 0
    peak_rss_largest_name: str = ""
    alloc_bytes: int | None = None
    bytes_served: int = 0  # nginx $body_bytes_sent during the run
    nginx_cpu_s: float = 0.0
    cpu_psi_avg10: float | None = None
    check: str = ""  # OK | MISMATCH | ERROR: ...
    processes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def finish(self) -> None:
        self.cpu_s = self.cpu_user_s + self.cpu_sys_s
        if self.wall_s > 0:
            self.mbps_virtual = self.virtual_size / self.wall_s / 1e6

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- running things ---------------------------------------------------------------------------


@dataclass
class Measured:
    rc: int  # the first non-zero exit status, else 0
    rcs: list[int]
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    sampler: TreeSampler
    stderr: str
    maxrss: int = 0  # bytes: the largest ru_maxrss of the waited processes (and their waited children)

    # ru_maxrss is kept for information only: a forked child's high-water mark includes the
    # benchmark's own RSS copied at fork time (Linux folds the pre-exec mm into it), so it is not
    # the tool's figure. Peaks come from the /proc samples.

    @property
    def peak_tree_rss(self) -> int:
        return self.sampler.peak_tree_rss

    @property
    def peak_proc_rss(self) -> int:
        return self.sampler.peak_proc_rss


def run_pipeline(
    commands: Sequence[Sequence[str]],
    *,
    stdout_path: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 900.0,
    sync_path: str | None = None,
    interval: float = 0.05,
) -> Measured:
    """Run ``commands`` connected stdout->stdin (one command is a pipeline of one).

    Wall time runs from the first start to the last exit plus an fsync of ``sync_path``. CPU is
    the wait4 rusage of every member (including what each waited for). stderr of all members is
    collected (last 4 KiB) for error messages.
    """
    procs: list[subprocess.Popen[bytes]] = []
    errf = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    out_f = open(stdout_path, "wb") if stdout_path else None  # noqa: SIM115
    pids: list[int] = []
    sampler = TreeSampler(lambda: pids, interval)
    t0 = time.monotonic()
    try:
        prev_stdout: Any = subprocess.DEVNULL
        for i, argv in enumerate(commands):
            last = i == len(commands) - 1
            p = subprocess.Popen(
                list(argv),
                stdin=prev_stdout,
                stdout=(out_f if out_f else subprocess.DEVNULL) if last else subprocess.PIPE,
                stderr=errf,
                env=env,
                cwd=cwd,
            )
            if prev_stdout is not subprocess.DEVNULL and prev_stdout is not None:
                prev_stdout.close()  # so the upstream member gets SIGPIPE if we die
            prev_stdout = p.stdout
            procs.append(p)
            pids.append(p.pid)
        sampler.start()
        rcs, ru_u, ru_s, maxrss = _wait_all(procs, t0 + timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.kill()
        if out_f:
            out_f.close()
    if sync_path:
        fsync_path(sync_path)
    wall = time.monotonic() - t0
    sampler.stop()
    errf.seek(0)
    err = errf.read()[-4096:].decode(errors="replace")
    errf.close()
    rc = next((r for r in rcs if r != 0), 0)
    return Measured(rc, rcs, wall, ru_u, ru_s, sampler, err, maxrss)


def _wait_all(procs: list[subprocess.Popen[bytes]], deadline: float) -> tuple[list[int], float, float, int]:
    """wait4 every process (so we get its rusage); kill all on the deadline."""
    user = sys_ = 0.0
    maxrss = 0
    rcs: dict[int, int] = {}
    pending = {p.pid: p for p in procs}
    killed = False
    while pending:
        for pid in list(pending):
            wpid, status, ru = os.wait4(pid, os.WNOHANG)
            if wpid == 0:
                continue
            user += ru.ru_utime
            sys_ += ru.ru_stime
            maxrss = max(maxrss, ru.ru_maxrss * 1024)
            rcs[pid] = os.waitstatus_to_exitcode(status)
            pending[pid].returncode = rcs[pid]
            del pending[pid]
        if not pending:
            break
        if not killed and time.monotonic() > deadline:
            killed = True
            for p in pending.values():
                with contextlib.suppress(OSError):
                    p.kill()
        time.sleep(0.005)
    return [rcs[p.pid] for p in procs], user, sys_, maxrss


def fsync_path(path: str) -> None:
    """fsync a file or block device (what ``sync PATH`` does)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- allocated bytes and verification -----------------------------------------------------------


def allocated_bytes(path: str, backing_file: str | None = None) -> int | None:
    """st_blocks*512 of a file; for a block device, of its backing file (when known)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISBLK(st.st_mode):
        if backing_file is None:
            backing_file = loop_backing_file(path)
        if backing_file is None:
            return None
        try:
            return os.stat(backing_file).st_blocks * 512
        except OSError:
            return None
    return st.st_blocks * 512


def loop_backing_file(device: str) -> str | None:
    name = os.path.basename(os.path.realpath(device))
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return None


def verify(reference: str, result: str, virtual_size: int, method: str = "compare") -> str:
    """Compare ``result`` with the reference raw image: "OK", "MISMATCH: ..." or "ERROR: ...".

    ``compare``: ``qemu-img compare`` (reads only allocated data of files; checks that whatever
    lies beyond the reference's size is zero). ``sha256``: hash the first ``virtual_size`` bytes
    of both and check that the rest of the result is zero.
    """
    if not os.path.exists(result):
        return "ERROR: result missing"
    if method == "compare":
        p = subprocess.run(
            ["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", reference, result],
            capture_output=True,
            text=True,
        )
        if p.returncode == 0:
            return "OK"
        if p.returncode == 1:
            return "MISMATCH"
        return f"ERROR: qemu-img compare rc={p.returncode}: {p.stderr.strip()[:200]}"
    ref = sha256_prefix(reference, virtual_size)
    got = sha256_prefix(result, virtual_size)
    if got is None:
        return "MISMATCH: result shorter than the image"
    if ref != got:
        return "MISMATCH"
    if not tail_is_zero(result, virtual_size):
        return "MISMATCH: non-zero bytes after the image's end"
    return "OK"


def sha256_prefix(path: str, length: int) -> str | None:
    import hashlib

    h = hashlib.sha256()
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    done = 0
    with open(path, "rb", buffering=0) as f:
        while done < length:
            n = f.readinto(view[: min(len(buf), length - done)])
            if not n:
                return None
            h.update(view[:n])
            done += n
    return h.hexdigest()


def tail_is_zero(path: str, start: int) -> bool:
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        pos = start
        while True:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                return True  # no data after start (ENXIO), or SEEK_DATA unsupported: read on
            f.seek(pos)
            chunk = f.read(4 * MiB)
            if not chunk:
                return True
            if chunk.count(0) != len(chunk):
                return False
            pos += len(chunk)


def median(values: Sequence[float]) -> float:
    v = sorted(values)
    if not v:
        return 0.0
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
