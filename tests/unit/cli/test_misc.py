from __future__ import annotations

import pytest

from cdi.cli import printers
from cdi.cli.jsonpath import evaluate, parse_duration, render

from .conftest import dv_yaml
from .helpers import set_status


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (5, "5s"),
        (119, "119s"),
        (182, "3m2s"),
        (600, "10m"),
        (3 * 3600 + 120, "3h2m"),
        (10 * 3600, "10h"),
        (2 * 86400, "2d"),
        (3 * 86400 + 3600, "3d1h"),
        (30 * 86400, "30d"),
        (-5, "<invalid>"),
    ],
)
def test_human_duration(seconds, text):
    assert printers.human_duration(seconds) == text


def test_access_modes_and_bytes():
    assert printers.access_modes(["ReadWriteMany", "ReadWriteOnce", "ReadWriteOnce"]) == "RWO,RWX"
    assert printers.access_modes(["ReadOnlyMany", "ReadWriteOncePod"]) == "ROX,RWOP"
    assert printers.bytes_progress(int(1.2 * (1 << 30)), 4 << 30) == "1.2 GiB/4.0 GiB"
    assert printers.bytes_progress(512, 0) == "512 B/?"
    assert printers.bytes_progress(None, None) == ""


def test_table_alignment():
    lines = printers.table(["name", "phase"], [["a", "Succeeded"], ["longer-name", ""]])
    assert lines == ["NAME          PHASE", "a             Succeeded", "longer-name"]


def test_jsonpath_and_duration():
    o = {
        "metadata": {"annotations": {"embedded.cdi.kubevirt.io/disk-path": "/d"}},
        "status": {"conditions": [{"type": "Bound", "status": "True"}, {"type": "Ready", "status": "False"}]},
    }
    assert evaluate(o, r".metadata.annotations.embedded\.cdi\.kubevirt\.io/disk-path") == ["/d"]
    assert evaluate(o, '.status.conditions[?(@.type=="Ready")].status') == ["False"]
    assert evaluate(o, ".status.conditions[*].type") == ["Bound", "Ready"]
    assert render('{.status.conditions[0].type}{"\\n"}', o) == "Bound\n"
    assert parse_duration("1m30s") == 90 and parse_duration("500ms") == 0.5 and parse_duration("7") == 7
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_logs(cli, store, write, tmp_path):
    cli("apply", "-f", write("dv.yaml", dv_yaml()))
    r = cli("logs", "dv", "fedora")
    assert r.rc == 1 and "has no worker log yet" in r.err
    log = tmp_path / "log"
    log.write_text("I1122 starting import\nI1122 done\n")
    set_status(store, "DataVolume", "fedora", {"phase": "Succeeded", "workerLog": str(log)})
    r = cli("logs", "dv", "fedora")
    assert (r.rc, r.out) == (0, "I1122 starting import\nI1122 done\n")
    assert cli("logs", "dv/fedora", "-f").out == "I1122 starting import\nI1122 done\n"
    assert cli("logs", "ghost").rc == 1


def test_errors_are_one_line(cli, monkeypatch, data_dir, capsys):
    from cdi.cli import get

    def boom(*a, **kw):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(get, "run", boom)
    r = cli("get", "dv")
    assert r.rc == 1
    assert r.err == "error: RuntimeError: disk on fire\n(run with --debug for the traceback)\n"
    r = cli("--debug", "get", "dv")
    assert "Traceback" in r.err

    from cdi.common.errors import ConflictError

    def conflict(*a, **kw):
        raise ConflictError('DataVolume "x" was modified')

    monkeypatch.setattr(get, "run", conflict)
    r = cli("get", "dv")
    assert (r.rc, r.err) == (1, 'Error from server (Conflict): DataVolume "x" was modified\n')


def test_version_and_usage(cli):
    r = cli("version")
    assert r.rc == 0 and r.out.startswith("Client Version: pycdi")
    assert cli("get").rc == 1
    assert cli("frobnicate").rc == 2


def test_controller_commands(cli, monkeypatch):
    import types

    calls: list[str] = []
    fake = types.SimpleNamespace(
        serve=lambda d: calls.append("serve") or 0,
        ensure_running=lambda d: calls.append("ensure"),
        status=lambda d: {"running": True, "pid": 42},
        stop=lambda d: calls.append("stop") or True,
        stop_upload_proxy=lambda d: calls.append("stop-proxy") or True,
    )
    from cdi.cli import controller

    monkeypatch.setattr(controller, "daemon", lambda: fake)
    assert cli("controller", "status").out.startswith("controller: running (pid 42)")
    assert cli("controller", "stop").out == "controller stopped\nupload proxy stopped\n"
    assert cli("serve", "--foreground").rc == 0
    assert cli("controller", "start").out.startswith("controller running (pid 42")
    assert calls == ["stop", "stop-proxy", "serve", "ensure"]


def test_quantity():
    assert printers.quantity(71303168) == "68Mi"
    assert printers.quantity("1073741824") == "1Gi"
    assert printers.quantity("10Gi") == "10Gi"
    assert printers.quantity(None) == ""


def test_split_condition():
    from cdi.cli.jsonpath import split_condition

    assert split_condition("{.status.phase}=Succeeded") == (".status.phase", "Succeeded")
    assert split_condition(".status.phase=Failed") == (".status.phase", "Failed")
    assert split_condition("{.status.claimName}") == (".status.claimName", None)
