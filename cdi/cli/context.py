"""What every command gets: resolved flags, output streams, the store (opened on first use).

The embedded backend's config and the controller daemon are imported lazily, inside the
functions that need them, so that the CLI module tree imports cheaply and in any order.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from cdi.store.sqlite import Store

DEFAULT_NAMESPACE = "default"


class CLIError(Exception):
    """An error already worded for the user; printed as is (``error: ...``), exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _optional_module(name: str) -> ModuleType | None:
    """Import ``name``; None only when that very module does not exist (yet)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            return None
        raise


def resolve_data_dir(arg: str | None) -> str:
    mod = _optional_module("cdi.backends.embedded.config")
    fn = getattr(mod, "resolve_data_dir", None) if mod else None
    if fn is not None:
        return str(fn(arg))
    path = arg or os.environ.get("CDI_DATA_DIR") or os.path.join("~", ".local", "share", "cdi")
    return os.path.abspath(os.path.expanduser(path))


def open_store(data_dir: str) -> Store:
    mod = _optional_module("cdi.backends.embedded.config")
    fn = getattr(mod, "open_store", None) if mod else None
    if fn is not None:
        store: Store = fn(data_dir)
        return store
    from cdi.store.sqlite import Store

    return Store(os.path.join(data_dir, "state.db"))


def daemon() -> Any:
    """The controller daemon module (raises CLIError when it is not available)."""
    mod = _optional_module("cdi.controller.daemon")
    if mod is None:
        raise CLIError("the controller daemon (cdi.controller.daemon) is not available in this installation")
    return mod


@dataclass
class Context:
    data_dir_arg: str | None = None
    namespace_arg: str | None = None
    all_namespaces: bool = False
    debug: bool = False
    no_controller: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    stop: threading.Event = field(default_factory=threading.Event)
    _data_dir: str | None = None
    _store: Store | None = None

    @property
    def namespace(self) -> str:
        return self.namespace_arg or DEFAULT_NAMESPACE

    @property
    def namespace_explicit(self) -> bool:
        return self.namespace_arg is not None

    @property
    def list_namespace(self) -> str | None:
        """The namespace to list in, None for all namespaces."""
        return None if self.all_namespaces else self.namespace

    @property
    def data_dir(self) -> str:
        if self._data_dir is None:
            self._data_dir = resolve_data_dir(self.data_dir_arg)
        return self._data_dir

    @property
    def store(self) -> Store:
        """The store; opening it checks (and tightens) the data dir's permissions first."""
        if self._store is None:
            from cdi.common.errors import PermanentError

            try:
                self._store = open_store(self.data_dir)
            except PermanentError as e:  # the data dir is not private (datadir.UnsafeDataDir)
                raise CLIError(f"error: {e}") from None
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def eprint(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def ensure_controller(self) -> None:
        """Start the controller daemon if needed; a failure is a warning, never fatal."""
        if self.no_controller:
            return
        try:
            daemon().ensure_running(self.data_dir)
        except CLIError as e:
            self.eprint(f"warning: the controller was not started: {e.message}")
        except Exception as e:
            self.eprint(f"warning: the controller was not started: {e}; start it with `cdi serve`")
