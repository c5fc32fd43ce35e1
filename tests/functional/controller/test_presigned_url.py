"""A presigned-style URL (credentials in userinfo and in query values) is never shown.

The URL's secrets may live in the DataVolume's spec (the user wrote them there), and nowhere
else: not in the claim's annotations, the DataVolume's status messages and conditions, events,
the controller's log, the worker's log or result, nor in what `cdi get`/`cdi describe` print
outside the spec. Checked for an import that succeeds and one that fails (the failure message
names the URL). Every query value counts, whatever its name (``partNumber`` as much as
``X-Amz-Signature``): a presigned URL's credential may be under any name.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cdi.cli.main import main as cdi_main
from tests.peers import images

from .conftest import MiB, http_dv

pytestmark = [pytest.mark.peers]

SECRETS = ("SigS3cretValue", "CredS3cretValue", "TokS3cretValue", "PartS3cretValue", "UserS3cret", "PassS3cret")


def presigned(base: str, path: str) -> str:
    host = base.split("://", 1)[1]
    return (f"http://{SECRETS[4]}:{SECRETS[5]}@{host}/{path}?X-Amz-Signature={SECRETS[0]}"
            f"&X-Amz-Credential={SECRETS[1]}&X-Amz-Security-Token={SECRETS[2]}&partNumber={SECRETS[3]}")


def cli(data_dir: str, *args: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    cdi_main(["--data-dir", data_dir, *args], out=out, err=err)
    return out.getvalue() + err.getvalue()


def shown_text(cluster: Any) -> dict[str, str]:
    """Everything the system shows or records about its objects, the DataVolumes' specs left out."""
    seen: dict[str, str] = {}
    for kind in ("DataVolume", "PersistentVolumeClaim"):
        for obj in cluster.store.list(kind):
            obj = dict(obj)
            if kind == "DataVolume":
                obj.pop("spec", None)
                obj["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
            name = f"{kind}/{obj['metadata']['name']}"
            seen[name] = json.dumps(obj)
            seen[f"events of {name}"] = json.dumps(cluster.store.events(kind, "default", obj["metadata"]["name"]))
    for root, _dirs, files in os.walk(cluster.data_dir):
        for f in files:
            path = os.path.join(root, f)
            if f.startswith("state.db") or os.path.islink(path) or not os.path.isfile(path):
                continue
            if os.path.getsize(path) > 4 * MiB:  # disk images
                continue
            seen[path] = Path(path).read_bytes().decode("utf-8", "replace")
    for name in ("ok", "missing"):
        seen[f"cdi get dv {name}"] = cli(cluster.data_dir, "get", "dv", name)
        seen[f"cdi get pvc {name} -o yaml"] = cli(cluster.data_dir, "get", "pvc", name, "-o", "yaml")
        text = cli(cluster.data_dir, "describe", "dv", name)
        # the Spec section is the user's own manifest; what follows it is ours
        seen[f"cdi describe dv {name} (after Spec)"] = text.split("\nStatus:", 1)[-1]
        seen[f"cdi describe pvc {name}"] = cli(cluster.data_dir, "describe", "pvc", name)
        seen[f"cdi logs dv {name}"] = cli(cluster.data_dir, "logs", "dv", name)
    return seen


def test_presigned_url_secrets_appear_in_no_annotation_event_log_or_message(cluster, nginx, tmp_images, served_path):
    raw = str(tmp_images / "disk.raw")
    images.make_raw(raw, 2 * MiB, seed=11)
    cluster.apply(http_dv("ok", presigned(nginx.http_url, served_path(raw)), "16Mi"))
    cluster.apply(http_dv("missing", presigned(nginx.http_url, served_path(tmp_images) + "/nothing-here.img"), "16Mi",
                          annotations={"cdi.kubevirt.io/storage.import.retryLimit": "0"}))
    ok, missing = cluster.wait_phase("ok"), cluster.wait_phase("missing")
    assert ok["status"]["phase"] == "Succeeded", ok["status"]
    assert missing["status"]["phase"] == "Failed", missing["status"]
    endpoint = cluster.pvc("ok")["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.endpoint"]
    assert endpoint == (f"http://<redacted>@{nginx.http_url.split('://', 1)[1]}/{served_path(raw)}?X-Amz-Signature="
                        "<redacted>&X-Amz-Credential=<redacted>&X-Amz-Security-Token=<redacted>&partNumber=<redacted>")
    # the failure names the URL a user can recognise, without its secrets
    failed = {c["type"]: c for c in missing["status"]["conditions"]}["Running"]["message"]
    assert "nothing-here.img" in failed and "404" in failed, failed
    seen = shown_text(cluster)
    assert any("nothing-here.img" in text for name, text in seen.items() if "log" in name)  # the logs were read
    leaks = [(where, s) for where, text in seen.items() for s in SECRETS if s in text]
    assert not leaks, leaks
