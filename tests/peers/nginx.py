"""Debian's nginx on free 127.0.0.1 ports, serving one directory three ways.

- ``http_url``: plain HTTP, no auth;
- ``https_url``: HTTPS (certificate from ``tests.peers.certs``), no auth;
- ``auth_url``: HTTPS, ``/auth/<path>`` serves the same ``<path>`` behind basic auth
  (``user``/``password``); the plain port has ``/auth/`` too.

On both ports ``/redirect/<path>`` answers 302 with the *relative* Location ``/<path>`` (so
``/redirect/auth/x`` keeps the origin and needs credentials) and ``/xredirect/<path>`` answers
302 to the same port on host ``localhost`` (another host for a client that used 127.0.0.1).
Every request is logged; ``access_log()`` parses it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from types import TracebackType

from tests.peers import free_port
from tests.peers.certs import Certs, make_ca_and_cert

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

_LOCATIONS = """
    root {www};
    location / {{ }}
    location /auth/ {{
      alias {www}/;
      auth_basic "cdi";
      auth_basic_user_file {workdir}/htpasswd;
    }}
    location ~ ^/redirect/(.*)$ {{ return 302 /$1$is_args$args; }}
    location ~ ^/xredirect/(.*)$ {{ return 302 {scheme}://localhost:{port}/$1$is_args$args; }}
"""

_CONF = """
worker_processes 1;
daemon off;
{user}
error_log {workdir}/logs/error.log warn;
pid {workdir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  log_format cdi '$request_method "$request_uri" $status $body_bytes_sent "$http_range" "$remote_user"';
  access_log {workdir}/logs/access.log cdi;
  client_body_temp_path {workdir}/temp/body;
  proxy_temp_path {workdir}/temp/proxy;
  fastcgi_temp_path {workdir}/temp/fastcgi;
  uwsgi_temp_path {workdir}/temp/uwsgi;
  scgi_temp_path {workdir}/temp/scgi;
  types {{ text/html html htm; text/plain txt; }}
  default_type application/octet-stream;
  sendfile on;
  absolute_redirect off;
  server_tokens off;
  server {{
    listen 127.0.0.1:{http_port};
{http_locations}
  }}
  server {{
    listen 127.0.0.1:{https_port} ssl;
    ssl_certificate {server_pem};
    ssl_certificate_key {server_key};
{https_locations}
  }}
}}
"""


@dataclass(frozen=True)
class AccessLogEntry:
    method: str
    uri: str
    status: int
    body_bytes: int
    range: str  # the Range header, "" if none
    user: str  # the basic-auth user, "" if none


def _wait_port(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class NginxServer:
    """``with NginxServer(root_dir, workdir) as nginx: ...`` (see the module docstring)."""

    user = "tester"
    password = "s3cret-p4ss"

    def __init__(self, root_dir: str | os.PathLike[str], workdir: str | os.PathLike[str],
                 certs: Certs | None = None) -> None:  # fmt: skip
        self.root = os.path.abspath(os.fspath(root_dir))
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.certs = certs
        self.http_port = 0
        self.https_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses --

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def auth_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}/auth"

    @property
    def ca_pem(self) -> str:
        assert self.certs
        return self.certs.ca_pem

    @property
    def cert_dir(self) -> str:
        """A directory holding only the CA (what ``IMPORTER_CERT_DIR`` points at)."""
        assert self.certs
        return self.certs.cert_dir

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- lifecycle --

    def start(self) -> NginxServer:
        os.makedirs(os.path.join(self.workdir, "logs"), exist_ok=True)
        os.makedirs(os.path.join(self.workdir, "temp"), exist_ok=True)
        os.makedirs(self.root, exist_ok=True)
        if self.certs is None:
            self.certs = make_ca_and_cert(os.path.join(self.workdir, "certs"))
        htpasswd = subprocess.run(["htpasswd", "-Bbn", self.user, self.password],
                                  check=True, capture_output=True, timeout=30).stdout  # fmt: skip
        with open(os.path.join(self.workdir, "htpasswd"), "wb") as f:
            f.write(htpasswd)
        last_error = ""
        for _attempt in range(5):
            self.http_port, self.https_port = free_port(), free_port()
            if self.http_port == self.https_port:
                continue
            self._write_conf()
            errlog = os.path.join(self.workdir, "logs", "startup.log")
            self._proc = subprocess.Popen(
                [NGINX, "-c", os.path.join(self.workdir, "nginx.conf"), "-p", self.workdir + "/", "-e", errlog],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            deadline = time.monotonic() + 10
            up = _wait_port(self.http_port, deadline) and _wait_port(self.https_port, deadline)
            if up and self._proc.poll() is None:
                return self
            self._kill()
            last_error = self._read(os.path.join(self.workdir, "logs", "error.log")) + self._read(errlog)
            if "Address already in use" not in last_error:
                break
        raise RuntimeError(f"nginx did not start: {last_error.strip()[-2000:]}")

    def _write_conf(self) -> None:
        def locations(scheme: str, port: int) -> str:
            return _LOCATIONS.format(www=self.root, workdir=self.workdir, scheme=scheme, port=port)

        assert self.certs
        conf = _CONF.format(
            user="user root;" if os.geteuid() == 0 else "",
            workdir=self.workdir,
            http_port=self.http_port,
            https_port=self.https_port,
            server_pem=self.certs.server_pem,
            server_key=self.certs.server_key,
            http_locations=locations("http", self.http_port),
            https_locations=locations("https", self.https_port),
        )
        with open(os.path.join(self.workdir, "nginx.conf"), "w") as f:
            f.write(conf)

    @staticmethod
    def _read(path: str) -> str:
        try:
            with open(path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown of master and worker
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()

    def stop(self) -> None:
        self._kill()

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- logs --

    def access_log(self) -> list[AccessLogEntry]:
        """Every request so far (the log is written unbuffered)."""
        entries = []
        for line in self._read(os.path.join(self.workdir, "logs", "access.log")).splitlines():
            try:
                method, rest = line.split(" ", 1)
                uri, rest = rest[1:].split('" ', 1)
                status, sent, rng, user = rest.split(" ", 3)
                rng, user = rng.strip('"'), user.strip('"')
                entries.append(AccessLogEntry(method, uri, int(status), int(sent),
                                              "" if rng == "-" else rng, "" if user == "-" else user))  # fmt: skip
            except ValueError:
                continue
        return entries

    def access_log_bytes(self, uri_contains: str = "") -> int:
        """Body bytes nginx sent, in total or for URIs containing ``uri_contains``."""
        return sum(e.body_bytes for e in self.access_log() if uri_contains in e.uri)

    def error_log(self) -> str:
        return self._read(os.path.join(self.workdir, "logs", "error.log"))
