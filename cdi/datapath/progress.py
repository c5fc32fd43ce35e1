"""Throttled, atomic progress snapshots (``cdi.api.contract.Progress``) for the controller."""

from __future__ import annotations

import logging
import threading
import time

from cdi.api.contract import Progress

log = logging.getLogger(__name__)


class ProgressReporter:
    """Writes a ``Progress`` file at most every ``min_interval`` seconds (path None: no file).

    ``update`` is cheap enough to call per chunk; a stage or note change is written at once.
    Thread-safe: the data path may report from a reader thread and the main thread.
    """

    def __init__(self, path: str | None, min_interval: float = 0.5) -> None:
        self.path = path
        self.min_interval = min_interval
        self.resumes = 0
        self._lock = threading.Lock()
        self._last_write: float | None = None  # the first update is always written
        self._current = Progress(bytes_done=0, bytes_total=0)
        self._dirty = False

    @property
    def current(self) -> Progress:
        return self._current

    def update(self, bytes_done: int, bytes_total: int, stage: str = "Transferring", note: str = "") -> None:
        with self._lock:
            prev = self._current
            self._current = Progress(
                bytes_done=bytes_done, bytes_total=bytes_total, stage=stage, resumes=self.resumes, note=note
            )
            self._dirty = True
            now = time.monotonic()
            if (
                self._last_write is None
                or stage != prev.stage
                or note != prev.note
                or now - self._last_write >= self.min_interval
            ):
                self._write(now)

    def resumed(self) -> None:
        with self._lock:
            self.resumes += 1
            c = self._current
            self._current = Progress(c.bytes_done, c.bytes_total, c.stage, self.resumes, c.note)
            self._write(time.monotonic())

    def flush(self) -> None:
        with self._lock:
            if self._dirty:
                self._write(time.monotonic())

    def _write(self, now: float) -> None:
        self._last_write = now
        self._dirty = False
        if self.path is None:
            return
        try:
            self._current.write(self.path)
        except OSError as e:  # progress is best effort; the import goes on
            log.warning("cannot write progress file %s: %s", self.path, e)
