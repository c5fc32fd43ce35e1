"""pycdi's importer, run the ways the benchmark knows ("ours").

``dv`` (default): the real DataVolume path. ``cdi apply`` a DataVolume with an http source, then
``cdi wait dv NAME --for=condition=Ready``; the controller daemon (started on demand by the CLI
for the benchmark's own data dir) runs the importer worker. Wall time runs from ``apply`` to
``wait`` returning, plus an fsync of the disk. The worker (``<data dir>/workers/<name>/pid``) and
its children are sampled from /proc for RSS; its CPU is the growth of the controller's reaped-
children time (cutime+cstime) across the run, which is exact once the controller has reaped the
worker, and falls back to the /proc samples otherwise.

``worker``: ``python -m importers`` started directly by the benchmark with the settings of
``cdi.api.contract.ImportSettings.to_env()`` (Filesystem: a directory; Block: the benchmark's
loop device). It is a child of the benchmark, so its CPU comes exactly from wait4.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.measure import (
    CLK_TCK,
    MiB,
    RunResult,
    TreeSampler,
    fsync_path,
    read_stat,
    run_pipeline,
)
from cdi.api.naming import worker_name as _worker_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE = "default"
DISK_PATH_ANN = "embedded.cdi.kubevirt.io/disk-path"
BACKING_FILE_ANN = "embedded.cdi.kubevirt.io/backing-file"


@dataclass
class OursOutcome:
    """What a run of ours produced: where the disk is and how it went."""

    ok: bool
    error: str = ""
    disk_path: str | None = None
    backing_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def fs_capacity(virtual_size: int, overhead: float = 0.06) -> int:
    """A Filesystem volume capacity whose usable size holds ``virtual_size`` (with margin)."""
    need = int(virtual_size * (1 + overhead) * 1.02) + MiB
    return (need + MiB - 1) // MiB * MiB


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


# --- worker mode ------------------------------------------------------------------------------


class WorkerMode:
    tool = "ours-worker"

    def __init__(self, workdir: str, python: str = sys.executable) -> None:
        self.workdir = os.path.abspath(workdir)
        self.python = python

    def check(self) -> str | None:
        """None if runnable, else why not."""
        p = subprocess.run(
            [
                self.python,
                "-c",
                "import importlib.util as u, cdi.api.contract\nassert u.find_spec('importers.__main__'), 'no importers/__main__.py'",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if p.returncode != 0:
            return "python -m importers is not importable: " + (p.stderr.strip().splitlines() or ["?"])[-1]
        return None

    def run(
        self,
        res: RunResult,
        url: str,
        virtual_size: int,
        target_kind: str,
        block_device: str | None,
        timeout: float,
    ) -> OursOutcome:
        from cdi.api.contract import BLOCK, FILESYSTEM, ImportSettings, WorkerResult

        d = os.path.join(self.workdir, "ours-worker")
        shutil.rmtree(d, ignore_errors=True)
        data_dir = os.path.join(d, "data")
        os.makedirs(data_dir)
        term = os.path.join(d, "termination-log")
        progress = os.path.join(d, "progress.json")
        if target_kind == "block":
            assert block_device
            size = _device_size(block_device)
            settings = ImportSettings(
                source="http",
                endpoint=url,
                image_size=size,
                volume_mode=BLOCK,
                block_device=block_device,
                termination_log=term,
                progress_file=progress,
            )
        else:
            settings = ImportSettings(
                source="http",
                endpoint=url,
                image_size=fs_capacity(virtual_size),
                volume_mode=FILESYSTEM,
                data_dir=data_dir,
                termination_log=term,
                progress_file=progress,
            )
        env = _clean_env()
        env.update(settings.to_env())
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        target = settings.target_path
        m = run_pipeline([[self.python, "-m", "importers"]], env=env, cwd=d, timeout=timeout, sync_path=None)
        # the disk is complete and synced when the worker exits; fsync is cheap then but counted
        t = time.monotonic()
        fsync_path(target)
        m.wall_s += time.monotonic() - t
        res.wall_s = m.wall_s
        res.rc = m.rc
        res.cpu_user_s, res.cpu_sys_s, res.cpu_source = m.cpu_user_s, m.cpu_sys_s, "wait4"
        res.peak_rss_tree = m.peak_tree_rss
        res.peak_rss_largest = m.peak_proc_rss
        res.peak_rss_largest_name = m.sampler.peak_proc_name
        res.processes = m.sampler.process_names()
        result = None
        with contextlib.suppress(OSError, ValueError), open(term) as f:
            result = WorkerResult.from_json(f.read())
        extra: dict[str, Any] = {"stderr_tail": m.stderr[-1500:]} if m.rc else {}
        if result is not None:
            extra["result"] = {k: v for k, v in json.loads(result.to_json()).items() if k != "version"}
        ok = m.rc == 0 and result is not None and str(result.outcome) == "Succeeded"
        err = "" if ok else (f"worker rc={m.rc}: " + (result.message if result else m.stderr.strip()[-300:]))
        return OursOutcome(ok, err, target, None, extra)


def _device_size(dev: str) -> int:
    fd = os.open(dev, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


# --- DataVolume mode --------------------------------------------------------------------------


class DataVolumeMode:
    tool = "ours-dv"

    def __init__(self, workdir: str, cdi: str | None = None) -> None:
        self.workdir = os.path.abspath(workdir)
        self.data_dir = os.path.join(self.workdir, "cdi-data")
        venv_cdi = os.path.join(os.path.dirname(sys.executable), "cdi")
        self.cdi = cdi or (venv_cdi if os.path.exists(venv_cdi) else shutil.which("cdi") or "cdi")
        self.env = _clean_env()
        self.env.pop("CDI_DATA_DIR", None)

    def _cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cdi, "--data-dir", self.data_dir, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )

    def check(self) -> str | None:
        if not os.path.exists(self.cdi) and not shutil.which(self.cdi):
            return f"the cdi command ({self.cdi}) is not installed"
        try:
            p = self._cli("--help", timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"cdi --help failed: {e}"
        if p.returncode != 0:
            return "cdi --help failed: " + (p.stderr.strip().splitlines() or ["?"])[-1]
        for word in ("apply", "wait", "get", "delete"):
            if word not in p.stdout:
                return f"the cdi CLI has no '{word}' command yet"
        return None

    def manifest(self, name: str, url: str, virtual_size: int, target_kind: str) -> dict[str, Any]:
        if target_kind == "block":
            mode, capacity = "Block", (virtual_size + MiB - 1) // MiB * MiB
        else:
            mode, capacity = "Filesystem", fs_capacity(virtual_size)
        return {
            "apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "DataVolume",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "source": {"http": {"url": url}},
                "storage": {
                    "volumeMode": mode,
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": f"{capacity // MiB}Mi"}},
                },
            },
        }

    def _worker_dir(self, name: str) -> str:
        return os.path.join(self.data_dir, "workers", _worker_name("importer", NAMESPACE, name))

    def run(
        self,
        res: RunResult,
        url: str,
        virtual_size: int,
        target_kind: str,
        block_device: str | None,
        timeout: float,
    ) -> OursOutcome:
        import yaml

        name = f"bench-{res.format}-{res.target}-{res.run}".lower().replace("_", "-")
        os.makedirs(self.data_dir, exist_ok=True)
        self._cli("delete", "dv", name, timeout=120)  # leftovers of an interrupted run
        manifest_path = os.path.join(self.workdir, f"{name}.yaml")
        with open(manifest_path, "w") as f:
            yaml.safe_dump(self.manifest(name, url, virtual_size, target_kind), f)
        wdir = self._worker_dir(name)
        state: dict[str, Any] = {}

        def roots() -> list[int]:
            if "pid" not in state:
                pids = glob.glob(os.path.join(wdir, "pid"))
                if not pids:
                    return []
                try:
                    with open(pids[0]) as f:
                        pid = int(f.read().split()[0])
                except (OSError, ValueError, IndexError):
                    return []
                st = read_stat(pid)
                if st is None:
                    state["pid"] = pid
                    state["missed"] = True
                    return []
                state["pid"] = pid
                state["start_boot"] = st.starttime / CLK_TCK
                parent = read_stat(st.ppid)
                if parent is not None:
                    state["parent"] = parent
                    state["parent_children_cpu0"] = parent.cutime + parent.cstime
                    state["parent_self_cpu0"] = parent.utime + parent.stime
            st = read_stat(state["pid"])
            if st is not None and st.state != "Z":
                state["last_alive_boot"] = time.clock_gettime(time.CLOCK_BOOTTIME)
            return [state["pid"]]

        # clear a stale pid file from an earlier run of the same name
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(wdir, "pid"))
        sampler = TreeSampler(roots, 0.05).start()
        t0 = time.monotonic()
        t0_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        cli_cpu = 0.0
        apply = run_pipeline(
            [[self.cdi, "--data-dir", self.data_dir, "apply", "-f", manifest_path]], env=self.env, timeout=120
        )
        cli_cpu += apply.cpu_user_s + apply.cpu_sys_s
        if apply.rc != 0:
            sampler.stop()
            return OursOutcome(False, f"cdi apply failed (rc={apply.rc}): {apply.stderr.strip()[-300:]}")
        wait = run_pipeline(
            [
                [
                    self.cdi,
                    "--data-dir",
                    self.data_dir,
                    "wait",
                    "dv",
                    name,
                    "--for=condition=Ready",
                    f"--timeout={int(timeout)}s",
                ]
            ],
            env=self.env,
            timeout=timeout + 30,
        )
        wall = time.monotonic() - t0
        cli_cpu += wait.cpu_user_s + wait.cpu_sys_s
        # let the controller reap the worker so its CPU shows in the controller's cutime
        pid = state.get("pid")
        deadline = time.monotonic() + 5
        while pid and time.monotonic() < deadline and read_stat(pid) is not None:  # a zombie too
            time.sleep(0.02)
        sampler.stop()
        extra: dict[str, Any] = {"cli_cpu_s": round(cli_cpu, 3), "data_dir": self.data_dir}
        # where the wall time went (50 ms resolution): CLI apply + controller until the worker
        # started, the worker's life, and from its exit until `cdi wait` returned
        phases: dict[str, float] = {"apply_cli_s": round(apply.wall_s, 3)}
        if "start_boot" in state:
            phases["until_worker_start_s"] = round(state["start_boot"] - t0_boot, 3)
            if "last_alive_boot" in state:
                phases["worker_s"] = round(state["last_alive_boot"] - state["start_boot"], 3)
                phases["after_worker_exit_s"] = round(t0_boot + wall - state["last_alive_boot"], 3)
        extra["phases"] = phases
        res.peak_rss_tree = sampler.peak_tree_rss
        res.peak_rss_largest = sampler.peak_proc_rss
        res.peak_rss_largest_name = sampler.peak_proc_name
        res.processes = sampler.process_names()
        res.cpu_user_s, res.cpu_sys_s, res.cpu_source = sampler.cpu_user, sampler.cpu_sys, "sampled"
        parent: Any = state.get("parent")
        if parent is not None and read_stat(pid or -1) is None:
            now = read_stat(parent.pid)
            if now is not None and now.starttime == parent.starttime:
                reaped = now.cutime + now.cstime - state["parent_children_cpu0"]
                extra["controller_cpu_s_after_worker_start"] = round(
                    now.utime + now.stime - state["parent_self_cpu0"], 3
                )
                extra["cpu_sampled_s"] = round(sampler.cpu_user + sampler.cpu_sys, 3)
                if reaped > 0:
                    # user/sys split of the reaped figure is not kept apart; scale the samples
                    sampled = sampler.cpu_user + sampler.cpu_sys
                    share = sampler.cpu_user / sampled if sampled > 0 else 1.0
                    res.cpu_user_s, res.cpu_sys_s = reaped * share, reaped * (1 - share)
                    res.cpu_source = "reaped"
        if state.get("missed") or pid is None:
            extra["note"] = "worker not seen by the sampler (it ended too fast or never started)"
        res.wall_s = wall
        res.rc = wait.rc
        if wait.rc != 0:
            desc = self._cli("get", "dv", name, "-o", "json", timeout=60)
            extra["dv"] = desc.stdout[-2000:]
            err = f"cdi wait failed (rc={wait.rc}): {(wait.stderr or '').strip()[-300:]}"
            return OursOutcome(False, err, extra=extra)
        pvc = self._cli("get", "pvc", name, "-o", "json", timeout=60)
        try:
            ann = json.loads(pvc.stdout)["metadata"]["annotations"]
            disk = ann[DISK_PATH_ANN]
        except (ValueError, KeyError, TypeError):
            return OursOutcome(
                False,
                f"no {DISK_PATH_ANN} on pvc {name}: {pvc.stdout[-300:]} {pvc.stderr[-300:]}",
                extra=extra,
            )
        t = time.monotonic()
        fsync_path(disk)
        res.wall_s += time.monotonic() - t
        return OursOutcome(True, "", disk, ann.get(BACKING_FILE_ANN), extra)

    def cleanup_run(self, res: RunResult) -> None:
        name = f"bench-{res.format}-{res.target}-{res.run}".lower().replace("_", "-")
        self._cli("delete", "dv", name, timeout=120)

    def shutdown(self) -> str:
        """Stop the controller daemon the benchmark's CLI calls started for its data dir."""
        try:
            sys.path.insert(0, REPO)
            from cdi.controller import daemon

            return "stopped" if daemon.stop(self.data_dir) else "not running"
        except Exception as e:  # the daemon module may change; report, do not fail the run
            return f"could not stop the controller: {e}"


def make_modes(spec: str, workdir: str) -> list[WorkerMode | DataVolumeMode]:
    modes: list[WorkerMode | DataVolumeMode] = []
    for name in [s for s in spec.split(",") if s and s != "none"]:
        if name in ("dv", "cli"):
            modes.append(DataVolumeMode(workdir))
        elif name == "worker":
            modes.append(WorkerMode(workdir))
        else:
            raise SystemExit(f"--ours: unknown mode {name!r} (dv, worker, none)")
    return modes
