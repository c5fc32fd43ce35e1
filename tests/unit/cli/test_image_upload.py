"""cdi image-upload without a controller: settings checked up front, output details."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from cdi.api.upload import worker_name
from cdi.backends.embedded.config import Config
from cdi.cli.image_upload import Progress, issue_token
from cdi.common.errors import PermanentError
from cdi.store.sqlite import Store
from tests.unit.cli.conftest import Result


def _config(data_dir: str, upload: str) -> None:
    with open(os.path.join(data_dir, "config.yaml"), "w") as f:
        f.write(f"storageClasses:\n  local: {{path: {data_dir}/pools/local, default: true}}\nupload:\n{upload}")


def test_token_ttl_over_an_hour_fails_before_anything_is_created(
        cli: Callable[..., Result], data_dir: str, store: Store, write: Callable[[str, str], str]) -> None:
    _config(data_dir, "  tokenTTLSeconds: 7200\n")
    image = write("disk.raw", "x" * 4096)
    r = cli("image-upload", "dv", "big-ttl", "--image-path", image, "--size", "16Mi")
    assert r.rc == 1
    assert "upload.tokenTTLSeconds" in r.err and "7200" in r.err and "(0, 3600]" in r.err, r.err
    assert "config.yaml" in r.err
    assert store.get("DataVolume", "default", "big-ttl") is None  # nothing was created


def test_token_ttl_is_checked_where_the_config_is_loaded(data_dir: str) -> None:
    _config(data_dir, "  tokenTTLSeconds: 7200\n")
    with pytest.raises(PermanentError, match=r"upload\.tokenTTLSeconds.*\(0, 3600\]"):
        Config.load(data_dir)
    with pytest.raises(ValueError, match=r"config\.yaml: upload\.tokenTTLSeconds"):
        issue_token(data_dir, "default", "disk")
    _config(data_dir, "  tokenTTLSeconds: 3600\n")
    assert Config.load(data_dir).upload.token_ttl == 3600
    assert issue_token(data_dir, "default", "disk").count(".") == 2


def test_progress_without_a_tty_prints_100_percent_once() -> None:
    for chunks in ([1024], [256, 512, 768, 1024]):
        out = io.StringIO()
        p = Progress(1024, out, tty=False)
        for done in chunks:
            p.update(done)
        p.finish()
        assert out.getvalue().count("100.0%") == 1, out.getvalue()


def test_progress_finish_after_an_early_stop_prints_where_it_stopped() -> None:
    out = io.StringIO()
    p = Progress(1024, out, tty=False)
    p.update(256)
    p.update(512)  # throttled: not printed yet
    p.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "25.0%" in lines[0] and "50.0%" in lines[1], lines


# --- waiting for the outcome of this upload (no controller: the test plays it) --------------------

STALE = ("ready for another upload; the last one failed: ChecksumError: checksum mismatch: expected "
         "sha256:00, got sha256:11")


def _upload_dv(store: Store, data_dir: str, name: str, state: dict[str, Any]) -> None:
    """An UploadReady DataVolume whose Running condition still names an earlier failure, its
    claim, and the upload server's state file."""
    store.create({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                  "metadata": {"name": name, "namespace": "default"},
                  "spec": {"source": {"upload": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}},
                  "status": {"phase": "UploadReady", "conditions": [
                      {"type": "Running", "status": "True", "reason": "ChecksumError", "message": STALE,
                       "lastHeartbeatTime": "2026-01-01T00:00:01Z"}]}})
    store.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                  "metadata": {"name": name, "namespace": "default", "annotations": {
                      "embedded.cdi.kubevirt.io/disk-path": f"/vol/{name}/disk.img",
                      "embedded.cdi.kubevirt.io/volume-path": f"/vol/{name}"}},
                  "spec": {"resources": {"requests": {"storage": "1Gi"}}}})
    workdir = os.path.join(data_dir, "workers", worker_name("default", name), "run")
    os.makedirs(workdir)
    with open(os.path.join(workdir, "upload-state.json"), "w") as f:
        json.dump(state, f)


def _set_status(store: Store, name: str, phase: str, message: str, after: float) -> threading.Thread:
    def later() -> None:
        time.sleep(after)
        dv = store.must_get("DataVolume", "default", name)
        dv["status"] = {"phase": phase, "conditions": [
            {"type": "Running", "status": "True", "reason": "x", "message": message,
             "lastHeartbeatTime": "2026-01-01T00:00:09Z"}]}
        store.update(dv, check_rv=False)  # the store keeps one connection per thread

    t = threading.Thread(target=later)
    t.start()
    return t


def _wait(data_dir: str, name: str, attempt: str) -> tuple[int, str, str]:
    import argparse

    from cdi.cli.context import CLIError, Context
    from cdi.cli.image_upload import ImageUpload, Response

    args = argparse.Namespace(kind="dv", name=name, image_path="disk.raw", archive_path=None, block_volume=False,
                              volume_mode=None)
    out, err = io.StringIO(), io.StringIO()
    ctx = Context(data_dir_arg=data_dir, out=out, err=err)
    up = ImageUpload(ctx, args)
    try:
        code = up._wait_done(up._this_run(Response(200, "", "", {"x-upload-attempt": attempt})))
    except CLIError as e:
        code, err = e.code, io.StringIO(e.message)
    finally:
        ctx.close()
    return code, out.getvalue(), err.getvalue()


def test_an_earlier_failure_does_not_fail_this_upload(data_dir: str, store: Store) -> None:
    _upload_dv(store, data_dir, "retry", {"state": "Done", "attempts": 2, "pid": 7,
                                           "lastError": {"reason": "ChecksumError", "message": "mismatch",
                                                         "attempt": 1}})
    # the controller has not caught up: the message changes (new heartbeat) but still names attempt 1
    t1 = _set_status(store, "retry", "UploadReady", STALE + " ", after=0.3)
    t2 = _set_status(store, "retry", "Succeeded", "Upload Complete", after=0.8)
    code, out, err = _wait(data_dir, "retry", "2")
    t1.join()
    t2.join()
    assert code == 0, err
    assert "Processing completed successfully" in out and "the disk is /vol/retry/disk.img" in out


def test_a_failure_of_this_upload_is_reported_before_the_datavolume_says_so(data_dir: str, store: Store) -> None:
    _upload_dv(store, data_dir, "bad", {"state": "Ready", "attempts": 2, "pid": 7,
                                         "lastError": {"reason": "InvalidImage", "message": "not a qcow2",
                                                       "attempt": 2}})
    code, _out, err = _wait(data_dir, "bad", "2")
    assert code == 1
    assert err == "processing the upload failed: InvalidImage: not a qcow2; the volume is ready for another upload"
