"""The importer worker: ``python -m importers`` / ``cdi-importer``.

One run = one attempt. The worker parses its settings from the environment, picks the source
for ``IMPORTER_SOURCE``, hands it to ``cdi.datapath.processor.run`` and writes exactly one
``WorkerResult`` to ``CDI_TERMINATION_LOG`` on every exit path, then exits with its code.

Outcome policy for what the data path does not decide itself:

- unparsable environment, bad URL or header syntax: permanent, ``ConfigError`` (the manifest
  or the controller must change; retrying cannot help);
- a source we do not have: permanent, ``NotSupported``;
- SIGTERM/SIGINT: temporary, ``WorkerKilled`` (the controller stopped us or the machine is
  going down; the next attempt starts over), exit code 1;
- an unexpected exception: temporary, ``InternalError``. A crash is treated like a worker that
  died without a result (the contract already calls that temporary), so a bug tickled by the
  environment (a full /tmp, a flaky device) is retried under the controller's backoff and
  retry limit instead of failing the DataVolume at once. The traceback goes to the log.

Secrets never reach the log or the result: settings are logged through ``redacted_settings``
and every message is passed through ``scrub`` with the secrets the settings hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from types import FrameType

from cdi.api.contract import ENV_TERMINATION_LOG, ImportSettings, Outcome, Reason, WorkerResult
from cdi.common import confinement
from cdi.common.errors import CDIError, PermanentError
from importers.redact import redacted_settings, scrub, settings_secrets
from importers.sources import blank as blank_source
from importers.sources import make_source

log = logging.getLogger("importers")


class _Terminated(BaseException):
    """Raised in the main thread by the SIGTERM/SIGINT handler (BaseException: not swallowed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Further signals while we unwind and write the result are ignored.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Terminated(signum)


def _result_from_error(e: CDIError) -> WorkerResult:
    outcome = Outcome.PERMANENT if isinstance(e, PermanentError) else Outcome.TEMPORARY
    return WorkerResult(outcome=outcome, reason=e.reason, message=e.message)


def run(settings: ImportSettings) -> WorkerResult:
    """One import attempt; raises CDIError for what the data path leaves to us."""
    source = make_source(settings)
    try:
        if isinstance(source, blank_source.BlankSource):
            log.info("creating a blank disk")
            return blank_source.create(settings)
        # Imported here: the blank path and config errors must work without the data path.
        from cdi.datapath import processor, progress

        reporter = progress.ProgressReporter(settings.progress_file)
        log.info("starting the data path")
        return processor.run(source, settings, reporter)
    finally:
        source.close()


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            stream=sys.stderr,
            level=os.environ.get("IMPORTER_LOG_LEVEL", "INFO").upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


def _attempt(settings: ImportSettings, secrets: list[str]) -> WorkerResult:
    """``run`` with every exception turned into a result (runs on the import thread)."""
    try:
        return run(settings)
    except CDIError as e:
        return _result_from_error(e)
    except Exception as e:
        log.error("unexpected error:\n%s", scrub(traceback.format_exc(), secrets).rstrip())
        return WorkerResult(
            outcome=Outcome.TEMPORARY,
            reason=Reason.INTERNAL,
            message=f"internal error in the importer: {type(e).__name__}: {e}",
        )


def _terminate_children(grace: float = 5.0) -> None:
    """SIGTERM our child processes (qemu-img, nbdkit, xz) so none keeps writing after we exit."""
    me = os.getpid()
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(me):
            children.append(int(entry))
    for pid in children:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in children:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def main(env: Mapping[str, str] | None = None) -> int:
    """Run the worker with ``env`` (default ``os.environ``); returns the exit code.

    The import runs on a thread while the main thread waits in short joins: CPython runs signal
    handlers only on the main thread, and a main thread blocked in the data path (a queue, a
    socket read with a 10-minute idle timeout) would otherwise notice SIGTERM only when that
    call returns. On SIGTERM the result is written at once, child processes are stopped, and
    the import thread (a daemon) dies with the process; a ``disk.img.part`` left behind is
    truncated by the next attempt and never renamed to ``disk.img``.
    """
    env = os.environ if env is None else env
    _setup_logging()
    termination_log = env.get(ENV_TERMINATION_LOG, "/dev/termination-log")
    secrets: list[str] = []
    killed = False
    box: list[WorkerResult] = []
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            env = confinement.enter(env)  # before anything reads the source (see cdi.common.confinement)
            termination_log = env.get(ENV_TERMINATION_LOG, "/dev/termination-log")
            settings = ImportSettings.from_env(env)
        except CDIError as e:
            result = _result_from_error(e)
        except ValueError as e:
            result = WorkerResult(
                outcome=Outcome.PERMANENT,
                reason=Reason.CONFIG_ERROR,
                message=f"invalid importer environment: {e}",
            )
        else:
            termination_log = settings.termination_log
            secrets = settings_secrets(settings)
            log.info("settings: %s", json.dumps(redacted_settings(settings), sort_keys=True))
            thread = threading.Thread(
                target=lambda: box.append(_attempt(settings, secrets)), name="import", daemon=True
            )
            thread.start()
            while thread.is_alive():
                thread.join(0.2)
            result = (
                box[0]
                if box
                else WorkerResult(
                    outcome=Outcome.TEMPORARY,
                    reason=Reason.INTERNAL,
                    message="the import thread ended without a result",
                )
            )
    except _Terminated as e:
        killed = True
        name = signal.Signals(e.signum).name
        log.warning("received %s; stopping", name)
        result = WorkerResult(
            outcome=Outcome.TEMPORARY,
            reason=Reason.KILLED,
            message=f"importer stopped by {name} before it finished; it will be retried",
        )
    finally:
        # Nothing may interrupt writing the result any more.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
    result = dataclasses.replace(result, message=scrub(result.message, secrets))
    log.info("result: %s %s: %s", result.outcome, result.reason, result.message)
    try:
        result.write(termination_log)
    except OSError as e:
        log.error("cannot write the termination message to %s: %s", termination_log, e)
    if killed:
        _terminate_children()
    for s, handler in previous.items():
        signal.signal(s, handler)
    return result.exit_code
