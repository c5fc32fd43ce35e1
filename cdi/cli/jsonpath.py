"""The part of kubectl's JSONPath that scripts use, and Go-style durations (``--timeout=1m30s``).

Supported: ``{.a.b}``, ``{.a[0]}``, ``{.a[*].b}``, ``{.a['x.y']}``, escaped dots
(``{.metadata.annotations.embedded\\.cdi\\.kubevirt\\.io/disk-path}``) and filters
``{.status.conditions[?(@.type=="Ready")].status}``; templates mix text and ``{...}`` blocks.
"""

from __future__ import annotations

import json
import re
from typing import Any

_FILTER = re.compile(r"""^\?\(@\.([\w.\-/\\]+)\s*(==|!=)\s*(?:"([^"]*)"|'([^']*)'|([^)\s]+))\)$""")


class JSONPathError(ValueError):
    pass


def _split_path(expr: str) -> list[str]:
    """``.a.b[0]['c']`` -> ["a", "b", "[0]", "['c']"] (escaped dots stay in their segment)."""
    segs: list[str] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c == ".":
            i += 1
            start = i
            buf = []
            while i < n and expr[i] not in ".[":
                if expr[i] == "\\" and i + 1 < n:
                    buf.append(expr[i + 1])
                    i += 2
                    continue
                buf.append(expr[i])
                i += 1
            if i > start:
                segs.append("".join(buf))
        elif c == "[":
            depth, j = 0, i
            while j < n:
                if expr[j] == "[":
                    depth += 1
                elif expr[j] == "]":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= n:
                raise JSONPathError(f"unclosed [ in {expr!r}")
            segs.append(expr[i : j + 1])
            i = j + 1
        else:
            raise JSONPathError(f"unexpected {c!r} in {expr!r}; paths look like .status.phase")
    return segs


def _get_field(obj: Any, path: str) -> Any:
    cur = obj
    for part in re.split(r"(?<!\\)\.", path):
        part = part.replace("\\.", ".")
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def evaluate(data: Any, expr: str) -> list[Any]:
    """All values ``expr`` (without braces) selects in ``data``."""
    expr = expr.strip()
    if expr in ("", "@", "$", "."):
        return [data]
    if expr.startswith("$"):
        expr = expr[1:]
    current = [data]
    for seg in _split_path(expr):
        nxt: list[Any] = []
        for v in current:
            if not seg.startswith("["):
                if isinstance(v, dict) and seg in v:
                    nxt.append(v[seg])
                continue
            inner = seg[1:-1].strip()
            if inner == "*":
                if isinstance(v, list):
                    nxt.extend(v)
                elif isinstance(v, dict):
                    nxt.extend(v.values())
            elif inner.startswith("?"):
                m = _FILTER.match(inner)
                if not m:
                    raise JSONPathError(f'unsupported filter {seg}; write [?(@.type=="Ready")]')
                field, op, want = m.group(1), m.group(2), next(g for g in m.group(3, 4, 5) if g is not None)
                for item in v if isinstance(v, list) else []:
                    got = _get_field(item, field)
                    if (scalar(got) == want) == (op == "=="):
                        nxt.append(item)
            elif inner[:1] in ("'", '"'):
                key = inner[1:-1]
                if isinstance(v, dict) and key in v:
                    nxt.append(v[key])
            else:
                try:
                    idx = int(inner)
                except ValueError as e:
                    raise JSONPathError(f"unsupported index {seg}") from e
                if isinstance(v, list) and -len(v) <= idx < len(v):
                    nxt.append(v[idx])
        current = nxt
    return current


def scalar(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def render(template: str, data: Any) -> str:
    """Render a template such as ``{.metadata.name}{"\\n"}`` or ``name={.metadata.name}``."""
    out: list[str] = []
    i = 0
    while i < len(template):
        j = template.find("{", i)
        if j < 0:
            out.append(template[i:])
            break
        out.append(template[i:j])
        k = template.find("}", j)
        if k < 0:
            raise JSONPathError(f"unclosed {{ in {template!r}")
        inner = template[j + 1 : k].strip()
        if inner.startswith('"') and inner.endswith('"'):
            out.append(json.loads(inner))
        else:
            out.append(" ".join(scalar(v) for v in evaluate(data, inner)))
        i = k + 1
    return "".join(out)


def split_condition(text: str) -> tuple[str, str | None]:
    """``{.status.phase}=Succeeded`` -> (".status.phase", "Succeeded"); no ``=``: value None."""
    text = text.strip()
    if text.startswith("'") and text.endswith("'"):
        text = text[1:-1]
    if not text.startswith("{"):
        if not text.startswith("."):
            raise JSONPathError(f"jsonpath {text!r} must look like '{{.status.phase}}=Succeeded'")
        expr, sep, value = text.partition("=")
        return expr, (value if sep else None)
    end = text.find("}")
    if end < 0:
        raise JSONPathError(f"unclosed {{ in {text!r}")
    expr = text[1:end]
    rest = text[end + 1 :]
    if not rest:
        return expr, None
    if not rest.startswith("="):
        raise JSONPathError(f"expected = after the jsonpath in {text!r}")
    value = rest[1:]
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return expr, value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go duration (``30s``, ``1m30s``, ``500ms``, ``0``) or plain seconds, in seconds."""
    t = text.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", t):
        return float(t)
    neg = t.startswith("-")
    body = t[1:] if neg else t
    pos, total = 0, 0.0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise ValueError(f"invalid duration {text!r}; write e.g. 30s, 5m or 1h30m")
    return -total if neg else total
