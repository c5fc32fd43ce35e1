"""``cdi create secret generic NAME`` and ``cdi create configmap NAME`` with kubectl's flags.

Values are read up to Kubernetes' 1 MiB limit on a Secret's or ConfigMap's data, counted as they
go: ``--from-file=/dev/zero`` or a 10 GiB file is refused after 1 MiB, not read into memory.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any

from cdi.api.limits import MAX_DATA_BYTES
from cdi.cli import apply, kinds
from cdi.cli.context import CLIError, Context
from cdi.cli.printers import to_json, to_yaml
from cdi.common.errors import ConflictError, ValidationError, ValidationErrors

Obj = dict[str, Any]

_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _check_key(key: str) -> None:
    if not _KEY.match(key) or key in (".", ".."):
        raise CLIError(
            f'error: "{key}" is not a valid key name: a valid config key must consist of '
            "alphanumeric characters, '-', '_' or '.'"
        )


def _too_much(source: str) -> CLIError:
    return CLIError(
        f"error: {source} takes the data past {MAX_DATA_BYTES} bytes (1 MiB), the most a Secret or "
        "ConfigMap may hold; split the values over several, or keep large files in a volume"
    )


def collect(literals: list[str], files: list[str]) -> dict[str, bytes]:
    """``--from-literal=k=v`` and ``--from-file=[k=]path`` (a directory adds its regular files).

    :raises CLIError: also when the values pass 1 MiB (reading stops there).
    """
    out: dict[str, bytes] = {}
    total = 0

    def add(key: str, value: bytes) -> None:
        nonlocal total
        _check_key(key)
        if key in out:
            raise CLIError(
                f'error: cannot add key "{key}", another key by that name already exists; '
                "give each value its own key"
            )
        out[key] = value
        total += len(value)

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            data = f.read(MAX_DATA_BYTES - total + 1)
        if total + len(data) > MAX_DATA_BYTES:
            raise _too_much(f'--from-file "{path}"')
        return data

    for lit in literals:
        key, sep, value = lit.partition("=")
        if not sep or not key:
            raise CLIError(f"error: invalid literal source {lit}, expected key=value")
        if total + len(value.encode()) > MAX_DATA_BYTES:
            raise _too_much(f'--from-literal "{key}"')
        add(key, value.encode())
    for spec in files:
        key, sep, path = spec.partition("=")
        if not sep:
            key, path = "", spec
        if not path:
            raise CLIError(f"error: invalid file source {spec}, expected [key=]path")
        path = os.path.expanduser(path)
        if os.path.isdir(path):
            if key:
                raise CLIError(f'error: cannot give a key name for a directory: "{spec}"')
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if os.path.isfile(full):
                    add(name, read(full))
            continue
        try:
            data = read(path)
        except OSError as e:
            raise CLIError(f"error: error reading {path}: {e.strerror or e}") from e
        add(key or os.path.basename(path), data)
    return out


def build_secret(ns: str, name: str, type_: str, values: dict[str, bytes]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": type_,
        "data": {k: base64.b64encode(v).decode() for k, v in values.items()},
    }


def build_configmap(ns: str, name: str, values: dict[str, bytes]) -> Obj:
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    for k, v in values.items():
        try:
            data[k] = v.decode("utf-8")
        except UnicodeDecodeError:
            binary[k] = base64.b64encode(v).decode()
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": data,
    }
    if binary:
        obj["binaryData"] = binary
    return obj


def _finish(ctx: Context, info: kinds.KindInfo, obj: Obj, dry_run: str, output: str) -> int:
    name = obj["metadata"]["name"]
    word = info.kind.lower()
    if dry_run not in ("none", "client", "server"):
        raise CLIError(f'error: invalid dry-run value ({dry_run}), must be "none", "server", or "client"')
    try:
        obj = apply.admit(obj, None)
    except (ValidationErrors, ValidationError) as e:
        for line in apply.validation_lines(info.kind, name, e):
            ctx.eprint(line)
        return 1
    if dry_run == "none":
        try:
            obj = ctx.store.create(obj)
        except ConflictError:
            ctx.eprint(f'error: failed to create {word} {info.plural} "{name}" already exists')
            return 1
    if output == "yaml":
        ctx.out.write(to_yaml(obj))
        ctx.out.flush()
    elif output == "json":
        ctx.print(to_json(obj))
    elif output == "name":
        ctx.print(f"{info.resource}/{name}")
    else:
        suffix = f" ({dry_run} dry run)" if dry_run != "none" else ""
        ctx.print(f"{info.resource}/{name} created{suffix}")
    return 0


def run_secret(
    ctx: Context,
    name: str,
    literals: list[str],
    files: list[str],
    type_: str | None,
    dry_run: str,
    output: str,
) -> int:
    obj = build_secret(ctx.namespace, name, type_ or "Opaque", collect(literals, files))
    return _finish(ctx, kinds.SECRET, obj, dry_run, output)


def run_configmap(
    ctx: Context, name: str, literals: list[str], files: list[str], dry_run: str, output: str
) -> int:
    obj = build_configmap(ctx.namespace, name, collect(literals, files))
    return _finish(ctx, kinds.CONFIGMAP, obj, dry_run, output)
