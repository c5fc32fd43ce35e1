"""Reading manifests for ``-f``: files, directories, stdin; multi-document YAML, JSON, ``kind: List``.

Manifests are untrusted input: each file (or stdin) is read up to 3 MiB (kube-apiserver's limit
on a request body) and decoded by :mod:`cdi.common.documents`, which bounds alias expansion
("billion laughs") and nesting. A file that breaks a bound is one error naming the file and the
fix; none of its documents is applied.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from cdi.common import documents

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
    is_json = text.lstrip().startswith(("{", "["))
    try:
        docs = documents.load_all(text)
    except documents.DocumentError as e:
        yield Document(source, None, f'error: error parsing "{source}": {e}')
        return
    for d in docs:
        for item in d if is_json and isinstance(d, list) else [d]:
            yield from _flatten(item, source)


def _read(path: str, stdin: TextIO | None) -> str:
    if path != "-":
        return documents.read_file(path)
    f = stdin or sys.stdin
    return documents.read_text(getattr(f, "buffer", f), "STDIN")


def load(paths: list[str], stdin: TextIO | None = None) -> Iterator[Document]:
    for path in expand_paths(paths):
        source = "STDIN" if path == "-" else path
        try:
            text = _read(path, stdin)
        except FileNotFoundError:
            yield Document(path, None, f'error: the path "{path}" does not exist')
            continue
        except OSError as e:
            yield Document(path, None, f'error: cannot read "{path}": {e.strerror or e}')
            continue
        except documents.DocumentError as e:
            yield Document(source, None, f"error: {e}")
            continue
        yield from parse_text(text, source)
