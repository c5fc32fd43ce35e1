"""``cdi get KIND [NAME...] [-o yaml|json|wide|name|jsonpath=...] [-w] [--no-headers]``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cdi.cli import jsonpath, kinds
from cdi.cli.context import CLIError, Context
from cdi.cli.printers import RowFormatter, as_list, now_utc, table, to_json, to_yaml

Obj = dict[str, Any]

POLL_INTERVAL = 0.2


@dataclass
class Target:
    info: kinds.KindInfo
    names: list[str] = field(default_factory=list)  # empty: every object of the kind


def parse_targets(args: list[str]) -> list[Target]:
    """``dv``, ``dv a b``, ``dv,pvc``, ``dv/a pvc/b`` -> targets."""
    if not args:
        raise CLIError(
            'error: you must specify the type of resource to get. Use "cdi get dv", "cdi get pvc", ...'
        )
    if "/" in args[0]:
        targets: dict[str, Target] = {}
        for a in args:
            if "/" not in a:
                raise CLIError(
                    "error: there is no need to specify a resource type as a separate argument "
                    "when passing arguments in resource/name form"
                )
            k, _, n = a.partition("/")
            info = resolve_kind(k)
            targets.setdefault(info.kind, Target(info)).names.append(n)
        return list(targets.values())
    infos = [resolve_kind(k) for k in args[0].split(",") if k]
    names = args[1:]
    if names and len(infos) > 1:
        raise CLIError("error: you may only specify a single resource type when you give names")
    return [Target(i, list(names)) for i in infos]


def resolve_kind(alias: str) -> kinds.KindInfo:
    info = kinds.lookup(alias)
    if info is None:
        raise CLIError(f'error: the server doesn\'t have a resource type "{alias}"')
    return info


def not_found(info: kinds.KindInfo, name: str) -> str:
    return f'Error from server (NotFound): {info.resource_plural} "{name}" not found'


def fetch(ctx: Context, t: Target) -> tuple[list[Obj], list[str]]:
    """The objects of a target and the names that were not found."""
    if t.info.lister is not None:  # events: NAME selects the involved object
        objs = t.info.list_objects(ctx.store, ctx.list_namespace)
        if t.names:
            objs = [
                o
                for o in objs
                if (o.get("involvedObject") or {}).get("name") in t.names or kinds.event_name(o) in t.names
            ]
        return objs, []
    if not t.names:
        return t.info.list_objects(ctx.store, ctx.list_namespace), []
    objs, missing = [], []
    for n in t.names:
        o = ctx.store.get(t.info.kind, ctx.namespace, n)
        if o is None:
            missing.append(n)
        else:
            objs.append(o)
    return objs, missing


def version_of(o: Obj) -> str:
    md = o.get("metadata") or {}
    rv = md.get("resourceVersion")
    if rv:
        return str(rv)
    return f"{o.get('count')}/{o.get('lastTimestamp')}"


def key_of(info: kinds.KindInfo, o: Obj) -> tuple[str, str, str]:
    md = o.get("metadata") or {}
    if info.lister is not None:
        inv = o.get("involvedObject") or {}
        return (
            info.kind,
            str(md.get("namespace", "")),
            f"{inv.get('kind')}/{inv.get('name')}/{o.get('type')}/{o.get('reason')}/{o.get('firstTimestamp')}"
            f"/{o.get('message')}",
        )
    return info.kind, str(md.get("namespace", "")), str(md.get("name", ""))


def obj_name(info: kinds.KindInfo, o: Obj) -> str:
    if info.lister is not None:
        return kinds.event_name(o)
    return str((o.get("metadata") or {}).get("name", ""))


class Printer:
    """Prints objects of one kind in the chosen output format."""

    def __init__(
        self, ctx: Context, info: kinds.KindInfo, output: str, no_headers: bool, prefix: bool
    ) -> None:
        self.ctx, self.info, self.output, self.no_headers = ctx, info, output, no_headers
        self.prefix = prefix  # NAME shown as resource/name (several kinds at once)
        self.columns = info.columns(output == "wide")
        self.headers = [c.header for c in self.columns]
        if ctx.all_namespaces and info.namespaced:
            self.headers.insert(0, "NAMESPACE")
        self.formatter: RowFormatter | None = None
        self.header_printed = False

    def row(self, o: Obj) -> list[str]:
        now = now_utc()
        cells = [c.value(o, now) for c in self.columns]
        if self.prefix and self.columns and self.columns[0].header == "NAME":
            cells[0] = f"{self.info.resource}/{cells[0]}"
        if self.ctx.all_namespaces and self.info.namespaced:
            cells.insert(0, str((o.get("metadata") or {}).get("namespace", "")))
        return cells

    def name_line(self, o: Obj) -> str:
        return f"{self.info.resource}/{obj_name(self.info, o)}"

    def is_table(self) -> bool:
        return self.output in ("", "wide")

    def print_table(self, objs: list[Obj]) -> None:
        rows = [self.row(o) for o in objs]
        self.formatter = RowFormatter(self.headers, rows, self.no_headers)
        if not objs:
            return
        for line in table(self.headers, rows, no_headers=self.no_headers):
            self.ctx.print(line)
        self.header_printed = True

    def print_one(self, o: Obj) -> None:
        """One object during a watch."""
        if self.is_table():
            assert self.formatter is not None
            if not self.header_printed and not self.no_headers:
                self.ctx.print(self.formatter.format(self.headers))
            self.header_printed = True
            self.ctx.print(self.formatter.format(self.row(o)))
        else:
            if self.output == "yaml":
                self.ctx.out.write("---\n")
            print_objects(self.ctx, self.output, [(self.info, o)], single=True)


def print_objects(ctx: Context, output: str, items: list[tuple[kinds.KindInfo, Obj]], single: bool) -> None:
    objs = [o for _, o in items]
    if output == "name":
        for info, o in items:
            ctx.print(f"{info.resource}/{obj_name(info, o)}")
        return
    data: Any = objs[0] if single and len(objs) == 1 else as_list(objs)
    if output == "json":
        ctx.print(to_json(data))
    elif output == "yaml":
        ctx.out.write(to_yaml(data))
        ctx.out.flush()
    elif output.startswith("jsonpath="):
        try:
            ctx.out.write(jsonpath.render(output[len("jsonpath=") :], data))
        except jsonpath.JSONPathError as e:
            raise CLIError(f"error: error parsing jsonpath: {e}") from e
        ctx.out.flush()
    else:  # pragma: no cover - argparse limits the choices
        raise CLIError(f"error: unable to match a printer suitable for the output format {output!r}")


OUTPUTS = ("", "wide", "json", "yaml", "name")


def check_output(output: str) -> None:
    if output not in OUTPUTS and not output.startswith("jsonpath="):
        raise CLIError(
            f'error: unable to match a printer suitable for the output format "{output}", allowed formats are: '
            "json,jsonpath,name,wide,yaml"
        )


def run(ctx: Context, args: list[str], output: str, watch: bool, no_headers: bool) -> int:
    check_output(output)
    targets = parse_targets(args)
    prefix = len(targets) > 1
    printers = [Printer(ctx, t.info, output, no_headers, prefix) for t in targets]
    results: list[tuple[Target, list[Obj]]] = []
    missing_lines: list[str] = []
    for t in targets:
        objs, missing = fetch(ctx, t)
        results.append((t, objs))
        missing_lines += [not_found(t.info, n) for n in missing]
    total = sum(len(o) for _, o in results)
    named_single = len(targets) == 1 and len(targets[0].names) == 1 and targets[0].info.lister is None
    if printers[0].is_table():
        first = True
        for p, (_, objs) in zip(printers, results, strict=True):
            if objs and not first:
                ctx.print()
            p.print_table(objs)
            first = first and not objs
    else:
        items = [(t.info, o) for t, objs in results for o in objs]
        if items or not missing_lines:
            print_objects(ctx, output, items, single=named_single)
    for line in missing_lines:
        ctx.eprint(line)
    if missing_lines:
        return 1
    if total == 0 and printers[0].is_table() and not any(t.names for t in targets):
        ctx.eprint(
            "No resources found"
            if ctx.all_namespaces
            else f"No resources found in {ctx.namespace} namespace."
        )
    if not watch:
        return 0
    return _watch(ctx, targets, printers, results)


def _watch(
    ctx: Context, targets: list[Target], printers: list[Printer], results: list[tuple[Target, list[Obj]]]
) -> int:
    seen: dict[tuple[str, str, str], tuple[str, Obj, Printer]] = {}
    for p, (t, objs) in zip(printers, results, strict=True):
        for o in objs:
            seen[key_of(t.info, o)] = (version_of(o), o, p)
    store = ctx.store
    rev = store.revision()
    try:
        while not ctx.stop.wait(POLL_INTERVAL):
            now_rev = store.revision()
            if now_rev == rev:
                continue
            rev = now_rev
            current: dict[tuple[str, str, str], tuple[str, Obj, Printer]] = {}
            for p, t in zip(printers, targets, strict=True):
                objs, _ = fetch(ctx, t)
                for o in objs:
                    current[key_of(t.info, o)] = (version_of(o), o, p)
            for k, (ver, o, p) in current.items():
                if k not in seen or seen[k][0] != ver:
                    p.print_one(o)
            for k, (_, o, p) in seen.items():
                if k not in current and p.info.lister is None:
                    p.print_one(o)  # deleted: kubectl prints the last state once more
            seen = current
    except KeyboardInterrupt:
        pass
    return 0
