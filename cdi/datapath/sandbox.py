"""Confinement for the tools that parse untrusted images: qemu-img and nbdkit run under bubblewrap.

Why: a disk image can name other files. A vmdk descriptor lists extent files, a qcow2 names a
backing file or an external data file, and qemu-img opens whatever the image names. Our own
header checks (``imagecheck``) refuse such images before any tool sees them, but they only see
the first bytes, and on the nbdkit path the server may serve other bytes to qemu-img than to
us. So the tools also run where other files do not exist: ``bwrap`` gives each process a new
mount namespace holding only

- ``/usr`` read-only (plus the ``/bin``, ``/lib``, ``/lib64``, ``/sbin`` symlinks into it),
- a minimal ``/dev`` (null, zero, full, random, urandom, tty) and no ``/proc`` or ``/sys``,
- the files a call names: the image (read-only), the target (read-write; a block device keeps
  device access), the nbd socket directory,
- for nbdkit's network plugins, the few ``/etc`` files name resolution and TLS need.

Each file is opened here (``O_PATH``; links are followed, as ``/proc/self/fd`` names need) and
bound into the sandbox from that descriptor, so what is bound is what was opened, wherever the
worker sees it (a confined worker sees its volume under ``/tmp/cdi``, see
``cdi.common.confinement``). No directory descriptor ever reaches the sandboxed process: ``..``
from an inherited directory descriptor would lead back to the host's root.

The process also gets new user, pid, ipc, uts, cgroup and (unless it needs the network)
network namespaces, no capabilities (also when the worker runs as root), a minimal environment
(given to the process, never on bwrap's command line) and its own session; it is killed when
the worker dies.

Fail closed: when ``bwrap`` is missing or cannot create the namespaces (a host without
unprivileged user namespaces), the import fails with reason ``ConfigError`` and a message that
names the fix. ``imageSandbox: false`` in config.yaml (``CDI_IMAGE_SANDBOX=off`` in the
worker's environment, which the controller sets then) runs the tools unconfined instead (then only the header checks and the ``qemu-img info`` checks guard the
host); any other value than ``off`` (or unset) means confined.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Sequence
from types import TracebackType

from cdi.api.contract import Reason
from cdi.common.errors import PermanentError

log = logging.getLogger(__name__)

ENV_SWITCH = "CDI_IMAGE_SANDBOX"
OFF = "off"
BWRAP = "bwrap"
INSIDE = "/run/cdi"  # where bound files appear in the sandbox
PATH = "/usr/local/bin:/usr/bin:/usr/local/sbin:/usr/sbin"
# variables a network plugin may need (curl honours the proxy ones); nothing else is passed
PASS_ENV = ("http_proxy", "https_proxy", "no_proxy", "all_proxy",
            "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
# what name resolution and TLS read (bound read-only when present)
NETWORK_ETC = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf",
               "/etc/gai.conf", "/etc/services", "/etc/protocols", "/etc/ssl", "/etc/pki",
               "/etc/ca-certificates", "/etc/crypto-policies")
PREFLIGHT_TIMEOUT = 30.0

_BASE = (
    "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try",
    "--cap-drop", "ALL", "--die-with-parent", "--new-session",
    "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
    "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
    "--dev", "/dev", "--dir", "/tmp", "--chdir", "/",
)

_preflight_lock = threading.Lock()
_preflight_error: str | None = None
_preflight_done = False
_unconfined_logged = False


def enabled() -> bool:
    """False only when ``CDI_IMAGE_SANDBOX=off`` is set for this process."""
    return os.environ.get(ENV_SWITCH, BWRAP).strip().lower() != OFF


def unavailable(detail: str) -> PermanentError:
    return PermanentError(
        f"cannot confine qemu-img/nbdkit with bubblewrap: {detail}; install the bubblewrap package "
        "(bwrap) and allow unprivileged user namespaces on the worker's host (sysctl "
        "user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1 where it exists, and on "
        "Ubuntu kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap), "
        "or set imageSandbox: false in config.yaml to run them unconfined (not recommended)",
        reason=Reason.CONFIG_ERROR,
    )


def _bwrap() -> str:
    found = shutil.which(BWRAP) or ("/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None)
    if found is None:
        raise unavailable("bwrap is not installed")
    return found


def preflight() -> None:
    """Start one empty sandbox (once per process); raise ``unavailable`` when it cannot start."""
    global _preflight_error, _preflight_done
    with _preflight_lock:
        if not _preflight_done:
            argv = [_bwrap(), *_BASE, "--unshare-net", "--", "/usr/bin/true"]
            try:
                p = subprocess.run(argv, capture_output=True, timeout=PREFLIGHT_TIMEOUT, check=False,
                                   env={"PATH": PATH, "LC_ALL": "C"})
                if p.returncode != 0:
                    err = p.stderr.decode(errors="replace").strip().splitlines()
                    _preflight_error = (err[-1] if err else f"exit code {p.returncode}")[:300]
            except (OSError, subprocess.TimeoutExpired) as e:
                _preflight_error = f"bwrap did not run: {e}"
            _preflight_done = True
            if _preflight_error:
                log.error("image tool sandbox unavailable: %s", _preflight_error)
    if _preflight_error:
        raise unavailable(_preflight_error)


class Jail:
    """One sandboxed command line: name the files it may see, then wrap its argv.

    ``path = jail.file(host_path, writable=...)`` returns the name the command must use for
    that file (the host path itself when confinement is off); ``jail.command(argv)`` returns
    the full argv to run with ``pass_fds=jail.pass_fds``; ``close()`` (or ``with``) closes our
    descriptors once the process has started.
    """

    def __init__(self, *, network: bool = False) -> None:
        self.confined = enabled()
        global _unconfined_logged
        if not self.confined and not _unconfined_logged:
            _unconfined_logged = True
            log.warning("imageSandbox is off: qemu-img and nbdkit run without bubblewrap")
        self.network = network
        self._args: list[str] = []
        self._fds: list[int] = []
        self._n = 0

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return tuple(self._fds)

    def _open(self, host: str) -> tuple[int, os.stat_result]:
        fd = os.open(host, os.O_PATH | os.O_CLOEXEC)
        self._fds.append(fd)
        return fd, os.fstat(fd)

    def _inside(self, host: str) -> str:
        self._n += 1
        name = os.path.basename(host.rstrip("/")) or "file"
        if name.isdigit() or name in (".", ".."):  # /proc/self/fd/N: give it a readable name
            name = f"file{self._n}"
        return f"{INSIDE}/{self._n}/{name}"

    def file(self, host: str, *, writable: bool = False, inside: str = "") -> str:
        """Bind one existing file, block device or directory; returns its name inside.

        ``inside`` chooses that name (default: ``/run/cdi/N/<basename>``).
        """
        if not self.confined:
            if host.startswith("/proc/self/"):  # our descriptor: the child needs one of its own
                fd, _ = self._open(host)
                return f"/proc/self/fd/{fd}"
            return host
        fd, st = self._open(host)
        inside = inside or self._inside(host)
        if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
            # bind options from a descriptor mount without device access; --dev-bind takes a
            # path, which bwrap resolves while it still sees the host's /proc
            self._args += ["--dev-bind", f"/proc/self/fd/{fd}", inside]
            if not writable:
                self._args += ["--remount-ro", inside]
        else:
            self._args += ["--bind-fd" if writable else "--ro-bind-fd", str(fd), inside]
        return inside

    def etc(self, paths: Sequence[str]) -> None:
        """Bind these host paths read-only at the same place, when they exist."""
        if self.confined:
            for p in paths:
                self._args += ["--ro-bind-try", p, p]

    @property
    def env(self) -> dict[str, str] | None:
        """The environment to start the command with (``None``: unconfined, the worker's own).

        Given to the process, not set with bwrap's ``--setenv``: a proxy URL may hold a password,
        and a command line is visible to every user of the machine."""
        if not self.confined:
            return None
        env = {"PATH": PATH, "LC_ALL": "C"}
        if self.network:
            env.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
        return env

    def command(self, argv: Sequence[str]) -> list[str]:
        """The argv to run (with ``env=self.env``): ``argv`` itself when unconfined, else
        wrapped in bwrap."""
        if not self.confined:
            return list(argv)
        preflight()
        out = [_bwrap(), *_BASE]
        if not self.network:
            out.append("--unshare-net")
        out += self._args
        out.append("--")
        out += argv
        return out

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def __enter__(self) -> Jail:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
