"""YAML and JSON documents from users, decoded with bounds on size, aliases and nesting.

A manifest is untrusted input: 700 bytes of YAML whose anchors alias each other nine levels deep
("billion laughs") stand for 10^9 scalars. PyYAML shares the aliased objects, so decoding alone
stays small, but everything that walks the result afterwards (copying, ``json.dumps``, the
validation) pays for every expanded node: gigabytes and minutes. Kubernetes bounds the same
input in three places, and so does this module, in its own way:

- **Input size**: kube-apiserver refuses request bodies over 3 MiB; :func:`read_text` reads at
  most :data:`MAX_INPUT_BYTES` (+1 to notice more) from a file or stdin.
- **Alias expansion**: go-yaml (behind ``sigs.k8s.io/yaml``) counts the nodes it decodes
  through aliases and fails with "document contains excessive aliasing" when they are most of
  the work. Here the composer (our own, driven by the parser's events, iterative) knows the
  expanded size of every anchored node when it is defined: about its JSON size (each scalar's
  length + 1, one per collection). Every alias adds the expanded size of what it names to the
  input's *alias budget*: at most :data:`ALIAS_FACTOR` times the input's size, at least
  :data:`ALIAS_FLOOR`, never more than :data:`MAX_INPUT_BYTES`. So the expanded documents are
  never larger than what a user could have written out in the biggest accepted input, the work
  is linear in the input, and a bomb is refused at the alias that crosses the budget, before
  anything is built. Merge keys (``<<: *base``) are aliases too. An alias to the node that
  contains it (a recursive document) is refused: JSON cannot hold it.
- **Nesting**: go-yaml stops at 10000 levels; Python's own recursion (``copy.deepcopy``,
  ``json``) ends near 1000, and no Kubernetes object nests near 100, so :data:`MAX_DEPTH` is 100,
  for YAML and JSON alike.

Legitimate anchors (a shared ``storage:`` block aliased by a few DataVolumes) stay well inside
the budget. Errors are :class:`DocumentError`, naming the document, the line and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from cdi.common.errors import PermanentError
from cdi.common.units import KiB, MiB

MAX_INPUT_BYTES = 3 * MiB
"""kube-apiserver's limit on a request body (JSON or YAML): 3 MiB."""
ALIAS_FACTOR = 10
ALIAS_FLOOR = 64 * KiB
MAX_DEPTH = 100

try:  # libyaml's parser when PyYAML was built with it (the scanner is most of the time)
    _Base: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _Base = yaml.SafeLoader


class DocumentError(PermanentError):
    """A document that cannot be decoded or breaks a bound; the message says what to change."""

    reason = "Invalid"


def _size_words(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= KiB and n % KiB == 0:
        return f"{n // KiB} KiB"
    return f"{n} bytes"


def too_large(source: str, limit: int = MAX_INPUT_BYTES) -> str:
    return (
        f"{source} is larger than {_size_words(limit)} ({limit} bytes), the most the API server "
        "accepts in one request; split it into several files"
    )


def read_text(f: IO[Any], source: str, limit: int = MAX_INPUT_BYTES) -> str:
    """Read at most ``limit`` bytes of UTF-8 text from ``f`` (binary or text).

    :raises DocumentError: when there is more, or it is not UTF-8.
    """
    raw: Any = f.read(limit + 1)
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > limit:
        raise DocumentError(too_large(source, limit))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DocumentError(
            f"{source} is not UTF-8 text (byte {e.start}); save it as UTF-8 (YAML or JSON)"
        ) from None


def read_file(path: str, limit: int = MAX_INPUT_BYTES) -> str:
    """:func:`read_text` of a file (``OSError`` passes through for the caller to word)."""
    with open(path, "rb") as f:
        return read_text(f, path, limit)


# --- YAML -------------------------------------------------------------------------------------


@dataclass
class _Open:
    """A collection being composed."""

    node: SequenceNode | MappingNode
    anchor: str | None
    size: int = 1
    items: list[Node] = field(default_factory=list)


class _Budget:
    def __init__(self, input_size: int) -> None:
        self.input_size = input_size
        self.limit = min(MAX_INPUT_BYTES, max(ALIAS_FLOOR, ALIAS_FACTOR * input_size))
        self.used = 0


class _Loader(_Base):  # type: ignore[misc]
    """PyYAML's safe constructor over our own composer (bounded, iterative)."""

    def documents(self, budget: _Budget) -> Iterator[Any]:
        self.get_event()  # StreamStart
        index = 0
        while not self.check_event(yaml.StreamEndEvent):
            index += 1
            node = self._compose_document(index, budget)
            try:
                yield self.construct_document(node)
            except ValueError as e:  # int("9" * 5000), a timestamp with month 13
                raise DocumentError(f"document {index}: {_value_problem(e)}; put the value in quotes") from None
        self.get_event()

    def _compose_document(self, index: int, budget: _Budget) -> Node:
        self.get_event()  # DocumentStart
        anchors: dict[str, tuple[Node, int]] = {}
        opened: dict[str, int] = {}  # anchors of collections still being composed
        stack: list[_Open] = []
        root: list[Node] = []

        def where(mark: Any) -> str:
            return f"document {index}, line {mark.line + 1}" if mark is not None else f"document {index}"

        def done(node: Node, size: int) -> None:
            if stack:
                stack[-1].items.append(node)
                stack[-1].size += size
            else:
                root.append(node)

        while True:
            event = self.get_event()
            start: Any = event.start_mark  # libyaml's Mark or PyYAML's: passed on as they are
            end: Any = event.end_mark
            if isinstance(event, yaml.AliasEvent):
                name = event.anchor
                if name in opened:
                    raise DocumentError(
                        f"{where(start)}: the alias *{name} is inside the node it names (&{name}); "
                        "a manifest cannot be recursive: write the value out"
                    )
                if name not in anchors:
                    raise DocumentError(
                        f"{where(start)}: the alias *{name} names no anchor (&{name}) defined before it; "
                        "define the anchor first or write the value out"
                    )
                node, size = anchors[name]
                budget.used += size
                if budget.used > budget.limit:
                    raise DocumentError(
                        f"{where(start)}: excessive aliasing: with *{name} the aliases add more than "
                        f"{budget.limit} bytes to this {budget.input_size}-byte input (aliases may add "
                        f"{ALIAS_FACTOR} times the input, at least {_size_words(ALIAS_FLOOR)}, at most "
                        f"{_size_words(MAX_INPUT_BYTES)}); write the repeated parts out instead of aliasing them"
                    )
                done(node, size)
            elif isinstance(event, yaml.ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = self.resolve(ScalarNode, event.value, event.implicit)
                node = ScalarNode(tag, event.value, start, end, style=event.style)
                size = len(event.value) + 1
                if event.anchor is not None:
                    anchors[event.anchor] = (node, size)
                done(node, size)
            elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise DocumentError(
                        f"{where(start)}: nested more than {MAX_DEPTH} levels deep; no Kubernetes "
                        "object nests that deep: flatten the document"
                    )
                tag = event.tag
                is_map = isinstance(event, yaml.MappingStartEvent)
                cls: type[SequenceNode] | type[MappingNode] = MappingNode if is_map else SequenceNode
                if tag is None or tag == "!":
                    tag = self.resolve(cls, None, event.implicit)
                coll = cls(tag, [], start, None, flow_style=event.flow_style)
                if event.anchor is not None:
                    opened[event.anchor] = opened.get(event.anchor, 0) + 1
                stack.append(_Open(coll, event.anchor))
            elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                top = stack.pop()
                top.node.end_mark = end
                if isinstance(top.node, MappingNode):
                    it = iter(top.items)
                    top.node.value = list(zip(it, it, strict=True))
                else:
                    top.node.value = top.items
                if top.anchor is not None:
                    opened[top.anchor] -= 1
                    if not opened[top.anchor]:
                        del opened[top.anchor]
                    anchors[top.anchor] = (top.node, top.size)
                done(top.node, top.size)
            elif isinstance(event, yaml.DocumentEndEvent):
                break
        return root[0] if root else ScalarNode("tag:yaml.org,2002:null", "")


def _load_yaml(text: str) -> list[Any]:
    budget = _Budget(len(text.encode("utf-8", "surrogatepass")))
    loader = _Loader(text)
    try:
        return list(loader.documents(budget))
    finally:
        loader.dispose()


# --- JSON -------------------------------------------------------------------------------------


def _check_depth(value: Any, index: int) -> None:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth >= MAX_DEPTH:
                raise DocumentError(
                    f"document {index}: nested more than {MAX_DEPTH} levels deep; no Kubernetes "
                    "object nests that deep: flatten the document"
                )
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))


def _load_json(text: str) -> Any:
    try:
        data = json.loads(text)
    except RecursionError:
        raise DocumentError(
            f"document 1: nested more than {MAX_DEPTH} levels deep; no Kubernetes object nests that "
            "deep: flatten the document"
        ) from None
    _check_depth(data, 1)
    return data


def _words(e: Exception) -> str:
    text = " ".join(str(e).split())
    if "maximum nesting depth" in text:  # libyaml's own bound on flow collections (1000)
        return f"{text}: nested more than {MAX_DEPTH} levels deep; no Kubernetes object nests that deep: flatten the document"
    return text


def _value_problem(e: ValueError) -> str:
    if "integer string conversion" in str(e):
        return "a number has more than 4300 digits"
    return f"a value cannot be read ({_words(e)})"


def load_all(text: str) -> list[Any]:
    """Every document of a YAML stream, or the one JSON value when ``text`` is JSON.

    Text starting with ``{`` or ``[`` is read as JSON first and, when it is not valid JSON, as
    YAML in flow style (which it may well be); a syntax error then names the JSON problem.

    :raises DocumentError: a syntax error, or a bound broken (the message names it and the fix).
    """
    if text.lstrip().startswith(("{", "[")):
        try:
            return [_load_json(text)]
        except json.JSONDecodeError as e:
            json_error = e
        except ValueError as e:  # a number over Python's digit limit
            raise DocumentError(f"document 1: {_value_problem(e)}; put the value in quotes") from None
        try:
            return _load_yaml(text)
        except DocumentError:
            raise
        except yaml.YAMLError:
            raise DocumentError(_words(json_error)) from None
    try:
        return _load_yaml(text)
    except yaml.YAMLError as e:
        raise DocumentError(_words(e)) from None


def load_one(text: str) -> Any:
    """The single document of ``text`` (None when empty); more than one is an error."""
    docs = load_all(text)
    if len(docs) > 1:
        raise DocumentError(f"holds {len(docs)} documents; keep one (remove the '---' lines)")
    return docs[0] if docs else None


__all__ = [
    "ALIAS_FACTOR",
    "ALIAS_FLOOR",
    "MAX_DEPTH",
    "MAX_INPUT_BYTES",
    "DocumentError",
    "load_all",
    "load_one",
    "read_file",
    "read_text",
    "too_large",
]
