"""nginx serving the images directory on 127.0.0.1 (sendfile, Range, keepalive).

The access log records ``$body_bytes_sent`` so a run can report how many bytes it fetched, and
the workers' CPU is read from /proc so nginx's share can be reported apart from the client's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

from bench.measure import children_of, read_stat

CONF = """\
worker_processes 2;
daemon off;
user root;
error_log {p}/logs/error.log warn;
pid {p}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  log_format bench '$status $body_bytes_sent $request_method $request_uri $http_range';
  access_log {p}/logs/access.log bench;
  client_body_temp_path {p}/temp/body; proxy_temp_path {p}/temp/proxy;
  fastcgi_temp_path {p}/temp/fastcgi; uwsgi_temp_path {p}/temp/uwsgi; scgi_temp_path {p}/temp/scgi;
  default_type application/octet-stream;
  sendfile on; tcp_nopush on; keepalive_timeout 65; keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{ }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    def __init__(self, workdir: str, root: str, port: int | None = None) -> None:
        self.workdir = os.path.abspath(workdir)
        self.root = os.path.abspath(root)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, file: str) -> str:
        return f"{self.base_url}/{file}"

    def start(self) -> Nginx:
        for d in ("logs", "temp"):
            os.makedirs(os.path.join(self.workdir, d), exist_ok=True)
        conf = os.path.join(self.workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(p=self.workdir, port=self.port, root=self.root))
        self.proc = subprocess.Popen(
            [
                "nginx",
                "-c",
                conf,
                "-p",
                self.workdir + "/",
                "-e",
                os.path.join(self.workdir, "logs/error.log"),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nginx exited with {self.proc.returncode}; see {self.workdir}/logs/error.log"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return self
            time.sleep(0.02)
        raise RuntimeError("nginx did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- accounting for one run ---

    def cpu_seconds(self) -> float:
        """utime+stime of the master and workers so far."""
        if not self.proc:
            return 0.0
        total = 0.0
        for pid in [self.proc.pid, *children_of(self.proc.pid)]:
            st = read_stat(pid)
            if st:
                total += st.utime + st.stime
        return total

    def mark(self) -> tuple[int, float]:
        """Where the access log ends now, and nginx's CPU so far."""
        path = os.path.join(self.workdir, "logs/access.log")
        try:
            off = os.stat(path).st_size
        except OSError:
            off = 0
        return off, self.cpu_seconds()

    def since(self, mark: tuple[int, float]) -> tuple[int, int, float]:
        """(bytes served, requests, nginx CPU s) since ``mark``. nginx writes the log line when
        a request completes, so call this after the client has finished."""
        off, cpu = mark
        path = os.path.join(self.workdir, "logs/access.log")
        served = 0
        requests = 0
        try:
            with open(path, "rb") as f:
                f.seek(off)
                for line in f:
                    parts = line.split()
                    if len(parts) >= 2 and parts[1].isdigit():
                        served += int(parts[1])
                        requests += 1
        except OSError:
            pass
        return served, requests, self.cpu_seconds() - cpu
