"""Admission attacks through the real ``cdi`` command and controller daemon.

Someone who may run ``cdi apply`` (or hand a manifest to someone who does) sends a billion
laughs, a nesting bomb or an oversized object: each is refused fast, with a message, under a
memory limit that the unbounded parser blew through. The data dir holds Secrets: a pre-created
0755 data dir and a 0644 state.db are tightened when the CLI or the controller starts, a fresh
one is private whatever the umask, and a data dir owned by another user is refused.
"""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdi.controller import daemon
from cdi.store.sqlite import Store
from tests.peers import bombs, images

from .conftest import MiB, http_dv

NOBODY = 65534
MEMORY_LIMIT = 1 << 30  # the unbounded parser needed more than 2 GiB for the 700-byte bomb


def cdi_command() -> list[str]:
    """The installed console script when there is one (the real entry point), else the module."""
    script = Path(sys.executable).with_name("cdi")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cdi.cli.main"]


def run_cdi(data_dir: str, *args: str, stdin: bytes | None = None, umask: int = 0o022,
            timeout: float = 60) -> tuple[int, str, float]:
    """Run ``cdi`` in a child with 1 GiB of address space; returns (exit code, stderr, seconds)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    start = time.monotonic()
    p = subprocess.run([*cdi_command(), "--data-dir", data_dir, *args], input=stdin, capture_output=True,
                       env=env, preexec_fn=limit, umask=umask, timeout=timeout)
    return p.returncode, p.stderr.decode(), time.monotonic() - start


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- manifests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("laughs.yaml", bombs.laughs_configmap(), "excessive aliasing"),
        ("laughs.json", bombs.laughs_flow(), "excessive aliasing"),
        ("deep.yaml", bombs.deep(), "nested more than 100 levels deep"),
    ],
)
def test_bombs_are_refused_fast_within_a_memory_limit(tmp_path, name, text, words):
    data_dir = str(tmp_path / "cdi")
    f = tmp_path / name
    f.write_text(text)
    rc, err, took = run_cdi(data_dir, "--no-controller", "apply", "-f", str(f))
    assert rc == 1, err
    assert f'error parsing "{f}": document 1' in err and words in err, err
    assert "MemoryError" not in err and "Traceback" not in err
    assert took < 10, f"cdi took {took:.1f}s"
    # the same from stdin
    rc, err, took = run_cdi(data_dir, "--no-controller", "apply", "-f", "-", stdin=text.encode())
    assert rc == 1 and 'error parsing "STDIN"' in err and words in err, err
    assert took < 10


def test_a_50_mb_annotation_never_reaches_the_store(tmp_path):
    data_dir = tmp_path / "cdi"
    manifest = tmp_path / "huge.yaml"
    with open(manifest, "w") as f:
        f.write("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: huge\n  annotations:\n    blob: ")
        f.write("a" * (50 * MiB))
        f.write("\n")
    rc, err, took = run_cdi(str(data_dir), "--no-controller", "apply", "-f", str(manifest))
    assert rc == 1 and "is larger than 3 MiB" in err, err
    assert took < 10
    # under the input limit, it is the annotation limit that refuses it
    with open(manifest, "w") as f:
        f.write("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: huge\n  annotations:\n    blob: ")
        f.write("a" * MiB)
        f.write("\n")
    rc, err, _ = run_cdi(str(data_dir), "--no-controller", "apply", "-f", str(manifest))
    assert rc == 1 and "metadata.annotations: Too long: must have at most 262144 bytes" in err, err
    assert Store(str(data_dir / "state.db")).list("ConfigMap") == []
    db = data_dir / "state.db"
    used = sum(os.path.getsize(p) for p in (db, Path(f"{db}-wal")) if p.exists())
    assert used < 1 * MiB, used


# --- the data dir -------------------------------------------------------------------------------


def loose_data_dir(path: Path) -> Path:
    """A data dir pre-created 0755 with a 0644 state.db (+ wal), a 0755 workers dir and 0644 keys."""
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    for name in ("state.db", "state.db-wal"):
        (path / name).write_bytes(b"")
        os.chmod(path / name, 0o644)
    (path / "workers").mkdir(mode=0o755)
    tls = path / "upload" / "tls"
    keys = path / "upload" / "keys"
    tls.mkdir(parents=True, mode=0o755)
    keys.mkdir(mode=0o755)
    for key in (tls / "tls.key", tls / "ca.key", keys / "20240101000000-abcd.key"):
        key.write_text("-----BEGIN PRIVATE KEY-----\n")
        os.chmod(key, 0o644)
    for d in (path / "workers", path / "upload", tls, keys):
        os.chmod(d, 0o755)
    return path


def assert_private(path: Path) -> None:
    assert mode(path) == 0o700
    for d in ("workers", "upload", "upload/tls", "upload/keys"):
        assert mode(path / d) == 0o700, d
    for f in ("state.db", "upload/tls/tls.key", "upload/tls/ca.key", "upload/keys/20240101000000-abcd.key"):
        assert mode(path / f) == 0o600, f
    for f in ("state.db-wal", "state.db-shm"):
        if (path / f).exists():
            assert mode(path / f) == 0o600, f


def test_the_cli_tightens_a_pre_created_0755_data_dir_and_0644_state_db(tmp_path):
    data_dir = loose_data_dir(tmp_path / "cdi")
    rc, err, _ = run_cdi(str(data_dir), "--no-controller", "create", "secret", "generic", "s",
                         "--from-literal=password=hunter2")
    assert rc == 0, err
    assert_private(data_dir)
    assert f"tightened the permissions of {data_dir} from 0755 to 0700" in err
    assert f"tightened the permissions of {data_dir}/state.db from 0644 to 0600" in err
    assert f"tightened the permissions of {data_dir}/upload/tls/tls.key from 0644 to 0600" in err
    assert "hunter2" not in err
    rc, err, _ = run_cdi(str(data_dir), "--no-controller", "get", "secrets")
    assert rc == 0 and "tightened" not in err  # once tightened, nothing more to say


def test_the_controller_tightens_the_data_dir_when_it_starts(tmp_path):
    data_dir = loose_data_dir(tmp_path / "cdi")
    (data_dir / "controller.log").write_text("")
    with open(data_dir / "controller.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "cdi.controller.daemon", str(data_dir)], stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not daemon.status(str(data_dir))["running"]:
            time.sleep(0.05)
        assert daemon.status(str(data_dir))["running"], (data_dir / "controller.log").read_text()
        assert_private(data_dir)
        log_text = (data_dir / "controller.log").read_text()
        assert f"tightened the permissions of {data_dir} from 0755 to 0700" in log_text
        assert f"tightened the permissions of {data_dir}/workers from 0755 to 0700" in log_text
        assert f"tightened the permissions of {data_dir}/upload/keys/20240101000000-abcd.key from 0644 to 0600" in log_text
    finally:
        daemon.stop(str(data_dir))


def test_a_fresh_data_dir_is_private_even_with_umask_022_or_000(tmp_path):
    for umask in (0o022, 0o000):
        data_dir = tmp_path / f"fresh-{umask:o}"
        secret = tmp_path / "secret.yaml"
        secret.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {password: x}\n")
        rc, err, _ = run_cdi(str(data_dir), "apply", "-f", str(secret), umask=umask)
        try:
            assert rc == 0, err
            assert mode(data_dir) == 0o700
            for f in ("state.db", "state.db-wal", "state.db-shm"):
                assert mode(data_dir / f) == 0o600, (f, oct(mode(data_dir / f)))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (data_dir / "workers").exists():
                time.sleep(0.05)
            assert mode(data_dir / "workers") == 0o700
            assert "tightened" not in err
        finally:
            daemon.stop(str(data_dir))


def test_a_data_dir_owned_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory to another user")
    data_dir = tmp_path / "theirs"
    data_dir.mkdir(mode=0o700)
    (data_dir / "state.db").write_bytes(b"")
    os.chown(data_dir, NOBODY, NOBODY)
    rc, err, _ = run_cdi(str(data_dir), "--no-controller", "get", "dv")
    assert rc == 1
    assert f"the data dir {data_dir} belongs to" in err and f"uid {NOBODY}" in err
    assert "Use a data dir of your own (--data-dir or CDI_DATA_DIR)" in err and "Traceback" not in err
    assert mode(data_dir) == 0o700 and mode(data_dir / "state.db") != 0o600  # nothing touched
    rc, err, _ = run_cdi(str(data_dir), "serve")
    assert rc == 1 and "belongs to" in err
    p = subprocess.run([sys.executable, "-m", "cdi.controller.daemon", str(data_dir)], capture_output=True,
                       timeout=30, env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    assert p.returncode == 1 and b"belongs to" in p.stderr
    assert not (data_dir / "controller.lock").exists()  # refused before writing anything


def test_a_config_yaml_planted_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to plant a file owned by another user")
    data_dir = tmp_path / "cdi"
    data_dir.mkdir(mode=0o777)
    planted = data_dir / "config.yaml"
    planted.write_text("storageClasses:\n  local: {path: /etc, default: true}\n")
    os.chown(planted, NOBODY, NOBODY)
    rc, err, _ = run_cdi(str(data_dir), "--no-controller", "get", "dv")
    assert rc == 1
    assert f"{planted} in the data dir belongs to" in err and "Check it and remove it" in err


# --- the controller's own writes --------------------------------------------------------------


@pytest.mark.peers
def test_the_controller_imports_a_datavolume_with_annotations_near_the_limit(cluster, nginx, tmp_images,
                                                                                served_path):
    raw = tmp_images / "disk.raw"
    images.make_raw(str(raw), 2 * MiB, seed=11)
    note = {"example.com/note": "n" * 250_000}  # admitted (< 256 KiB); the controller adds its own
    cluster.apply(http_dv("annotated", f"{nginx.http_url}/{served_path(raw)}", size="16Mi", annotations=note))
    dv = cluster.wait_phase("annotated")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    assert dv["metadata"]["annotations"]["example.com/note"] == note["example.com/note"]
    disk = cluster.pvc("annotated")["metadata"]["annotations"]["embedded.cdi.kubevirt.io/disk-path"]
    assert images.sha256_of(disk, 2 * MiB) == images.sha256_of(str(raw))  # the import itself went through
    assert mode(cluster.data_dir) == 0o700 and mode(Path(cluster.data_dir) / "state.db") == 0o600
