"""nbdkit as a child process serving a source read-only on a private unix socket."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from types import TracebackType

from cdi.common.errors import TemporaryError
from cdi.datapath.source import NbdkitPlan

log = logging.getLogger(__name__)

START_TIMEOUT = 15.0


class Nbdkit:
    """``with Nbdkit(plan) as uri:`` runs ``nbdkit --exit-with-parent -U SOCK -r -f --filter=retry``.

    Secret files of the plan are written with mode 0600 before the start and removed afterwards;
    they never appear on a command line. A relative secret path is written into this instance's
    private (0700) temp directory, and ``@SECRETS@`` in the plan's args stands for that directory
    (e.g. ``password=+@SECRETS@/password``); absolute paths are written as given.
    """

    SECRETS = "@SECRETS@"

    def __init__(self, plan: NbdkitPlan, filters: tuple[str, ...] = ("retry",)) -> None:
        self.plan = plan
        self.filters = filters
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmpdir: str | None = None
        self.socket = ""

    def _secret_path(self, path: str) -> str:
        assert self.tmpdir is not None
        return path if os.path.isabs(path) else os.path.join(self.tmpdir, path)

    def log_tail(self, limit: int = 2000) -> str:
        try:
            with open(self._log_path, "rb") as f:
                return f.read()[-limit:].decode(errors="replace").strip()
        except (OSError, AttributeError):
            return ""

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.socket}"

    def start(self) -> str:
        self.tmpdir = tempfile.mkdtemp(prefix="cdi-nbdkit-")
        os.chmod(self.tmpdir, 0o700)
        for path, content in self.plan.secret_files.items():
            fd = os.open(self._secret_path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
        self.socket = os.path.join(self.tmpdir, "nbd.sock")
        argv = ["nbdkit", "--exit-with-parent", "-U", self.socket, "-r", "-f"]
        argv += [f"--filter={f}" for f in self.filters]
        argv += [self.plan.plugin, *(a.replace(self.SECRETS, self.tmpdir) for a in self.plan.args)]
        if "retry" in self.filters:
            argv.append("retry-exponential=no")  # linear, like CDI: the worker's restarts back off already
        self._log_path = os.path.join(self.tmpdir, "nbdkit.log")
        with open(self._log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                err = self.log_tail()
                self.stop()
                raise TemporaryError(f"nbdkit exited during start ({self.plan.plugin} plugin): {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TemporaryError(f"nbdkit did not start within {START_TIMEOUT:.0f} s")
            time.sleep(0.01)
        return self.uri

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.tmpdir is not None:
            for path in self.plan.secret_files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._secret_path(path))
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
