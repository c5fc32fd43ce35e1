#!/usr/bin/env python3
"""Benchmark for issue 3: pycdi's one-pass HTTP importer against standard tools, in one run.

    .venv/bin/python bench/run.py [--quick] [--only raw,gz] [--targets file,block] [--runs N]
                                  [--ours dv,worker|none] [--baselines default|all|none|NAMES]
                                  [--out bench/out]

See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench import baselines as B  # noqa: E402
from bench import images as I  # noqa: E402
from bench.measure import (  # noqa: E402
    MiB,
    RunResult,
    allocated_bytes,
    cpu_pressure,
    median,
    run_pipeline,
    verify,
)
from bench.ours import DataVolumeMode, WorkerMode, make_modes  # noqa: E402
from bench.serve import Nginx  # noqa: E402

# CDI's importer as measured in shared/research/perf-anchors.md (best MB/s of virtual size,
# 4 GiB images; file target / block target).
CDI_MBPS: dict[str, tuple[float, float]] = {
    "raw": (390, 336),
    "qcow2": (489, 462),
    "qcow2c": (401, 340),
    "gz": (326, 322),
    "xz": (60, 51),
    "sparse": (906, 950),
    "sqcow2": (2026, 1835),
}
RSS_LIMIT = 64 * MiB
FIXED_OVERHEAD_LIMIT_S = 1.0


LOG_LINES: list[str] = []


def log(msg: str) -> None:
    LOG_LINES.append(msg)
    print(msg, flush=True)


# --- targets ----------------------------------------------------------------------------------


class Targets:
    """The file target (a path, deleted before each run) and the block target (a loop device
    over a sparse file, discarded before each run)."""

    def __init__(self, workdir: str, kinds: list[str], block_size: int) -> None:
        self.dir = os.path.join(workdir, "tgt")
        os.makedirs(self.dir, exist_ok=True)
        self.file = os.path.join(self.dir, "disk.img")
        self.backing = os.path.join(self.dir, "block.img")
        self.device: str | None = None
        if "block" in kinds:
            with open(self.backing, "wb") as f:
                f.truncate(0)
                f.truncate(block_size)
            p = subprocess.run(
                ["losetup", "--direct-io=on", "--find", "--show", self.backing],
                capture_output=True,
                text=True,
            )
            if p.returncode != 0:
                raise SystemExit(f"losetup failed (root needed for the block target): {p.stderr.strip()}")
            self.device = p.stdout.strip()

    def path(self, kind: str) -> str:
        if kind == "block":
            assert self.device
            return self.device
        return self.file

    def reset(self, kind: str) -> None:
        if kind == "block":
            assert self.device
            subprocess.run(["blkdiscard", self.device], check=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.file)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.file + ".scratch")
        os.sync()

    def close(self) -> None:
        if self.device:
            subprocess.run(["losetup", "-d", self.device], check=False)
            self.device = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.backing)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file)


# --- one run ----------------------------------------------------------------------------------


def run_baseline(
    b: B.Baseline,
    img: I.ImageInfo,
    fmt: I.Format,
    url: str,
    kind: str,
    tg: Targets,
    nginx: Nginx,
    run: int,
    verify_method: str,
    timeout: float,
) -> RunResult:
    res = RunResult(format=fmt.name, target=kind, tool=b.name, run=run, virtual_size=img.virtual_size)
    target = tg.path(kind)
    tg.reset(kind)
    ctx = B.Ctx(
        url=url,
        src_path=img.path,
        fmt=fmt,
        target=target,
        target_kind=kind,
        virtual_size=img.virtual_size,
        threads=min(2, os.cpu_count() or 1),
    )
    cmds = b.build(ctx)
    res.extra["argv"] = cmds
    res.cpu_psi_avg10 = cpu_pressure()
    mark = nginx.mark()
    m = run_pipeline(cmds, timeout=timeout, sync_path=target, env=_env())
    res.bytes_served, reqs, res.nginx_cpu_s = nginx.since(mark)
    res.extra["http_requests"] = reqs
    res.rc = m.rc
    res.wall_s = m.wall_s
    res.cpu_user_s, res.cpu_sys_s, res.cpu_source = m.cpu_user_s, m.cpu_sys_s, "wait4"
    res.peak_rss_tree = m.peak_tree_rss
    res.peak_rss_largest = m.peak_proc_rss
    res.peak_rss_largest_name = m.sampler.peak_proc_name
    res.processes = m.sampler.process_names()
    if m.rc != 0:
        res.error = f"rc={m.rcs}: {m.stderr.strip()[-300:]}"
    res.alloc_bytes = allocated_bytes(target, tg.backing if kind == "block" else None)
    res.check = verify(img.reference, target, img.virtual_size, verify_method)
    res.ok = m.rc == 0 and res.check == "OK"
    res.finish()
    return res


def run_ours(
    mode: WorkerMode | DataVolumeMode,
    img: I.ImageInfo,
    fmt: I.Format,
    url: str,
    kind: str,
    tg: Targets,
    nginx: Nginx,
    run: int,
    verify_method: str,
    timeout: float,
) -> RunResult:
    res = RunResult(format=fmt.name, target=kind, tool=mode.tool, run=run, virtual_size=img.virtual_size)
    block = None
    if isinstance(mode, WorkerMode):
        tg.reset(kind)
        block = tg.device if kind == "block" else None
    else:
        os.sync()
    res.cpu_psi_avg10 = cpu_pressure()
    mark = nginx.mark()
    try:
        out = mode.run(res, url, img.virtual_size, kind, block, timeout)
    except Exception as e:  # a crash of the harness around ours must not lose the other results
        res.error = f"{type(e).__name__}: {e}"
        res.finish()
        return res
    res.bytes_served, reqs, res.nginx_cpu_s = nginx.since(mark)
    res.extra.update(out.extra)
    res.extra["http_requests"] = reqs
    if not out.ok or not out.disk_path:
        res.error = out.error or "no disk"
        res.check = "ERROR: import failed"
    else:
        res.extra["disk_path"] = out.disk_path
        res.alloc_bytes = allocated_bytes(out.disk_path, out.backing_file)
        res.check = verify(img.reference, out.disk_path, img.virtual_size, verify_method)
        res.ok = res.check == "OK"
    if isinstance(mode, DataVolumeMode):
        mode.cleanup_run(res)
    res.finish()
    return res


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


# --- reporting --------------------------------------------------------------------------------


def fmt_mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:.0f}"


def summarize_tool(runs: list[RunResult]) -> dict[str, Any]:
    ok = [r for r in runs if r.ok]
    best = max(ok, key=lambda r: r.mbps_virtual) if ok else None
    return {
        "tool": runs[0].tool,
        "runs": len(runs),
        "runs_ok": len(ok),
        "best_mbps": best.mbps_virtual if best else None,
        "median_mbps": median([r.mbps_virtual for r in ok]) if ok else None,
        "median_cpu_s": median([r.cpu_s for r in ok]) if ok else None,
        "cpu_source": best.cpu_source if best else None,
        "max_rss_tree": max((r.peak_rss_tree for r in runs), default=0),
        "max_rss_largest": max((r.peak_rss_largest for r in runs), default=0),
        "alloc_bytes": best.alloc_bytes if best else (runs[-1].alloc_bytes if runs else None),
        "max_alloc_bytes": max((r.alloc_bytes or 0 for r in ok), default=None),
        "served_bytes": best.bytes_served if best else None,
        "checks": sorted({r.check or "-" for r in runs}),
        "errors": [r.error for r in runs if r.error][:3],
    }


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    log(f"\n#### {title}\n")
    log(
        "| tool | runs ok | best MB/s (virt) | median MB/s | median CPU s | peak RSS MiB (largest / tree) "
        "| alloc MiB | served MiB | check |"
    )
    log("|---|---|---|---|---|---|---|---|---|")
    rows = sorted(rows, key=lambda r: -(r["best_mbps"] or 0))
    for r in rows:
        best = f"**{r['best_mbps']:.0f}**" if r["best_mbps"] else "-"
        med = f"{r['median_mbps']:.0f}" if r["median_mbps"] else "-"
        cpu = f"{r['median_cpu_s']:.2f}" if r["median_cpu_s"] is not None else "-"
        if r["cpu_source"] == "sampled":
            cpu += " (sampled)"
        check = ", ".join(r["checks"])
        if r["errors"]:
            check += f" ({r['errors'][0][:120]})"
        served = fmt_mib(r["served_bytes"]) if r["served_bytes"] is not None else "-"
        tool = r["tool"].replace("|", "\\|")
        log(
            f"| {tool} | {r['runs_ok']}/{r['runs']} | {best} | {med} | {cpu} | "
            f"{fmt_mib(r['max_rss_largest'])} / {fmt_mib(r['max_rss_tree'])} | {fmt_mib(r['alloc_bytes'])} | "
            f"{served} | {check} |"
        )


def evaluate(
    fmt: str, kind: str, rows: dict[str, dict[str, Any]], ours_tool: str, img: I.ImageInfo, quick: bool
) -> list[dict[str, Any]]:
    """The issue's targets for one format and target kind; one dict per check."""
    ours = rows.get(ours_tool)
    checks: list[dict[str, Any]] = []
    if ours is None:
        return checks
    o = ours["best_mbps"]
    cdi = CDI_MBPS.get(fmt, (0, 0))[0 if kind == "file" else 1]
    indicative = " (indicative in --quick: CDI's figure is for 4 GiB images)" if quick else ""

    def best_of(pred: Any) -> tuple[str | None, float | None]:
        cands = [(n, r["best_mbps"]) for n, r in rows.items() if pred(n) and r["best_mbps"]]
        return max(cands, key=lambda t: t[1]) if cands else (None, None)

    def ratio_check(what: str, base_name: str | None, base: float | None, factor: float) -> None:
        if base is None or o is None:
            checks.append(
                {
                    "check": what,
                    "status": "N/A" if o is not None else "FAIL",
                    "detail": "ours failed" if o is None else "no baseline result",
                }
            )
            return
        r = o / base
        checks.append(
            {
                "check": what,
                "status": "PASS" if r >= factor else "FAIL",
                "ratio": r,
                "ours_mbps": o,
                "baseline": base_name,
                "baseline_mbps": base,
                "need": factor,
                "detail": f"{o:.0f} / {base:.0f} MB/s ({base_name}) = {r:.2f}x, need >= {factor}x",
            }
        )

    def abs_check(what: str, need: float) -> None:
        if o is None:
            checks.append({"check": what, "status": "FAIL", "detail": "ours failed"})
            return
        checks.append(
            {
                "check": what,
                "status": "PASS" if o >= need else "FAIL",
                "ours_mbps": o,
                "need_mbps": need,
                "detail": f"{o:.0f} MB/s, need >= {need:.0f}{indicative}",
            }
        )

    is_nbd_qemu = lambda n: n.startswith("nbdkit-curl") and "qemu-img" in n  # noqa: E731
    if fmt in ("raw", "qcow2", "qcow2c"):
        ratio_check("ours >= 0.9x nbdkit curl + qemu-img", *best_of(is_nbd_qemu), 0.9)
        abs_check(f">= 2x CDI ({cdi:.0f} MB/s {kind})", 2 * cdi)
    elif fmt == "gz":
        ratio_check(
            "ours >= 1.3x curl|gzip -d|dd",
            "curl|gzip-d|dd",
            rows.get("curl|gzip-d|dd", {}).get("best_mbps"),
            1.3,
        )
        abs_check(f">= CDI ({cdi:.0f} MB/s {kind})", cdi)
    elif fmt == "xz":
        abs_check(f">= 4x CDI ({cdi:.0f} MB/s {kind})", 4 * cdi)
    elif fmt == "zst":
        ratio_check(
            "ours >= zstd CLI pipeline",
            "curl|zstd-d|dd",
            rows.get("curl|zstd-d|dd", {}).get("best_mbps"),
            1.0,
        )
    elif fmt == "sparse":
        alloc = ours["max_alloc_bytes"]
        if alloc is None:
            checks.append(
                {"check": "allocated within 5% of the source's data", "status": "FAIL", "detail": "no result"}
            )
        else:
            dev = abs(alloc - img.data_bytes) / img.data_bytes
            checks.append(
                {
                    "check": "allocated within 5% of the source's data",
                    "status": "PASS" if dev <= 0.05 else "FAIL",
                    "alloc": alloc,
                    "data_bytes": img.data_bytes,
                    "detail": f"{alloc / MiB:.1f} MiB allocated vs {img.data_bytes / MiB:.1f} MiB data "
                    f"({dev * 100:+.1f}% off)",
                }
            )
        ratio_check("ours >= 0.9x nbdkit curl + qemu-img", *best_of(is_nbd_qemu), 0.9)
    # informative: against the best HTTP baseline of any kind
    http = {b.name for b in B.BASELINES if b.family == "http"}
    name, base = best_of(lambda n: n in http)
    if base and o:
        checks.append(
            {
                "check": "info: ours / best HTTP baseline",
                "status": "INFO",
                "ratio": o / base,
                "baseline": name,
                "detail": f"{o:.0f} / {base:.0f} MB/s ({name}) = {o / base:.2f}x",
            }
        )
    rss = ours["max_rss_tree"]
    checks.append(
        {
            "check": "peak RSS of the worker tree <= 64 MiB",
            "status": "PASS" if 0 < rss <= RSS_LIMIT else ("FAIL" if rss else "N/A"),
            "rss": rss,
            "detail": f"{rss / MiB:.1f} MiB (largest process {ours['max_rss_largest'] / MiB:.1f})",
        }
    )
    bad = [c for c in ours["checks"] if c != "OK"]
    checks.append(
        {
            "check": "bytes identical to the reference",
            "status": "FAIL" if bad else "PASS",
            "detail": ", ".join(ours["checks"]),
        }
    )
    return checks


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 MiB images instead of 4 GiB / 2 GiB")
    ap.add_argument(
        "--only",
        default=",".join(I.DEFAULT_FORMATS),
        help=f"formats, comma separated (default all: {','.join(I.DEFAULT_FORMATS)})",
    )
    ap.add_argument("--targets", default="file,block", help="file, block or file,block (default)")
    ap.add_argument("--runs", type=int, default=None, help="runs per tool (default 3, 1 with --quick)")
    ap.add_argument(
        "--out", default=os.path.join(REPO, "bench", "out"), help="output dir (default bench/out)"
    )
    ap.add_argument("--images", default=None, help="images dir (default OUT/images-{quick,full}-seedS)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--ours",
        default="dv",
        help="dv (DataVolume via the cdi CLI), worker (python -m importers), both as dv,worker, or none",
    )
    ap.add_argument(
        "--baselines",
        default="default",
        help="default, all (adds extended variants), none, or a comma list of names",
    )
    ap.add_argument(
        "--verify",
        choices=["compare", "sha256"],
        default="compare",
        help="check results with qemu-img compare (default) or sha256",
    )
    ap.add_argument(
        "--overhead-runs",
        type=int,
        default=None,
        help="1 MiB imports for the fixed overhead (default 5, 3 with --quick; 0 skips)",
    )
    ap.add_argument("--timeout", type=float, default=900, help="per-run timeout in seconds")
    ap.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness for the benchmark and everything it starts "
        "(default -10 as in perf-anchors; needs root)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    formats = [f for f in args.only.split(",") if f]
    for f in formats:
        if f not in I.FORMATS:
            raise SystemExit(f"--only: unknown format {f!r}; known: {', '.join(I.FORMATS)}")
    kinds = [k for k in args.targets.split(",") if k]
    for k in kinds:
        if k not in ("file", "block"):
            raise SystemExit(f"--targets: {k!r} is not file or block")
    runs = args.runs or (1 if args.quick else 3)
    overhead_runs = args.overhead_runs if args.overhead_runs is not None else (3 if args.quick else 5)
    if args.nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    out = os.path.abspath(args.out)
    workdir = os.path.join(out, "work")
    os.makedirs(workdir, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    images_dir = args.images or os.path.join(
        out, f"images-{'quick' if args.quick else 'full'}-seed{args.seed}"
    )

    t_start = time.monotonic()
    imgs = I.ensure_images(images_dir, quick=args.quick, seed=args.seed, formats=formats, log=log)
    modes = make_modes(args.ours, workdir)
    usable_modes: list[WorkerMode | DataVolumeMode] = []
    mode_errors: dict[str, str] = {}
    for m in modes:
        why = m.check()
        if why:
            log(f"ours: {m.tool} cannot run: {why}")
            mode_errors[m.tool] = why
        else:
            usable_modes.append(m)

    block_size = max(imgs[f].virtual_size for f in formats)
    tg = Targets(workdir, kinds, block_size)
    nginx = Nginx(os.path.join(workdir, "nginx"), images_dir).start()
    log(f"nginx on {nginx.base_url} serving {images_dir}; block target {tg.device or '-'}")
    all_runs: list[RunResult] = []
    tables: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    overhead: dict[str, Any] = {}
    try:
        for fname in formats:
            fmt = I.FORMATS[fname]
            img = imgs[fname]
            url = nginx.url(fmt.file)
            I.preload(img.path)
            I.preload(img.reference)
            for kind in kinds:
                bls = [b for b in B.select(args.baselines, fname) if b.available()]
                log(
                    f"\n== {fmt.label} -> {kind}: virtual {img.virtual_size / MiB:.0f} MiB, file "
                    f"{img.file_size / MiB:.0f} MiB; {len(bls)} baselines, ours: "
                    f"{','.join(m.tool for m in usable_modes) or 'none'}; {runs} run(s)"
                )
                fk_runs: list[RunResult] = []
                for run in range(1, runs + 1):
                    for b in bls:
                        r = run_baseline(b, img, fmt, url, kind, tg, nginx, run, args.verify, args.timeout)
                        _progress(r)
                        fk_runs.append(r)
                    for m in usable_modes:
                        r = run_ours(m, img, fmt, url, kind, tg, nginx, run, args.verify, args.timeout)
                        _progress(r)
                        fk_runs.append(r)
                all_runs.extend(fk_runs)
                rows: dict[str, dict[str, Any]] = {}
                for tool in dict.fromkeys(r.tool for r in fk_runs):
                    rows[tool] = summarize_tool([r for r in fk_runs if r.tool == tool])
                title = f"{fmt.label} ({img.virtual_size / MiB:.0f} MiB virtual) -> {kind} target"
                print_table(title, list(rows.values()))
                tables.append({"format": fname, "target": kind, "title": title, "rows": list(rows.values())})
                for m in usable_modes:
                    summary.append(
                        {
                            "format": fname,
                            "target": kind,
                            "ours": m.tool,
                            "checks": evaluate(fname, kind, rows, m.tool, img, args.quick),
                        }
                    )
        if usable_modes and overhead_runs > 0:
            overhead = measure_overhead(usable_modes, imgs, nginx, tg, overhead_runs, args)
            all_runs.extend(overhead.pop("_runs"))
    finally:
        nginx.stop()
        tg.close()
        for m in usable_modes:
            if isinstance(m, DataVolumeMode):
                log(f"controller for {m.data_dir}: {m.shutdown()}")

    print_summary(summary, overhead, mode_errors, args.quick)
    result = {
        "meta": meta(args, runs, stamp, time.monotonic() - t_start),
        "images": imgs.to_dict(),
        "ours_unavailable": mode_errors,
        "tables": tables,
        "summary": summary,
        "fixed_overhead": overhead,
        "runs": [r.to_dict() for r in all_runs],
    }
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"results-{stamp}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    log(f"\nresults: {path}")
    with open(os.path.join(out, f"results-{stamp}.md"), "w") as f:
        f.write("\n".join(LOG_LINES) + "\n")
    failed = [c for s in summary for c in s["checks"] if c["status"] == "FAIL"]
    bad_baselines = [r for r in all_runs if not r.ok and not r.tool.startswith("ours")]
    if bad_baselines:
        log(f"{len(bad_baselines)} baseline run(s) failed or mismatched; see the tables")
    return 1 if failed or mode_errors else 0


def _progress(r: RunResult) -> None:
    status = "ok" if r.ok else f"FAILED {r.check} {r.error[:200]}"
    log(
        f"  {r.tool:34s} run {r.run}: {r.wall_s:6.2f} s {r.mbps_virtual:7.0f} MB/s  cpu {r.cpu_s:5.2f} s "
        f"({r.cpu_source})  rss {r.peak_rss_tree / MiB:5.1f} MiB  alloc {fmt_mib(r.alloc_bytes)} MiB  "
        f"psi {r.cpu_psi_avg10}  {status}"
    )
    if r.extra.get("phases"):
        log("      phases: " + ", ".join(f"{k} {v:.2f}" for k, v in r.extra["phases"].items()))


def measure_overhead(
    modes: list[WorkerMode | DataVolumeMode],
    imgs: I.ImageSet,
    nginx: Nginx,
    tg: Targets,
    n: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """1 MiB image, DataVolume created to Succeeded (or worker start to exit), n times."""
    img = imgs["tiny"]
    fmt = I.TINY
    url = nginx.url(fmt.file)
    out: dict[str, Any] = {"_runs": []}
    log("\n== fixed overhead: 1 MiB raw image -> file target")
    for m in modes:
        # a warm-up import (not counted): starts the controller daemon, warms caches
        w = run_ours(m, img, fmt, url, "file", tg, nginx, 0, args.verify, args.timeout)
        _progress(w)
        rs = []
        for i in range(1, n + 1):
            r = run_ours(m, img, fmt, url, "file", tg, nginx, i, args.verify, args.timeout)
            _progress(r)
            rs.append(r)
        out["_runs"].extend([w, *rs])
        ok = [r.wall_s for r in rs if r.ok]
        med = median(ok) if ok else None
        out[m.tool] = {
            "runs": len(rs),
            "runs_ok": len(ok),
            "median_s": med,
            "best_s": min(ok) if ok else None,
            "walls": [r.wall_s for r in rs],
            "limit_s": FIXED_OVERHEAD_LIMIT_S,
            "status": "PASS"
            if med is not None and med < FIXED_OVERHEAD_LIMIT_S and len(ok) == len(rs)
            else "FAIL",
            "max_rss_tree": max((r.peak_rss_tree for r in rs), default=0),
        }
    return out


def print_summary(
    summary: list[dict[str, Any]], overhead: dict[str, Any], mode_errors: dict[str, str], quick: bool
) -> None:
    log("\n## Summary: ours against the targets of issue 3" + (" (--quick: 256 MiB images)" if quick else ""))
    for tool, why in mode_errors.items():
        log(f"- {tool}: NOT RUN: {why}")
    if not summary and not overhead:
        log("- nothing to evaluate (ours did not run)")
    log("\n| format | target | ours | check | status | detail |")
    log("|---|---|---|---|---|---|")
    for s in summary:
        for c in s["checks"]:
            check, detail = (str(c[k]).replace("|", "\\|") for k in ("check", "detail"))
            log(f"| {s['format']} | {s['target']} | {s['ours']} | {check} | {c['status']} | {detail} |")
    for tool, o in overhead.items():
        med = f"{o['median_s']:.2f} s" if o["median_s"] is not None else "-"
        log(
            f"| tiny 1 MiB | file | {tool} | fixed overhead < 1 s | {o['status']} | median {med} of "
            f"{o['runs_ok']}/{o['runs']} ok runs; walls {', '.join(f'{w:.2f}' for w in o['walls'])} |"
        )
    n_fail = sum(1 for s in summary for c in s["checks"] if c["status"] == "FAIL") + sum(
        1 for o in overhead.values() if o["status"] == "FAIL"
    )
    n_pass = sum(1 for s in summary for c in s["checks"] if c["status"] == "PASS") + sum(
        1 for o in overhead.values() if o["status"] == "PASS"
    )
    log(f"\n{n_pass} PASS, {n_fail} FAIL")


def _version(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def meta(args: argparse.Namespace, runs: int, stamp: str, elapsed: float) -> dict[str, Any]:
    git = subprocess.run(
        ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) * 1024
    return {
        "timestamp": stamp,
        "elapsed_s": round(elapsed, 1),
        "args": vars(args),
        "runs": runs,
        "git_head": git,
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "mem_bytes": mem,
        "python": sys.version.split()[0],
        "versions": {
            "qemu-img": _version(["qemu-img", "--version"]),
            "nbdkit": _version(["nbdkit", "--version"]),
            "nbdcopy": _version(["nbdcopy", "--version"]) if shutil.which("nbdcopy") else None,
            "curl": _version(["curl", "--version"]),
            "nginx": _version(["nginx", "-v"]),
            "gzip": _version(["gzip", "--version"]),
            "pigz": _version(["pigz", "--version"]),
            "xz": _version(["xz", "--version"]),
            "zstd": _version(["zstd", "--version"]),
        },
        "cdi_mbps_reference": CDI_MBPS,
    }


if __name__ == "__main__":
    sys.exit(main())
