"""Output helpers shaped like kubectl's: tables, ages, access modes, json/yaml, describe blocks."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from cdi.common.units import format_quantity, human_bytes

Obj = dict[str, Any]

TABLE_PADDING = 3  # kubectl get: tabwriter padding 3
DESCRIBE_PADDING = 2  # kubectl describe: tabwriter padding 2


# -- time ----------------------------------------------------------------------------------------


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t


def now_utc() -> datetime:
    return datetime.now(UTC)


def human_duration(seconds: float) -> str:
    """kubectl's ``duration.HumanDuration`` (apimachinery): 5s, 3m2s, 15m, 5h3m, 2d, 3y10d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 60 * 2:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rem = s % 60
        return f"{minutes}m" if rem == 0 else f"{minutes}m{rem}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rem = minutes % 60
        return f"{hours}h" if rem == 0 else f"{hours}h{rem}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rem = hours % 24
        return f"{hours // 24}d" if rem == 0 else f"{hours // 24}d{rem}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def age(timestamp: str | None, now: datetime | None = None) -> str:
    t = parse_time(timestamp)
    if t is None:
        return "<unknown>"
    return human_duration(((now or now_utc()) - t).total_seconds())


# -- small formatters ----------------------------------------------------------------------------

_ACCESS_MODES = (
    ("ReadWriteOnce", "RWO"),
    ("ReadOnlyMany", "ROX"),
    ("ReadWriteMany", "RWX"),
    ("ReadWriteOncePod", "RWOP"),
)


def access_modes(modes: Iterable[str] | None) -> str:
    """kubectl's GetAccessModesAsString: deduplicated, in a fixed order, comma separated."""
    given = set(modes or ())
    return ",".join(short for long, short in _ACCESS_MODES if long in given)


def bytes_progress(done: Any, total: Any) -> str:
    """``1.2 GiB/4.0 GiB``; ``?`` for an unknown total; empty when nothing is known."""
    if done is None and not total:
        return ""
    try:
        d = human_bytes(float(done or 0))
    except (TypeError, ValueError):
        return ""
    try:
        t = human_bytes(float(total)) if total and float(total) > 0 else "?"
    except (TypeError, ValueError):
        t = "?"
    return f"{d}/{t}"


def quantity(value: Any) -> str:
    """A size as kubectl shows it: byte counts become the shortest exact quantity (68Mi)."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return format_quantity(int(value))
    return str(value)


def dig(obj: Any, *path: str | int, default: Any = None) -> Any:
    cur = obj
    for p in path:
        if isinstance(p, int):
            if not isinstance(cur, list) or p >= len(cur):
                return default
            cur = cur[p]
        else:
            if not isinstance(cur, dict) or p not in cur:
                return default
            cur = cur[p]
    return cur


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- tabwriter -----------------------------------------------------------------------------------


def tabwrite(lines: Sequence[str], padding: int) -> list[str]:
    """Align tab-separated cells like Go's text/tabwriter (flags 0, pad char ' ').

    A column's width is computed over each run of consecutive lines that have a
    tab-terminated cell in that column, exactly like tabwriter's blocks.
    """
    rows = [line.split("\t") for line in lines]
    widths: list[list[int]] = [[0] * len(r) for r in rows]

    def fmt(col: int, start: int, end: int) -> None:
        i = start
        while i < end:
            if len(rows[i]) - 1 > col:
                j = i
                while j < end and len(rows[j]) - 1 > col:
                    j += 1
                w = max(len(rows[k][col]) for k in range(i, j)) + padding
                for k in range(i, j):
                    widths[k][col] = w
                fmt(col + 1, i, j)
                i = j
            else:
                i += 1

    fmt(0, 0, len(rows))
    out = []
    for r, w in zip(rows, widths, strict=True):
        parts = [c.ljust(w[i]) for i, c in enumerate(r[:-1])]
        parts.append(r[-1])
        out.append("".join(parts).rstrip())
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, no_headers: bool = False) -> list[str]:
    lines = [] if no_headers else ["\t".join(h.upper() for h in headers)]
    lines += ["\t".join(r) for r in rows]
    return tabwrite(lines, TABLE_PADDING)


class RowFormatter:
    """Keeps column widths stable across rows printed later (``get -w``)."""

    def __init__(self, headers: Sequence[str], rows: Sequence[Sequence[str]], no_headers: bool) -> None:
        self.widths = [len(h) for h in headers] if not no_headers else [0] * len(headers)
        for r in rows:
            self._grow(r)

    def _grow(self, row: Sequence[str]) -> None:
        for i, c in enumerate(row):
            if i < len(self.widths):
                self.widths[i] = max(self.widths[i], len(c))

    def format(self, row: Sequence[str]) -> str:
        self._grow(row)
        parts = [c.ljust(self.widths[i] + TABLE_PADDING) for i, c in enumerate(row[:-1])]
        parts.append(row[-1] if row else "")
        return "".join(parts).rstrip()


# -- json / yaml ---------------------------------------------------------------------------------


def as_list(items: list[Obj]) -> Obj:
    return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=4, ensure_ascii=False)


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)


def to_yaml(obj: Any, *, sort_keys: bool = True) -> str:
    """YAML like kubectl -o yaml (keys sorted)."""
    return yaml.dump(obj, Dumper=_Dumper, default_flow_style=False, sort_keys=sort_keys, allow_unicode=True)


# -- describe ------------------------------------------------------------------------------------


class Describe:
    """Builds kubectl-describe text: ``line(level, key, value)`` then ``render()``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, level: int, text: str, *values: str) -> None:
        self.lines.append("  " * level + "\t".join((text, *values)))

    def kv(self, level: int, key: str, value: Any) -> None:
        self.line(level, f"{key}:", cell(value) if value not in (None, "") else "<none>")

    def mapping(self, level: int, key: str, values: dict[str, Any] | None, sep: str) -> None:
        """Labels (sep "=") and Annotations (sep ": "): first on the key's line, the rest aligned."""
        if not values:
            self.line(level, f"{key}:", "<none>")
            return
        for i, (k, v) in enumerate(sorted(values.items())):
            self.line(level, f"{key}:" if i == 0 else "", f"{k}{sep}{v}")

    def block(self, level: int, text: str) -> None:
        for raw in text.rstrip("\n").splitlines():
            self.lines.append("  " * level + raw)

    def table(self, level: int, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        ind = "  " * level
        self.lines.append(ind + "\t".join(headers))
        self.lines.append(ind + "\t".join("-" * len(h) for h in headers))
        for r in rows:
            self.lines.append(ind + "\t".join(r))
        # a line without tabs ends the tabwriter block, so the table aligns on its own
        self.lines.append("\x00")

    def render(self) -> str:
        out: list[str] = []
        chunk: list[str] = []
        for ln in self.lines:
            if ln == "\x00":
                out += tabwrite(chunk, DESCRIBE_PADDING)
                chunk = []
            else:
                chunk.append(ln)
        out += tabwrite(chunk, DESCRIBE_PADDING)
        return "\n".join(out) + "\n"


def event_age(ev: Obj, now: datetime | None = None) -> str:
    """kubectl describe's event age: ``10s`` or ``3m (x4 over 10m)``."""
    last = age(ev.get("lastTimestamp"), now)
    count = int(ev.get("count") or 1)
    if count > 1:
        return f"{last} (x{count} over {age(ev.get('firstTimestamp'), now)})"
    return last


def describe_events(d: Describe, events: list[Obj], default_source: str, now: datetime | None = None) -> None:
    if not events:
        d.line(0, "Events:", "<none>")
        return
    d.lines.append("\x00")
    d.lines.append("Events:")
    rows = []
    for ev in events:
        source = dig(ev, "source", "component") or default_source
        rows.append(
            [
                cell(ev.get("type")),
                cell(ev.get("reason")),
                event_age(ev, now),
                source,
                cell(ev.get("message")),
            ]
        )
    d.table(1, ["Type", "Reason", "Age", "From", "Message"], rows)
