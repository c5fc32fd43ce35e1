"""The controller loop: watches the store and runs the reconcilers.

Level-based: every tick it reconciles the objects that changed since the last store revision
it saw, the ones whose requeue time has come, and every DataVolume that is not finished (their
workers change outside the store). Errors in one object never stop the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cdi.api.phases import TERMINAL_PHASES
from cdi.backends.embedded.config import Config
from cdi.backends.embedded.volumes import EmbeddedVolumes
from cdi.backends.embedded.workers import LocalWorkers
from cdi.common.errors import CDIError
from cdi.controller.datavolume import DV, PVC, Context, DataVolumeController
from cdi.controller.pvc import ClaimController
from cdi.store.sqlite import Store

log = logging.getLogger(__name__)

Reconcile = Callable[[str, str], "float | None"]


class Manager:
    def __init__(self, ctx: Context, tick: float = 0.2) -> None:
        self.ctx = ctx
        self.tick = tick
        self.datavolumes = DataVolumeController(ctx)
        self.reconcilers: dict[str, Reconcile] = {
            DV: self.datavolumes.reconcile,
            PVC: ClaimController(ctx).reconcile,
        }
        self._due: dict[tuple[str, str, str], float] = {}
        self.on_shutdown: list[Callable[[], None]] = []
        self._rev = -1
        self.stopping = threading.Event()

    @classmethod
    def embedded(cls, data_dir: str, store: Store | None = None) -> Manager:
        import os

        config = Config.load(data_dir)
        store = store or Store(os.path.join(data_dir, "state.db"))
        ctx = Context(
            store=store,
            volumes=EmbeddedVolumes(config.storage_classes),
            workers=LocalWorkers(os.path.join(data_dir, "workers")),
            config=config,
        )
        return cls(ctx)

    def register(self, kind: str, reconcile: Reconcile) -> None:
        """Add a reconciler for another kind (the VM runtime registers VirtualMachine here)."""
        self.reconcilers[kind] = reconcile

    def _keys(self) -> set[tuple[str, str, str]]:
        store = self.ctx.store
        keys: set[tuple[str, str, str]] = set()
        rev = store.revision()
        if rev != self._rev:
            if self._rev < 0:
                for kind in self.reconcilers:
                    for o in store.list(kind):
                        keys.add((kind, o["metadata"]["namespace"], o["metadata"]["name"]))
            else:
                keys.update(k for k in store.changed_since(self._rev) if k[0] in self.reconcilers)
            self._rev = rev
        now = time.monotonic()
        keys.update(k for k, t in self._due.items() if t <= now)
        for o in store.list(DV):
            st = (o.get("status") or {}).get("phase")
            if st not in TERMINAL_PHASES or o["metadata"].get("deletionTimestamp"):
                keys.add((DV, o["metadata"]["namespace"], o["metadata"]["name"]))
        return keys

    def run_once(self) -> None:
        reap = getattr(self.ctx.workers, "reap", None)
        if reap is not None:
            reap()
        # DataVolumes first: they create and delete claims the claim reconciler then sees.
        for kind, ns, name in sorted(self._keys(), key=lambda k: (k[0] != DV, k)):
            self._due.pop((kind, ns, name), None)
            try:
                after = self.reconcilers[kind](ns, name)
            except CDIError as e:
                log.warning("%s %s/%s: %s", kind, ns, name, e)
                after = 2.0
            except Exception:
                log.exception("%s %s/%s: reconcile failed", kind, ns, name)
                after = 5.0
            if after is not None:
                self._due[(kind, ns, name)] = time.monotonic() + after

    def run(self) -> None:
        log.info("controller running (data dir %s)", self.ctx.config.data_dir)
        while not self.stopping.is_set():
            started = time.monotonic()
            self.run_once()
            self.stopping.wait(max(0.0, self.tick - (time.monotonic() - started)))
        for hook in self.on_shutdown:
            try:
                hook()
            except Exception:
                log.exception("shutdown hook failed")
        log.info("controller stopped")
