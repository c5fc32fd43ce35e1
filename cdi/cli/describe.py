"""``cdi describe KIND [NAME...]`` in kubectl's describe layout. Secret values are never shown."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cdi.api import annotations as ann
from cdi.cli import kinds
from cdi.cli.apply import LAST_APPLIED
from cdi.cli.context import CLIError, Context
from cdi.cli.get import not_found, resolve_kind
from cdi.cli.printers import (
    Describe,
    access_modes,
    bytes_progress,
    cell,
    describe_events,
    dig,
    now_utc,
    quantity,
    to_yaml,
)

Obj = dict[str, Any]


def _header(d: Describe, o: Obj, *, api: bool = True) -> None:
    md = o.get("metadata") or {}
    d.kv(0, "Name", md.get("name"))
    d.kv(0, "Namespace", md.get("namespace"))
    d.mapping(0, "Labels", md.get("labels"), "=")
    annotations = {k: v for k, v in (md.get("annotations") or {}).items() if k != LAST_APPLIED}
    d.mapping(0, "Annotations", annotations, ": ")
    if api:
        d.kv(0, "API Version", o.get("apiVersion"))
        d.kv(0, "Kind", o.get("kind"))


def _metadata(d: Describe, o: Obj) -> None:
    md = o.get("metadata") or {}
    d.line(0, "Metadata:")
    d.kv(1, "Creation Timestamp", md.get("creationTimestamp"))
    if md.get("deletionTimestamp"):
        d.kv(1, "Deletion Timestamp", md.get("deletionTimestamp"))
    if md.get("finalizers"):
        d.line(1, "Finalizers:")
        for f in md["finalizers"]:
            d.block(2, f)
    d.kv(1, "Generation", md.get("generation"))
    d.kv(1, "Resource Version", md.get("resourceVersion"))
    d.kv(1, "UID", md.get("uid"))


def _yaml_section(d: Describe, title: str, value: Any) -> None:
    if value in (None, {}, []):
        d.line(0, f"{title}:", "<none>")
        return
    d.line(0, f"{title}:")
    d.block(1, to_yaml(value, sort_keys=False))
    d.lines.append("\x00")


def _conditions(d: Describe, level: int, conditions: list[Obj]) -> None:
    if not conditions:
        d.line(level, "Conditions:", "<none>")
        return
    d.lines.append("\x00")
    d.line(level, "Conditions:")
    rows = [
        [
            cell(c.get("type")),
            cell(c.get("status")),
            cell(c.get("reason")),
            cell(c.get("message")),
            cell(c.get("lastTransitionTime")),
        ]
        for c in conditions
        if isinstance(c, dict)
    ]
    d.table(level + 1, ["Type", "Status", "Reason", "Message", "Last Transition Time"], rows)


def _events(ctx: Context, info: kinds.KindInfo, d: Describe, o: Obj, now: datetime) -> None:
    md = o.get("metadata") or {}
    events = ctx.store.events(info.kind, md.get("namespace"), md.get("name"))
    describe_events(d, events, info.event_source or f"{info.kind.lower()}-controller", now)


def describe_datavolume(ctx: Context, info: kinds.KindInfo, o: Obj, now: datetime) -> str:
    d = Describe()
    _header(d, o)
    _metadata(d, o)
    _yaml_section(d, "Spec", o.get("spec"))
    st = o.get("status") or {}
    d.line(0, "Status:")
    d.kv(1, "Phase", st.get("phase"))
    progress = cell(st.get("progress"))
    b = bytes_progress(dig(st, "progressDetail", "bytesDone"), dig(st, "progressDetail", "bytesTotal"))
    if b:
        progress = f"{progress} ({b})" if progress else b
    d.kv(1, "Progress", progress)
    d.kv(1, "Restart Count", st.get("restartCount", 0))
    d.kv(1, "Claim Name", st.get("claimName"))
    if st.get("workerLog"):
        d.kv(1, "Worker Log", st.get("workerLog"))
    _conditions(d, 1, st.get("conditions") or [])
    _events(ctx, info, d, o, now)
    return d.render()


def describe_pvc(ctx: Context, info: kinds.KindInfo, o: Obj, now: datetime) -> str:
    d = Describe()
    md = o.get("metadata") or {}
    spec = o.get("spec") or {}
    st = o.get("status") or {}
    annotations = md.get("annotations") or {}
    d.kv(0, "Name", md.get("name"))
    d.kv(0, "Namespace", md.get("namespace"))
    d.kv(0, "StorageClass", spec.get("storageClassName"))
    d.kv(0, "Status", "Terminating" if md.get("deletionTimestamp") else st.get("phase"))
    d.kv(0, "Volume", spec.get("volumeName"))
    d.mapping(0, "Labels", md.get("labels"), "=")
    d.mapping(0, "Annotations", {k: v for k, v in annotations.items() if k != LAST_APPLIED}, ": ")
    d.kv(0, "Finalizers", "[" + ", ".join(md.get("finalizers") or []) + "]")
    d.kv(0, "Capacity", quantity(dig(st, "capacity", "storage")))
    d.kv(0, "Requested", quantity(dig(spec, "resources", "requests", "storage")))
    d.kv(0, "Access Modes", access_modes(st.get("accessModes") or spec.get("accessModes")))
    mode = spec.get("volumeMode") or "Filesystem"
    d.kv(0, "VolumeMode", mode)
    d.kv(0, "Disk", annotations.get(ann.DISK_PATH))
    d.kv(0, "Volume Path", annotations.get(ann.VOLUME_PATH))
    if mode == "Block" or annotations.get(ann.BACKING_FILE):
        d.kv(0, "Backing File", annotations.get(ann.BACKING_FILE))
    _events(ctx, info, d, o, now)
    return d.render()


def describe_secret(ctx: Context, info: kinds.KindInfo, o: Obj, now: datetime) -> str:
    d = Describe()
    _header(d, o, api=False)
    d.lines.append("\x00")
    d.lines.append("")
    d.line(0, "Type:", cell(o.get("type") or "Opaque"))
    d.lines.append("\x00")
    d.lines.append("")
    d.lines.append("Data")
    d.lines.append("====")
    for k, v in sorted((o.get("data") or {}).items()):
        try:
            n = len(base64.b64decode(str(v), validate=False))
        except ValueError:
            n = len(str(v))
        d.line(0, f"{k}:", f"{n} bytes")
    for k, v in sorted((o.get("stringData") or {}).items()):
        d.line(0, f"{k}:", f"{len(str(v).encode())} bytes")
    return d.render()


def describe_configmap(ctx: Context, info: kinds.KindInfo, o: Obj, now: datetime) -> str:
    d = Describe()
    _header(d, o, api=False)
    d.lines.append("\x00")
    d.lines += ["", "Data", "===="]
    for k, v in sorted((o.get("data") or {}).items()):
        d.lines += [f"{k}:", "----", *str(v).rstrip("\n").splitlines(), ""]
    d.lines += ["", "BinaryData", "===="]
    for k, v in sorted((o.get("binaryData") or {}).items()):
        try:
            n = len(base64.b64decode(str(v)))
        except ValueError:
            n = len(str(v))
        d.lines.append(f"{k}: {n} bytes")
    d.lines.append("")
    _events(ctx, info, d, o, now)
    return d.render()


def describe_generic(ctx: Context, info: kinds.KindInfo, o: Obj, now: datetime) -> str:
    d = Describe()
    _header(d, o)
    _metadata(d, o)
    _yaml_section(d, "Spec", o.get("spec"))
    _yaml_section(d, "Status", o.get("status"))
    _events(ctx, info, d, o, now)
    return d.render()


Describer = Callable[[Context, kinds.KindInfo, Obj, datetime], str]

DESCRIBERS: dict[str, Describer] = {
    "DataVolume": describe_datavolume,
    "PersistentVolumeClaim": describe_pvc,
    "Secret": describe_secret,
    "ConfigMap": describe_configmap,
}


def register(kind: str, describer: Describer) -> None:
    DESCRIBERS[kind] = describer


def run(ctx: Context, args: list[str]) -> int:
    if not args:
        raise CLIError('error: you must specify the type of resource to describe. Use "cdi describe dv NAME"')
    pairs: list[tuple[kinds.KindInfo, str | None]] = []
    if "/" in args[0]:
        for a in args:
            k, _, n = a.partition("/")
            pairs.append((resolve_kind(k), n))
    else:
        info = resolve_kind(args[0])
        pairs = [(info, n) for n in args[1:]] or [(info, None)]
    if any(info.lister is not None for info, _ in pairs):
        raise CLIError("error: describe events is not supported; use `cdi get events` or describe the object")
    texts: list[str] = []
    failed = False
    now = now_utc()
    for info, name in pairs:
        if name is None:
            objs = info.list_objects(ctx.store, ctx.list_namespace)
            if not objs:
                ctx.eprint(
                    "No resources found"
                    if ctx.all_namespaces
                    else f"No resources found in {ctx.namespace} namespace."
                )
        else:
            o = ctx.store.get(info.kind, ctx.namespace, name)
            if o is None:
                ctx.eprint(not_found(info, name))
                failed = True
                continue
            objs = [o]
        for o in objs:
            texts.append(DESCRIBERS.get(info.kind, describe_generic)(ctx, info, o, now))
    if texts:
        ctx.out.write("\n\n".join(t.rstrip("\n") for t in texts) + "\n")
        ctx.out.flush()
    return 1 if failed else 0
