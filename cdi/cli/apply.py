"""``cdi apply -f``: validate (``cdi.api.validation.admit``), then create or update in the store.

Updates are a three-way merge like kubectl's client-side apply: fields the manifest sets win,
fields the previous apply set but this manifest dropped are removed, fields others added (the
controller, ``cdi create``) stay. The previous manifest is kept in kubectl's annotation
``kubectl.kubernetes.io/last-applied-configuration`` (for Secrets with the values blanked).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import importlib
import json
from typing import Any

from cdi.cli import kinds, manifests
from cdi.cli.context import CLIError, Context
from cdi.common.errors import CDIError, ConflictError, ValidationError, ValidationErrors

Obj = dict[str, Any]

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "managedFields",
    "selfLink",
)
CARRIED_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp")
MAX_ATTEMPTS = 5


# kinds whose admission hook lives in an optional package that registers it when imported
HOOK_MODULES = {"VirtualMachine": "vm_runtime", "VirtualMachineInstance": "vm_runtime"}


def admit(obj: Obj, old: Obj | None) -> Obj:
    from cdi.api.validation import admit as _admit

    hook = HOOK_MODULES.get(str(obj.get("kind", "")))
    if hook:
        with contextlib.suppress(ImportError):  # without it, admit explains what to install
            importlib.import_module(hook)

    result: Obj = _admit(obj, old)
    return result


def validation_lines(kind: str, name: str, e: ValidationErrors | ValidationError) -> list[str]:
    errors = e.errors if isinstance(e, ValidationErrors) else [e]
    if not errors:
        return [f'error: {kind} "{name}" is invalid: {e}']
    out = []
    for err in errors:
        field = getattr(err, "field", "")
        detail = getattr(err, "detail", str(err))
        out.append(
            f'error: {kind} "{name}" is invalid: {field}: {detail}'
            if field
            else f'error: {kind} "{name}" is invalid: {detail}'
        )
    return out


def three_way(last: Any, new: Any, live: Any) -> Any:
    """JSON-merge-patch style three-way merge of dicts (lists and scalars are replaced)."""
    if not isinstance(new, dict) or not isinstance(live, dict):
        return copy.deepcopy(new)
    last = last if isinstance(last, dict) else {}
    out = copy.deepcopy(live)
    for k in last:
        if k not in new:
            out.pop(k, None)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = three_way(last.get(k), v, out[k])
        else:
            out[k] = copy.deepcopy(v)
    return out


def _string_data_to_data(obj: Obj) -> None:
    if obj.get("kind") != "Secret" or not isinstance(obj.get("stringData"), dict):
        return
    data = dict(obj.get("data") or {})
    for k, v in obj.pop("stringData").items():
        data[k] = base64.b64encode(str(v).encode()).decode()
    obj["data"] = data


def _last_applied(manifest: Obj) -> str:
    m = copy.deepcopy(manifest)
    md = m.get("metadata") or {}
    if isinstance(md.get("annotations"), dict):
        md["annotations"].pop(LAST_APPLIED, None)
        if not md["annotations"]:
            md.pop("annotations")
    if m.get("kind") == "Secret":  # remember the keys only, never the values
        for field in ("data", "stringData"):
            if isinstance(m.get(field), dict):
                m[field] = {k: "" for k in m[field]}
    return json.dumps(m, sort_keys=True, separators=(",", ":"))


def _previous(live: Obj) -> Obj:
    text = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not text:
        return {}
    try:
        prev = json.loads(text)
    except ValueError:
        return {}
    return prev if isinstance(prev, dict) else {}


def prepare(ctx: Context, doc: manifests.Document) -> tuple[kinds.KindInfo, Obj]:
    """The manifest, checked for kind/name/namespace and stripped of server-owned fields."""
    obj = copy.deepcopy(doc.obj or {})
    kind = str(obj.get("kind", ""))
    md = obj.get("metadata")
    if not isinstance(md, dict):
        md = obj["metadata"] = {}
    name = md.get("name")
    ns = md.get("namespace")
    info = kinds.by_kind(kind)
    if info is None or info.lister is not None:
        raise CLIError(
            f'error: resource mapping not found for name: "{name or ""}" namespace: "{ns or ""}" '
            f'from "{doc.source}": no matches for kind "{kind}" in version "{obj.get("apiVersion", "")}"\n'
            "ensure CRDs are installed first"
        )
    if not name or not isinstance(name, str):
        raise CLIError(f'error: a {kind} in "{doc.source}" has no metadata.name; give every object a name')
    if info.namespaced:
        if ns and ctx.namespace_explicit and ns != ctx.namespace:
            raise CLIError(
                f'error: the namespace from the provided object "{ns}" does not match the namespace '
                f"\"{ctx.namespace}\". You must pass '--namespace={ns}' to perform this operation."
            )
        md["namespace"] = ns or ctx.namespace
    obj.setdefault("apiVersion", info.api_version)
    obj.pop("status", None)
    for f in SERVER_METADATA:
        md.pop(f, None)
    _string_data_to_data(obj)
    md.setdefault("annotations", {})[LAST_APPLIED] = _last_applied(obj)
    return info, obj


def apply_object(ctx: Context, info: kinds.KindInfo, manifest: Obj) -> str:
    """Create or update one object; returns kubectl's verb (created, configured, unchanged)."""
    store = ctx.store
    md = manifest["metadata"]
    ns, name = md.get("namespace") or ctx.namespace, md["name"]
    for _ in range(MAX_ATTEMPTS):
        live = store.get(info.kind, ns, name)
        if live is None:
            new = admit(copy.deepcopy(manifest), None)
            try:
                store.create(new)
            except ConflictError:
                continue  # created meanwhile: update it instead
            return "created"
        if (live.get("metadata") or {}).get("deletionTimestamp"):
            raise CLIError(
                f'Error from server (Conflict): object is being deleted: {info.resource_plural} "{name}" '
                "already exists; wait until it is gone (cdi wait --for=delete) and apply again"
            )
        merged = three_way(_previous(live), manifest, {k: v for k, v in live.items() if k != "status"})
        new = admit(merged, live)
        new_md = new.setdefault("metadata", {})
        live_md = live.get("metadata") or {}
        for f in CARRIED_METADATA:
            if f in live_md:
                new_md[f] = live_md[f]
            else:
                new_md.pop(f, None)
        if "status" in live:
            new["status"] = copy.deepcopy(live["status"])
        else:
            new.pop("status", None)
        if new == live:
            return "unchanged"
        try:
            store.update(new, check_rv=True)
        except ConflictError:
            continue  # the controller wrote it meanwhile: merge again
        return "configured"
    raise CLIError(f'error: {info.resource_plural} "{name}" keeps changing; apply again')


def run(ctx: Context, files: list[str]) -> int:
    if not files:
        raise CLIError("error: must specify one of -f and -k", code=1)
    failed = False
    applied = False
    for doc in manifests.load(files):
        if doc.error or doc.obj is None:
            ctx.eprint(doc.error or "error: empty document")
            failed = True
            continue
        kind = str(doc.obj.get("kind", ""))
        name = str((doc.obj.get("metadata") or {}).get("name", ""))
        try:
            info, manifest = prepare(ctx, doc)
            verb = apply_object(ctx, info, manifest)
        except (ValidationErrors, ValidationError) as e:
            for line in validation_lines(kind, name, e):
                ctx.eprint(line)
            failed = True
            continue
        except CLIError as e:
            ctx.eprint(e.message)
            failed = True
            continue
        except CDIError as e:
            ctx.eprint(f'Error from server ({e.reason}): error when applying "{doc.source}": {e}')
            failed = True
            continue
        applied = True
        ctx.print(f"{info.resource}/{name} {verb}")
    if applied:
        ctx.ensure_controller()
    return 1 if failed else 0
