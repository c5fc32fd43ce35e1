"""Benchmark: upload of a multi-GiB qcow2 and raw image through the upload proxy + upload server into
a volume, against two baselines on the same machine and the same files:

- ``curl -T`` into a plain file server (nginx, WebDAV PUT, over HTTPS like our proxy);
- ``qemu-img convert`` of the same local file into a file (then fsync, as our upload syncs).

Ours is the full path: ``cdi image-upload dv`` (TLS client) -> proxy -> upload server -> the data
path -> the volume's disk.img, timed from the first byte sent until the DataVolume is Succeeded.
Prints throughput (image bytes / second) and the ratios, and the peak RSS of the proxy and of the
upload server (sampled from /proc every 50 ms). Targets (issue 4): ours >= 0.8 x the slower of the
two baselines; proxy RSS < 64 MiB whatever the image size.

    .venv/bin/python -m bench.upload.run            # 2 GiB images (about 10 minutes)
    .venv/bin/python -m bench.upload.run --quick    # 256 MiB images
    .venv/bin/python -m bench.upload.run --size 4G --only raw
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.images import disk_layout, write_raw
from bench.measure import TreeSampler, sha256_prefix
from bench.serve import free_port
from cdi.api.upload import worker_name

MiB = 1 << 20
GiB = 1 << 30
PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NGINX_CONF = """
daemon off;
user root;
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {w}/body;
    proxy_temp_path {w}/proxy; fastcgi_temp_path {w}/fcgi; uwsgi_temp_path {w}/uwsgi; scgi_temp_path {w}/scgi;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root};
        location / {{ dav_methods PUT; create_full_put_path on; }}
    }}
}}
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def drop_caches() -> None:
    with contextlib.suppress(OSError):
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")


def preload(path: str) -> None:
    """Read the image once so every tool starts with it in the page cache (fair to all)."""
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


def make_images(workdir: str, size: int) -> dict[str, str]:
    os.makedirs(workdir, exist_ok=True)
    raw = os.path.join(workdir, f"disk-{size}.raw")
    qcow = os.path.join(workdir, f"disk-{size}.qcow2")
    if not os.path.exists(raw):
        log(f"writing {raw}")
        write_raw(raw, size, disk_layout(size, 1), 1, "upload")
    if not os.path.exists(qcow):
        log(f"converting to {qcow}")
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow + ".tmp"], check=True)
        os.replace(qcow + ".tmp", qcow)
    return {"raw": raw, "qcow2": qcow}


# --- baselines -------------------------------------------------------------------------------


class Nginx:
    def __init__(self, workdir: str, cert: str, key: str) -> None:
        self.w = workdir
        self.root = os.path.join(workdir, "root")
        os.makedirs(self.root, exist_ok=True)
        self.port = free_port()
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(w=workdir, port=self.port, cert=cert, key=key, root=self.root))
        self.proc = subprocess.Popen(
            ["nginx", "-c", conf, "-p", workdir + "/"], start_new_session=True, stderr=subprocess.DEVNULL
        )
        time.sleep(0.5)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(argv: list[str], dest: str) -> float:
    """Seconds for ``argv`` to write ``dest`` and for ``dest`` to be synced (then it is removed)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(dest)
    t0 = time.monotonic()
    subprocess.run(argv, check=True)
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    t = time.monotonic() - t0
    os.unlink(dest)
    return t


def run_curl(nginx: Nginx, image: str, ca: str) -> float:
    dest = os.path.join(nginx.root, "upload.img")
    return _timed(["curl", "-sS", "--fail", "--cacert", ca, "-T", image, f"https://127.0.0.1:{nginx.port}/upload.img"],
                  dest)


def run_qemu(image: str, fmt: str, workdir: str) -> float:
    dest = os.path.join(workdir, "qemu-out.img")
    return _timed(["qemu-img", "convert", "-f", fmt, "-O", "raw", image, dest], dest)


# --- ours ------------------------------------------------------------------------------------


class Ours:
    def __init__(self, workdir: str) -> None:
        self.data_dir = os.path.join(workdir, "cdi")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        os.makedirs(self.data_dir)
        self.port = free_port()
        with open(os.path.join(self.data_dir, "config.yaml"), "w") as f:
            f.write(
                f"storageClasses:\n  local: {{path: {self.data_dir}/pools/local, default: true}}\n"
                f"upload:\n  proxyPort: {self.port}\n"
            )
        from cdi.controller import daemon
        from cdi.controller.upload import ensure_proxy

        daemon.ensure_running(self.data_dir)
        st = ensure_proxy(self.data_dir, wait=20)
        assert st, "the upload proxy did not start"
        self.ca = st["ca"]
        self.n = 0

    def _pid(self, path: str) -> list[int]:
        try:
            with open(path) as f:
                return [int(f.read().split()[0])]
        except (OSError, ValueError):
            return []

    def run(self, image: str, size_text: str) -> dict[str, Any]:
        self.n += 1
        name = f"bench-{self.n}"
        proxy = TreeSampler(lambda: self._pid(os.path.join(self.data_dir, "upload", "proxy.pid"))).start()
        server = TreeSampler(
            lambda: self._pid(os.path.join(self.data_dir, "workers", worker_name("default", name), "pid"))
        ).start()
        env = dict(os.environ, CDI_DATA_DIR=self.data_dir, PYTHONPATH=ROOT)
        t0 = time.monotonic()
        p = subprocess.run(
            [PY, "-m", "cdi.cli.image_upload", "dv", name, "--image-path", image, "--size", size_text],
            env=env,
            capture_output=True,
            text=True,
        )
        t = time.monotonic() - t0
        proxy.stop()
        server.stop()
        if p.returncode != 0:
            raise RuntimeError(f"image-upload failed: {p.stdout}\n{p.stderr}")
        from cdi.store.sqlite import Store

        store = Store(os.path.join(self.data_dir, "state.db"))
        pvc = store.must_get("PersistentVolumeClaim", "default", name)
        disk = pvc["metadata"]["annotations"]["embedded.cdi.kubevirt.io/disk-path"]
        store.close()
        return {
            "seconds": t,
            "proxy_rss": proxy.peak_tree_rss,
            "server_rss": server.peak_tree_rss,
            "disk": disk,
            "name": name,
        }

    def transfer(self, image: str, size_text: str) -> dict[str, Any]:
        """The data path alone: a DataVolume already UploadReady, ``curl -T`` (the baseline's client)
        through the proxy to the sync endpoint, timed until the answer (= converted and synced)."""
        from cdi.api.validation import admit
        from cdi.cli.image_upload import issue_token
        from cdi.store.sqlite import Store

        self.n += 1
        name = f"bench-{self.n}"
        store = Store(os.path.join(self.data_dir, "state.db"))
        store.create(admit({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                            "metadata": {"name": name, "namespace": "default"},
                            "spec": {"source": {"upload": {}},
                                     "storage": {"resources": {"requests": {"storage": size_text}}}}}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pvc = store.get("PersistentVolumeClaim", "default", name)
            if pvc and (pvc["metadata"].get("annotations") or {}).get("cdi.kubevirt.io/storage.pod.ready") == "true":
                break
            time.sleep(0.05)
        token = issue_token(self.data_dir, "default", name)
        proxy = TreeSampler(lambda: self._pid(os.path.join(self.data_dir, "upload", "proxy.pid"))).start()
        server = TreeSampler(lambda: self._pid(os.path.join(self.data_dir, "workers", worker_name("default", name), "pid"))).start()
        url = f"https://127.0.0.1:{self.port}/v1beta1/upload"
        proxy_cpu0 = sum(_cpu_seconds(p) for p in self._pid(os.path.join(self.data_dir, "upload", "proxy.pid")))
        t0 = time.monotonic()
        subprocess.run(["curl", "-sS", "--fail", "--cacert", self.ca, "-H", f"Authorization: Bearer {token}",
                        "-T", image, url], check=True, stdout=subprocess.DEVNULL)
        t = time.monotonic() - t0
        proxy.stop()
        server.stop()
        cpu = {"proxy": proxy.cpu_user + proxy.cpu_sys - proxy_cpu0, "server": server.cpu_user + server.cpu_sys}
        log(f"       cpu: proxy {cpu['proxy']:.2f} s, upload server {cpu['server']:.2f} s; "
            f"peak rss: proxy {proxy.peak_tree_rss / MiB:.1f} MiB, upload server {server.peak_tree_rss / MiB:.1f} MiB")
        disk = store.must_get("PersistentVolumeClaim", "default", name)["metadata"]["annotations"][
            "embedded.cdi.kubevirt.io/disk-path"]
        store.close()
        return {"seconds": t, "proxy_rss": proxy.peak_tree_rss, "server_rss": server.peak_tree_rss, "disk": disk}

    def stop(self) -> None:
        from cdi.controller import daemon
        from cdi.controller.upload import stop_proxy

        daemon.stop(self.data_dir)
        stop_proxy(self.data_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.upload.run")
    ap.add_argument("--quick", action="store_true", help="256 MiB images")
    ap.add_argument("--size", default=None, help="image size, e.g. 2G (default 2G; 256M with --quick)")
    ap.add_argument("--only", default="raw,qcow2")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    args = ap.parse_args(argv)
    from cdi.common.units import parse_quantity

    size = (
        parse_quantity(args.size.replace("G", "Gi").replace("M", "Mi"))
        if args.size
        else (256 * MiB if args.quick else 2 * GiB)
    )
    images = make_images(os.path.join(args.out, "upload-images"), size)
    work = tempfile.mkdtemp(prefix="upload-bench-", dir=args.out)
    ours = Ours(work)
    tls = os.path.join(ours.data_dir, "upload", "tls")
    nginx = Nginx(os.path.join(work, "nginx"), os.path.join(tls, "tls.crt"), os.path.join(tls, "tls.key"))
    vol_size = f"{(size * 2) // MiB}Mi"
    results: list[dict[str, Any]] = []
    ok = True
    try:
        for fmt in args.only.split(","):
            image = images[fmt]
            nbytes = os.path.getsize(image)
            best: dict[str, float] = {}
            rss = {"proxy": 0, "server": 0}
            for _ in range(args.runs):
                for tool in ("curl -T", "qemu-img convert", "ours", "ours e2e"):
                    drop_caches()
                    preload(image)
                    if tool == "curl -T":
                        t = run_curl(nginx, image, os.path.join(tls, "ca.pem"))
                    elif tool == "qemu-img convert":
                        t = run_qemu(image, fmt, work)
                    else:
                        r = ours.transfer(image, vol_size) if tool == "ours" else ours.run(image, vol_size)
                        t = r["seconds"]
                        rss["proxy"] = max(rss["proxy"], r["proxy_rss"])
                        rss["server"] = max(rss["server"], r["server_rss"])
                        want = sha256_prefix(images["raw"], size)
                        got = sha256_prefix(r["disk"], size)
                        if want != got:
                            log(f"MISMATCH: {r['disk']} differs from the raw image")
                            ok = False
                    log(f"{fmt:6} {tool:17} {t:7.2f}s {nbytes / t / MiB:8.1f} MiB/s")
                    best[tool] = min(best.get(tool, 1e9), t)
            rates = {k: nbytes / v / MiB for k, v in best.items()}
            slower = min(rates["curl -T"], rates["qemu-img convert"])
            ratio = rates["ours"] / slower
            results.append(
                {
                    "format": fmt,
                    "image_bytes": nbytes,
                    "virtual_size": size,
                    "MiB_per_s": rates,
                    "ratio_vs_slower_baseline": ratio,
                    "ratio_e2e_vs_slower_baseline": rates["ours e2e"] / slower,
                    "ratio_vs_curl": rates["ours"] / rates["curl -T"],
                    "ratio_vs_qemu": rates["ours"] / rates["qemu-img convert"],
                    "peak_rss_proxy_MiB": rss["proxy"] / MiB,
                    "peak_rss_server_MiB": rss["server"] / MiB,
                }
            )
    finally:
        nginx.stop()
        ours.stop()
    print()
    print("ours = curl -T through the proxy + upload server into an UploadReady DataVolume, sync endpoint "
          "(answer = converted + synced); ours e2e = cdi image-upload dv (create, wait, upload, Succeeded)")
    print(f"{'format':8}{'curl -T':>12}{'qemu-img':>12}{'ours':>12}{'ours e2e':>12}{'ours/slower':>13}"
          f"{'e2e/slower':>12}{'proxy RSS':>12}{'server RSS':>12}")
    for r in results:
        m = r["MiB_per_s"]
        print(f"{r['format']:8}{m['curl -T']:>9.1f}M/s{m['qemu-img convert']:>9.1f}M/s{m['ours']:>9.1f}M/s"
              f"{m['ours e2e']:>9.1f}M/s{r['ratio_vs_slower_baseline']:>12.2f}x"
              f"{r['ratio_e2e_vs_slower_baseline']:>11.2f}x"
              f"{r['peak_rss_proxy_MiB']:>9.1f}MiB{r['peak_rss_server_MiB']:>9.1f}MiB")
        passed = r["ratio_vs_slower_baseline"] >= 0.8 and r["peak_rss_proxy_MiB"] < 64
        ok = ok and passed
        print(
            f"        target >= 0.8x slower baseline and proxy RSS < 64 MiB: {'PASS' if passed else 'FAIL'}"
        )
    with open(os.path.join(args.out, "upload-bench.json"), "w") as f:
        json.dump(results, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
