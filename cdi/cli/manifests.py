"""Reading manifests for ``-f``: files, directories, stdin; multi-document YAML, JSON, ``kind: List``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

Obj = dict[str, Any]

EXTENSIONS = (".yaml", ".yml", ".json")


@dataclass
class Document:
    source: str  # the file name (or "STDIN") the object came from
    obj: Obj | None
    error: str | None = None  # a parse error, already worded


def expand_paths(paths: list[str]) -> Iterator[str]:
    for p in paths:
        if p != "-" and os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                full = os.path.join(p, name)
                if name.endswith(EXTENSIONS) and os.path.isfile(full):
                    yield full
        else:
            yield p


def _flatten(obj: Any, source: str) -> Iterator[Document]:
    if obj is None:
        return
    if not isinstance(obj, dict):
        yield Document(source, None, f"error: error validating {source!r}: the document is not an object")
        return
    if obj.get("kind") == "List" or (str(obj.get("kind", "")).endswith("List") and "items" in obj):
        for item in obj.get("items") or []:
            yield from _flatten(item, source)
        return
    if not obj.get("kind"):
        yield Document(source, None, f'error: error validating "{source}": kind not set')
        return
    yield Document(source, obj)


def parse_text(text: str, source: str) -> Iterator[Document]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            yield Document(source, None, f'error: error parsing "{source}": {e}')
            return
        for item in data if isinstance(data, list) else [data]:
            yield from _flatten(item, source)
        return
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        yield Document(source, None, f'error: error parsing "{source}": {" ".join(str(e).split())}')
        return
    for d in docs:
        yield from _flatten(d, source)


def load(paths: list[str], stdin: TextIO | None = None) -> Iterator[Document]:
    for path in expand_paths(paths):
        if path == "-":
            yield from parse_text((stdin or sys.stdin).read(), "STDIN")
            continue
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            yield Document(path, None, f'error: the path "{path}" does not exist')
            continue
        except (OSError, UnicodeDecodeError) as e:
            yield Document(path, None, f'error: cannot read "{path}": {e}')
            continue
        yield from parse_text(text, path)
