"""The worker side of confinement that needs no root: the spec, path rewriting and preloading."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cdi.common import confinement
from cdi.common.confinement import Grant, Spec


def test_the_spec_survives_the_environment() -> None:
    spec = Spec(1_500_000_001, 1_500_000_001, (Grant("run", "/d/workers/w/run"), Grant("volume", "/dev/loop7", "device")),
                ("importers",))
    assert Spec.from_env(spec.to_env()) == spec
    with pytest.raises(confinement.ConfinementError, match="not a valid confinement spec"):
        Spec.from_env('{"uid": "x"}')


def test_host_paths_become_what_the_worker_sees() -> None:
    spec = Spec(1, 1, (Grant("run", "/d/workers/w/run"), Grant("volume", "/d/pools/fs/u"),
                       Grant("inner", "/d/pools/fs/u/sub")))
    env = {
        "DATA": "/d/pools/fs/u", "DISK": "/d/pools/fs/u/disk.img", "INNER": "/d/pools/fs/u/sub/x",
        "SOCK": "unix:/d/workers/w/run/upload.sock", "NEAR": "/d/pools/fs/uu/disk.img", "OTHER": "/etc/hosts",
    }
    out = confinement.rewrite(env, spec)
    assert out == {
        "DATA": "/tmp/cdi/volume", "DISK": "/tmp/cdi/volume/disk.img", "INNER": "/tmp/cdi/inner/x",
        "SOCK": "unix:/tmp/cdi/run/upload.sock", "NEAR": "/d/pools/fs/uu/disk.img", "OTHER": "/etc/hosts",
    }


def test_without_a_spec_nothing_changes() -> None:
    env = {"PATH": "/usr/bin", "IMPORTER_DATA_DIR": "/d/v"}
    assert confinement.enter(env) == env


def test_preloading_the_worker_packages_does_not_run_a_worker() -> None:
    """``importers/__main__.py`` runs the importer when imported: preloading must skip it."""
    code = ("from cdi.common import confinement\n"
            "confinement.preload(('importers', 'uploadproxy', 'cdi.datapath'))\n"
            "import sys\n"
            "print(sorted(m for m in sys.modules if m.endswith('__main__') and m != '__main__'))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMPORTER_", "CDI_"))}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]" and "result:" not in p.stderr, (p.stdout, p.stderr)
    assert "importers.sources.http" in subprocess.run(
        [sys.executable, "-c", "from cdi.common import confinement; import sys; "
         "confinement.preload(('importers',)); print(sorted(sys.modules))"],
        capture_output=True, text=True, timeout=60, env=env, check=True).stdout


def test_two_workers_never_share_a_uid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from cdi.backends.embedded.workers import GRANTS, LocalWorkers

    base = 2_000_000
    workers = LocalWorkers(str(tmp_path / "workers"), isolate=False, uid_base=base, uid_count=3)
    first, _ = workers.ids("importer-default.a")
    assert base <= first < base + 3 and workers.ids("importer-default.a") == (first, first)

    def hold(holder: str, uid: int) -> None:
        os.makedirs(tmp_path / "workers" / holder)
        (tmp_path / "workers" / holder / GRANTS).write_text(json.dumps({"uid": uid, "devices": []}))

    second = base + (first - base + 1) % 3
    hold("importer-default.b", first)  # a running worker holds a's uid: a moves on, past b's too
    hold("importer-default.c", second)
    assert workers.ids("importer-default.a")[0] == base + (first - base + 2) % 3
    hold("importer-default.d", base + (first - base + 2) % 3)
    with pytest.raises(Exception, match="worker uids are in use"):
        workers.ids("importer-default.a")


def test_a_worker_never_gets_the_uid_of_a_user_of_this_machine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pwd

    from cdi.backends.embedded.workers import LocalWorkers

    mine = os.getuid()
    assert pwd.getpwuid(mine)  # root, or whoever runs the tests: a known user
    workers = LocalWorkers(str(tmp_path / "w"), isolate=False, uid_base=mine, uid_count=1)
    with pytest.raises(Exception, match="worker uids are in use"):
        workers.ids("importer-default.a")
