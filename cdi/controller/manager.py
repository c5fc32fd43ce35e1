"""The controller loop: watches the store and runs the reconcilers.

Level-based: every tick it reconciles the objects that changed since the last store revision
it saw, the ones whose requeue time has come, and every DataVolume that is not finished (their
workers change outside the store). Errors in one object never stop the loop.

An object whose reconcile raises is backed off exponentially (``ERROR_BACKOFF`` doubling up to
``ERROR_BACKOFF_MAX``), like controller-runtime's rate-limited work queue: it is looked at again
when its time comes or when it changes in the store (a user's fix), and its traceback is logged
once per distinct error, not every tick.
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
Key = tuple[str, str, str]

ERROR_BACKOFF = 1.0  # seconds after the first failure of an object
ERROR_BACKOFF_MAX = 60.0


class _Failing:
    """How often an object's reconcile has failed in a row, and until when it rests."""

    __slots__ = ("count", "error", "until")

    def __init__(self) -> None:
        self.count = 0
        self.until = 0.0
        self.error = ""


class Manager:
    def __init__(self, ctx: Context, tick: float = 0.2) -> None:
        self.ctx = ctx
        self.tick = tick
        self.datavolumes = DataVolumeController(ctx)
        self.reconcilers: dict[str, Reconcile] = {
            DV: self.datavolumes.reconcile,
            PVC: ClaimController(ctx).reconcile,
        }
        self._due: dict[Key, float] = {}
        self._failing: dict[Key, _Failing] = {}
        self.on_shutdown: list[Callable[[], None]] = []
        self._rev = -1
        self.stopping = threading.Event()

    @classmethod
    def embedded(cls, data_dir: str, store: Store | None = None) -> Manager:
        import os

        config = Config.load(data_dir)
        if os.geteuid() != 0:
            log.info("workers run as this user (uid %d): per-worker uids need a controller running as root",
                     os.geteuid())
        elif not config.worker_isolation:
            log.warning("workerIsolation is off in config.yaml: workers run as root and see the whole machine")
        if not config.image_sandbox:
            log.warning("imageSandbox is off in config.yaml: qemu-img and nbdkit run unconfined")
        store = store or Store(os.path.join(data_dir, "state.db"))
        ctx = Context(
            store=store,
            volumes=EmbeddedVolumes(config.storage_classes),
            workers=LocalWorkers(
                os.path.join(data_dir, "workers"),
                isolate=config.worker_isolation and os.geteuid() == 0,
                uid_base=config.worker_uid_base, uid_count=config.worker_uid_count,
                env={} if config.image_sandbox else {"CDI_IMAGE_SANDBOX": "off"},
            ),
            config=config,
        )
        return cls(ctx)

    def register(self, kind: str, reconcile: Reconcile) -> None:
        """Add a reconciler for another kind (the VM runtime registers VirtualMachine here)."""
        self.reconcilers[kind] = reconcile

    def _keys(self) -> set[Key]:
        store = self.ctx.store
        changed: set[Key] = set()
        rev = store.revision()
        if rev != self._rev:
            if self._rev < 0:
                for kind in self.reconcilers:
                    for o in store.list(kind):
                        changed.add((kind, o["metadata"]["namespace"], o["metadata"]["name"]))
            else:
                changed.update(k for k in store.changed_since(self._rev) if k[0] in self.reconcilers)
            self._rev = rev
        now = time.monotonic()
        keys = {k for k, t in self._due.items() if t <= now}
        for o in store.list(DV):
            st = (o.get("status") or {}).get("phase")
            if st not in TERMINAL_PHASES or o["metadata"].get("deletionTimestamp"):
                keys.add((DV, o["metadata"]["namespace"], o["metadata"]["name"]))
        # a failing object rests until its backoff ends, unless it changed (reconcilers write the
        # status of a failure only when it differs, so this is someone's fix, not our own echo)
        return changed | {k for k in keys if k not in self._failing or self._failing[k].until <= now}

    def run_once(self) -> None:
        reap = getattr(self.ctx.workers, "reap", None)
        if reap is not None:
            reap()
        # DataVolumes first: they create and delete claims the claim reconciler then sees.
        for kind, ns, name in sorted(self._keys(), key=lambda k: (k[0] != DV, k)):
            key = (kind, ns, name)
            self._due.pop(key, None)
            try:
                after = self.reconcilers[kind](ns, name)
            except CDIError as e:
                self._failed(key, str(e), None)
                continue
            except Exception as e:
                self._failed(key, f"{type(e).__name__}: {e}", e)
                continue
            self._failing.pop(key, None)
            if after is not None:
                self._due[key] = time.monotonic() + after

    def _failed(self, key: Key, error: str, exc: Exception | None) -> None:
        """Back ``key`` off exponentially; log each distinct error once (a traceback for a bug)."""
        f = self._failing.setdefault(key, _Failing())
        f.count += 1
        delay = min(ERROR_BACKOFF * 2 ** (f.count - 1), ERROR_BACKOFF_MAX)
        f.until = time.monotonic() + delay
        self._due[key] = f.until
        kind, ns, name = key
        if error != f.error:
            f.error = error
            if exc is None:
                log.warning("%s %s/%s: %s (retrying in %.0fs)", kind, ns, name, error, delay)
            else:
                log.error("%s %s/%s: reconcile failed (retrying in %.0fs, then with backoff)", kind, ns, name,
                          delay, exc_info=exc)

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
