"""The demo behind scripts/demo.sh: what a user does, with the real `cdi` command.

1. make a disk image (the tiny test guest when it can be built, else a generated disk) and its
   qcow2, and serve them with nginx on 127.0.0.1;
2. `cdi apply` a DataVolume pointing at it, watch `cdi get dv -w`, `cdi wait` for Ready;
3. show where the disk lives and check its bytes against the source image;
4. boot it as a VirtualMachine when the VM runtime is installed.
The DataVolume is left in place (data dir: $CDI_DATA_DIR or ~/.local/share/cdi) to explore.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, ".work", "demo")
CDI = os.path.join(ROOT, ".venv", "bin", "cdi")
NAME = "demo"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def cdi(*args: str, check: bool = True, stdin: str | None = None, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    if not quiet:
        print("$ cdi " + " ".join(args), flush=True)
    p = subprocess.run([CDI, *args], input=stdin, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if not quiet:
        print(p.stdout, end="", flush=True)
    if check and p.returncode != 0:
        sys.exit(f"demo: `cdi {' '.join(args)}` failed (exit {p.returncode})")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_image() -> tuple[str, str]:
    """(raw path, description): the test guest if it builds here, else a generated disk."""
    build = os.path.join(ROOT, "images", "guest", "build.sh")
    if os.path.exists(build):
        p = subprocess.run(["bash", build], text=True, capture_output=True)
        lines = [ln for ln in p.stdout.strip().splitlines() if ln.strip()]
        disk = os.path.join(lines[-1], "disk.raw") if lines else ""
        if p.returncode == 0 and os.path.isfile(disk):
            return disk, "the pycdi test guest (kernel + busybox initramfs)"
        print(f"demo: the test guest did not build ({p.stderr.strip()[-300:]}); using a generated disk")
    raw = os.path.join(WORK, "sample.raw")
    with open(raw, "wb") as f:
        f.truncate(64 << 20)
        for i in range(0, 64, 8):  # some data, some holes
            f.seek(i << 20)
            f.write((f"pycdi demo block {i}\n".encode()) * 40000)
    return raw, "a generated 64 MiB disk"


def start_nginx(root: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    prefix = os.path.join(WORK, "nginx")
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log {prefix}/logs/access.log; default_type application/octet-stream; sendfile on;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy; fastcgi_temp_path {prefix}/fcgi;
  uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", prefix, "-e", os.path.join(prefix, "logs", "error.log")])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    sys.exit("demo: nginx did not start; see .work/demo/nginx/logs/error.log")


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    www = os.path.join(WORK, "www")
    os.makedirs(www)
    say("Making a disk image and serving it with nginx on 127.0.0.1")
    raw, what = make_image()
    qcow2 = os.path.join(www, "disk.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", raw, qcow2], check=True)
    nginx, port = start_nginx(www)
    url = f"http://127.0.0.1:{port}/disk.qcow2"
    print(f"{what}: {os.path.getsize(qcow2)} bytes of compressed qcow2 at {url}")
    try:
        # A previous run's VM and DataVolume: the VM first, it uses the volume.
        if cdi("get", "vm", f"{NAME}-vm", check=False, quiet=True).returncode == 0:
            cdi("delete", "vm", f"{NAME}-vm")
        if cdi("get", "dv", NAME, check=False, quiet=True).returncode == 0:
            cdi("delete", "dv", NAME)
        manifest = f"""apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: {NAME}
spec:
  source:
    http:
      url: "{url}"
  storage:
    resources:
      requests:
        storage: 256Mi
"""
        say("Creating the DataVolume")
        print(manifest)
        cdi("apply", "-f", "-", stdin=manifest)
        say("Watching it (cdi get dv -w) until it is Ready")
        watcher = subprocess.Popen([CDI, "get", "dv", NAME, "-w"])
        try:
            cdi("wait", "dv", NAME, "--for=condition=Ready", "--timeout=300s")
        finally:
            time.sleep(0.3)
            watcher.send_signal(signal.SIGINT)
            watcher.wait(timeout=10)
        say("Where the disk lives")
        cdi("get", "pvc", NAME, "-o", "wide")
        pvc = json.loads(cdi("get", "pvc", NAME, "-o", "json", quiet=True).stdout)
        disk = pvc["metadata"]["annotations"]["embedded.cdi.kubevirt.io/disk-path"]
        cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", raw, disk], capture_output=True, text=True)
        if cmp.returncode != 0:
            print(cmp.stdout, cmp.stderr)
            sys.exit(f"demo: {disk} does not hold the image's bytes")
        print(f"verified: {disk} holds exactly the image's content (qemu-img compare)")
        boot = os.path.join(ROOT, "scripts", "demo_vm.py")
        if os.path.exists(boot):
            say("Booting it as a VirtualMachine")
            rc = subprocess.run([sys.executable, boot, NAME]).returncode
            if rc != 0:
                return rc
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
    say("Done. Try: .venv/bin/cdi get dv; .venv/bin/cdi describe dv demo; .venv/bin/cdi delete dv demo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
