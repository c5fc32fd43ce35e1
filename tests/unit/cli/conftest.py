"""Fixtures for the CLI tests: a temporary data dir with a real SQLite store, no controller."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from cdi.cli import context
from cdi.cli.main import main
from cdi.store.sqlite import Store


@dataclass
class Result:
    rc: int
    out: str
    err: str


DV_YAML = textwrap.dedent(
    """\
    apiVersion: cdi.kubevirt.io/v1beta1
    kind: DataVolume
    metadata:
      name: {name}
    spec:
      source:
        http:
          url: {url}
      storage:
        resources:
          requests:
            storage: {size}
    """
)


def dv_yaml(name: str = "fedora", url: str = "http://127.0.0.1:8080/disk.qcow2", size: str = "1Gi") -> str:
    return DV_YAML.format(name=name, url=url, size=size)


@pytest.fixture
def data_dir(tmp_path: Any) -> str:
    d = tmp_path / "data"
    d.mkdir()
    return str(d)


@pytest.fixture(autouse=True)
def _no_controller(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Never start a real controller from unit tests; record the calls instead."""
    calls: list[str] = []
    monkeypatch.setattr(context.Context, "ensure_controller", lambda self: calls.append(self.data_dir))
    return calls


@pytest.fixture
def cli(data_dir: str, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    def run(*args: str, **kw: Any) -> Result:
        capsys.readouterr()
        rc = main(["--data-dir", data_dir, "--no-controller", *args], **kw)
        cap = capsys.readouterr()
        return Result(rc, cap.out, cap.err)

    return run


@pytest.fixture
def store(data_dir: str) -> Store:
    return Store(os.path.join(data_dir, "state.db"))


@pytest.fixture
def write(tmp_path: Any) -> Callable[[str, str], str]:
    def w(name: str, text: str) -> str:
        p = tmp_path / name
        p.write_text(text)
        return str(p)

    return w
