"""Crafted manifests that cost far more to expand than to write (for the admission tests)."""

from __future__ import annotations


def laughs(levels: int = 9, fanout: int = 9, indent: str = "") -> str:
    """The billion laughs: anchor ``a<i>`` is a list of ``fanout`` aliases of ``a<i-1>`` (9^9 scalars)."""
    lines = [f"{indent}a0: &a0 [{', '.join(['lol'] * fanout)}]"]
    for i in range(1, levels + 1):
        lines.append(f"{indent}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]")
    return "\n".join(lines) + "\n"


def laughs_configmap() -> str:
    """A ConfigMap manifest (under 700 bytes) whose data is the billion laughs."""
    return "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\ndata:\n" + laughs(indent="  ")


def laughs_flow() -> str:
    """The same bomb in JSON-like flow style: one line starting with ``{``."""
    return "{" + ", ".join(laughs().splitlines()) + "}"


def deep(levels: int = 100_000) -> str:
    """A nesting bomb: ``levels`` opening brackets."""
    return "[" * levels
