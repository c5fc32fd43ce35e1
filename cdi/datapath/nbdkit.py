"""nbdkit as a child process serving a source read-only on a private unix socket, confined.

nbdkit runs in a ``sandbox.Jail`` holding its private directory (secrets it reads, the
``sock/`` directory of its socket), for the ``file`` plugin the one file it serves
(read-only), and for network plugins (curl) the network plus the ``/etc`` files name
resolution and TLS read. qemu-img, in a jail of its own, sees only ``sock/`` (never the
secrets next to it).
"""

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
from cdi.datapath import sandbox
from cdi.datapath.source import NbdkitPlan

log = logging.getLogger(__name__)

START_TIMEOUT = 15.0
SOCKET_DIR = "sock"  # inside the private directory: the only part qemu-img's jail binds
PRIVATE_INSIDE = "/run/nbdkit"  # the private directory as nbdkit sees it when confined
NETWORK_PLUGINS = ("curl",)


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
        try:
            return self._start()
        except BaseException:
            self.stop()  # no secret file outlives a failed start
            raise

    def _start(self) -> str:
        self.tmpdir = tempfile.mkdtemp(prefix="cdi-nbdkit-")
        os.chmod(self.tmpdir, 0o700)
        for path, content in self.plan.secret_files.items():
            fd = os.open(self._secret_path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
        sock_dir = os.path.join(self.tmpdir, SOCKET_DIR)
        os.mkdir(sock_dir, 0o700)
        self.socket = os.path.join(sock_dir, "nbd.sock")
        self._log_path = os.path.join(self.tmpdir, "nbdkit.log")
        with sandbox.Jail(network=self.plan.plugin in NETWORK_PLUGINS) as jail:
            private = jail.file(self.tmpdir, writable=True, inside=PRIVATE_INSIDE)
            socket = os.path.join(private, SOCKET_DIR, "nbd.sock")
            args = [a.replace(self.SECRETS, private) for a in self.plan.args]
            if self.plan.plugin == "file":
                args = [self._bind_served_file(jail, a, private) for a in args]
            if jail.network:
                jail.etc(sandbox.NETWORK_ETC)
            argv = ["nbdkit", "--exit-with-parent", "-U", socket, "-r", "-f"]
            argv += [f"--filter={f}" for f in self.filters]
            argv += [self.plan.plugin, *args]
            if "retry" in self.filters:
                argv.append("retry-exponential=no")  # linear, like CDI: the worker's restarts back off already
            with open(self._log_path, "wb") as logf:
                self.proc = subprocess.Popen(
                    jail.command(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf,
                    pass_fds=jail.pass_fds, env=jail.env,
                )
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                err = self.log_tail()
                raise TemporaryError(f"nbdkit exited during start ({self.plan.plugin} plugin): {err.strip()}")
            if time.monotonic() > deadline:
                raise TemporaryError(f"nbdkit did not start within {START_TIMEOUT:.0f} s")
            time.sleep(0.01)
        return self.uri

    @staticmethod
    def _bind_served_file(jail: sandbox.Jail, arg: str, private: str) -> str:
        """``file=PATH`` of the file plugin: PATH bound read-only (unless it is in our directory)."""
        if not arg.startswith("file=") or arg[5:].startswith(private + "/"):
            return arg
        return "file=" + jail.file(arg[5:])

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
