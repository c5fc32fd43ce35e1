"""The baselines: standard tools doing the same import on the same files in the same run.

Each baseline is a pipeline of argument lists (no shell). nbdkit's ``--run`` takes a command
string by design; the paths in it are quoted with ``shlex.quote``. Names follow
shared/research/perf-anchors.md so the numbers can be put side by side.

Families:
- ``local``: reads the image file directly (no HTTP): the ceiling for a converter on this disk.
- ``http``: fetches from nginx on 127.0.0.1 like an importer does; "best baseline" means the best
  of these.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from bench.images import Format


@dataclass(frozen=True)
class Ctx:
    """What a baseline needs to build its command for one run."""

    url: str
    src_path: str
    fmt: Format
    target: str  # file path or block device
    target_kind: str  # file | block
    virtual_size: int
    threads: int = 2


@dataclass(frozen=True)
class Baseline:
    name: str
    family: str  # local | http
    formats: tuple[str, ...]
    build: Callable[[Ctx], list[list[str]]]
    needs: tuple[str, ...]
    group: str = "default"  # default | extended
    description: str = ""

    def available(self) -> bool:
        return all(shutil.which(n) for n in self.needs)


RAWISH = ("raw", "qcow2", "qcow2c", "sparse", "sqcow2")
RAW_STREAMS = ("raw", "sparse")


def _qemu_convert_args(ctx: Ctx, extra: list[str]) -> list[str]:
    # -n: the block device exists and must not be (re)created; the file target is created
    n = ["-n"] if ctx.target_kind == "block" else []
    return ["qemu-img", "convert", *extra, *n, "-f", ctx.fmt.qemu_format or "raw", "-O", "raw"]


def qemu_local(extra: list[str]) -> Callable[[Ctx], list[list[str]]]:
    def build(ctx: Ctx) -> list[list[str]]:
        return [[*_qemu_convert_args(ctx, extra), ctx.src_path, ctx.target]]

    return build


def nbdkit_qemu(extra: list[str], filters: list[str]) -> Callable[[Ctx], list[list[str]]]:
    def build(ctx: Ctx) -> list[list[str]]:
        run = " ".join([*map(shlex.quote, _qemu_convert_args(ctx, extra)), "$nbd", shlex.quote(ctx.target)])
        return [
            [
                "nbdkit",
                "-r",
                "-U",
                "-",
                *(f"--filter={f}" for f in filters),
                "curl",
                f"url={ctx.url}",
                "--run",
                run,
            ]
        ]

    return build


def nbdkit_nbdcopy(filters: list[str], nbdcopy_args: list[str]) -> Callable[[Ctx], list[list[str]]]:
    def build(ctx: Ctx) -> list[list[str]]:
        run = " ".join(["nbdcopy", *nbdcopy_args, "$uri", shlex.quote(ctx.target)])
        return [
            [
                "nbdkit",
                "-r",
                "-U",
                "-",
                *(f"--filter={f}" for f in filters),
                "curl",
                f"url={ctx.url}",
                "--run",
                run,
            ]
        ]

    return build


def _dd(ctx: Ctx) -> list[str]:
    if ctx.target_kind == "block":
        return [
            "dd",
            f"of={ctx.target}",
            "bs=4M",
            "iflag=fullblock",
            "oflag=direct",
            "conv=notrunc",
            "status=none",
        ]
    return ["dd", f"of={ctx.target}", "bs=4M", "iflag=fullblock", "conv=sparse", "status=none"]


def curl_pipe(decoder: list[str] | None) -> Callable[[Ctx], list[list[str]]]:
    def build(ctx: Ctx) -> list[list[str]]:
        cmds = [["curl", "-sSf", ctx.url]]
        if decoder:
            cmds.append([a.replace("{threads}", str(ctx.threads)) for a in decoder])
        cmds.append(_dd(ctx))
        return cmds

    return build


def scratch_then_convert(ctx: Ctx) -> list[list[str]]:
    # CDI's architecture with standard tools: download all to scratch, then convert. Two steps in
    # sequence, so sh -c with every argument quoted.
    scratch = ctx.target + ".scratch"
    n = "-n " if ctx.target_kind == "block" else ""
    script = (
        f"curl -sSf -o {shlex.quote(scratch)} {shlex.quote(ctx.url)} && "
        f"qemu-img convert {n}-O raw {shlex.quote(scratch)} {shlex.quote(ctx.target)}; "
        f"rc=$?; rm -f {shlex.quote(scratch)}; exit $rc"
    )
    return [["sh", "-c", script]]


BASELINES: list[Baseline] = [
    Baseline(
        "qemu-img-local",
        "local",
        RAWISH,
        qemu_local([]),
        ("qemu-img",),
        description="qemu-img convert of the local file (no HTTP)",
    ),
    Baseline(
        "qemu-img-local-W-m16", "local", RAWISH, qemu_local(["-W", "-m", "16"]), ("qemu-img",), "extended"
    ),
    Baseline(
        "nbdkit-curl+qemu-img",
        "http",
        RAWISH,
        nbdkit_qemu([], []),
        ("nbdkit", "qemu-img"),
        description="nbdkit curl plugin + qemu-img convert (reads only allocated clusters)",
    ),
    Baseline(
        "nbdkit-curl+qemu-img-W-m16",
        "http",
        RAWISH,
        nbdkit_qemu(["-W", "-m", "16"], []),
        ("nbdkit", "qemu-img"),
    ),
    Baseline(
        "nbdkit-curl(cdi-filters)+qemu-img",
        "http",
        RAWISH,
        nbdkit_qemu([], ["readahead", "retry"]),
        ("nbdkit", "qemu-img"),
        "extended",
    ),
    Baseline("nbdkit-curl+nbdcopy", "http", RAW_STREAMS, nbdkit_nbdcopy([], []), ("nbdkit", "nbdcopy")),
    Baseline("curl|dd", "http", RAW_STREAMS, curl_pipe(None), ("curl", "dd")),
    Baseline("curl|gzip-d|dd", "http", ("gz",), curl_pipe(["gzip", "-dc"]), ("curl", "gzip", "dd")),
    Baseline("curl|pigz-d|dd", "http", ("gz",), curl_pipe(["pigz", "-dc"]), ("curl", "pigz", "dd")),
    Baseline(
        "nbdkit-curl+gzip-filter+nbdcopy",
        "http",
        ("gz",),
        nbdkit_nbdcopy(["gzip"], []),
        ("nbdkit", "nbdcopy"),
        "extended",
    ),
    Baseline("curl|xz-d|dd", "http", ("xz",), curl_pipe(["xz", "-dc"]), ("curl", "xz", "dd")),
    Baseline(
        "curl|xz-d-T2|dd", "http", ("xz",), curl_pipe(["xz", "-dc", "-T{threads}"]), ("curl", "xz", "dd")
    ),
    Baseline(
        "nbdkit-curl+xz-filter+nbdcopy", "http", ("xz",), nbdkit_nbdcopy(["xz"], []), ("nbdkit", "nbdcopy")
    ),
    Baseline("curl|zstd-d|dd", "http", ("zst",), curl_pipe(["zstd", "-dcq"]), ("curl", "zstd", "dd")),
    Baseline(
        "curl->scratch+qemu-img", "http", RAWISH, scratch_then_convert, ("curl", "qemu-img"), "extended"
    ),
]


def select(spec: str, fmt: str) -> list[Baseline]:
    """Baselines for ``fmt``: spec is "default", "all", "none" or a comma list of names."""
    if spec == "none":
        return []
    names = None if spec in ("default", "all") else set(spec.split(","))
    out = []
    for b in BASELINES:
        if fmt not in b.formats:
            continue
        if names is not None and b.name not in names:
            continue
        if names is None and spec == "default" and b.group != "default":
            continue
        out.append(b)
    return out
