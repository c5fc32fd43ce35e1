from __future__ import annotations

import threading
import time

from .conftest import dv_yaml
from .helpers import cond, set_status


def _later(delay: float, fn) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_delete_plain_and_not_found(cli, store, write):
    cli("apply", "-f", write("dv.yaml", dv_yaml("a") + "---\n" + dv_yaml("b")))
    r = cli("delete", "dv", "a", "nope", "b")
    assert r.rc == 1
    assert r.out == 'datavolume.cdi.kubevirt.io "a" deleted\ndatavolume.cdi.kubevirt.io "b" deleted\n'
    assert r.err == 'Error from server (NotFound): datavolumes.cdi.kubevirt.io "nope" not found\n'
    assert store.list("DataVolume") == []


def test_delete_by_file_and_all(cli, store, write):
    f = write("dv.yaml", dv_yaml("a") + "---\n" + dv_yaml("b"))
    cli("apply", "-f", f)
    r = cli("delete", "-f", f)
    assert (r.rc, r.out.count("deleted")) == (0, 2)
    cli("apply", "-f", f)
    r = cli("delete", "dv", "--all")
    assert (r.rc, r.out.count("deleted")) == (0, 2)
    assert store.list("DataVolume") == []


def test_delete_waits_for_finalizers(cli, store, write, _no_controller):
    cli("apply", "-f", write("dv.yaml", dv_yaml()))
    o = store.get("DataVolume", "default", "fedora")
    o["metadata"]["finalizers"] = ["cdi.kubevirt.io/dataVolume"]
    store.update(o)
    _no_controller.clear()

    def finalize() -> None:
        cur = store.get("DataVolume", "default", "fedora")
        cur["metadata"]["finalizers"] = []
        store.update(cur)

    t = _later(0.5, finalize)
    start = time.monotonic()
    r = cli("delete", "dv", "fedora")
    t.join()
    assert (r.rc, r.out) == (0, 'datavolume.cdi.kubevirt.io "fedora" deleted\n')
    assert time.monotonic() - start >= 0.4
    assert store.get("DataVolume", "default", "fedora") is None
    assert _no_controller  # the controller was asked to run so that it finalizes


def test_delete_wait_timeout_and_no_wait(cli, store, write):
    cli("apply", "-f", write("dv.yaml", dv_yaml()))
    o = store.get("DataVolume", "default", "fedora")
    o["metadata"]["finalizers"] = ["cdi.kubevirt.io/dataVolume"]
    store.update(o)
    r = cli("delete", "dv", "fedora", "--timeout=0.3s")
    assert r.rc == 1 and r.err == "error: timed out waiting for the condition on datavolumes/fedora\n"
    r = cli("delete", "dv", "fedora", "--wait=false")
    assert r.rc == 0
    assert store.get("DataVolume", "default", "fedora")["metadata"]["deletionTimestamp"]


def test_wait_condition_met(cli, store, write):
    cli("apply", "-f", write("dv.yaml", dv_yaml()))
    t = _later(
        0.3,
        lambda: set_status(
            store,
            "DataVolume",
            "fedora",
            {"phase": "Succeeded", "conditions": [cond("Ready", "True", "Completed")]},
        ),
    )
    r = cli("wait", "dv", "fedora", "--for=condition=Ready", "--timeout=5s")
    t.join()
    assert (r.rc, r.out, r.err) == (0, "datavolume.cdi.kubevirt.io/fedora condition met\n", "")
    r = cli("wait", "dv/fedora", "--for=jsonpath={.status.phase}=Succeeded")
    assert (r.rc, r.out) == (0, "datavolume.cdi.kubevirt.io/fedora condition met\n")
    r = cli("wait", "dv", "fedora", "--for=condition=ready=true")
    assert r.rc == 0
    r = cli(
        "wait", "dv", "fedora", '--for=jsonpath={.status.conditions[?(@.type=="Ready")].reason}=Completed'
    )
    assert r.rc == 0


def test_wait_timeout(cli, write):
    cli("apply", "-f", write("dv.yaml", dv_yaml()))
    start = time.monotonic()
    r = cli("wait", "dv", "fedora", "--for=condition=Ready", "--timeout=0.5s")
    assert (r.rc, r.out) == (1, "")
    assert r.err == "error: timed out waiting for the condition on datavolumes/fedora\n"
    assert 0.4 <= time.monotonic() - start < 3


def test_wait_fails_fast_on_failed_dv(cli, store, write):
    cli("apply", "-f", write("dv.yaml", dv_yaml()))
    t = _later(
        0.3,
        lambda: set_status(
            store,
            "DataVolume",
            "fedora",
            {
                "phase": "Failed",
                "conditions": [
                    cond("Ready", "False", "Error"),
                    cond("Running", "False", "NotFound", "HTTP 404 from http://127.0.0.1:8080/disk.qcow2"),
                ],
            },
        ),
    )
    start = time.monotonic()
    r = cli("wait", "dv", "fedora", "--for=condition=Ready", "--timeout=30s")
    t.join()
    assert time.monotonic() - start < 5
    assert (r.rc, r.out) == (1, "")
    assert r.err == (
        "error: datavolume fedora failed: NotFound: HTTP 404 from http://127.0.0.1:8080/disk.qcow2\n"
    )


def test_wait_delete_and_not_found(cli, store, write):
    cli("apply", "-f", write("dv.yaml", dv_yaml()))
    t = _later(0.3, lambda: store.delete("DataVolume", "default", "fedora"))
    r = cli("wait", "dv", "fedora", "--for=delete", "--timeout=5s")
    t.join()
    assert (r.rc, r.out) == (0, "datavolume.cdi.kubevirt.io/fedora condition met\n")
    r = cli("wait", "dv", "ghost", "--for=condition=Ready")
    assert (r.rc, r.err) == (
        1,
        'Error from server (NotFound): datavolumes.cdi.kubevirt.io "ghost" not found\n',
    )
    r = cli("wait", "dv", "ghost", "--for=bogus")
    assert r.rc == 1 and r.err.startswith("error: unrecognized condition")
