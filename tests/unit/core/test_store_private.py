"""The store file holds Secrets (0600 whatever the umask) and refuses giant bodies from any writer."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest

from cdi.api.limits import MAX_OBJECT_BYTES, MAX_STORED_BYTES
from cdi.api.validation import admit
from cdi.common.errors import PermanentError
from cdi.store.sqlite import Store


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask() -> Iterator[object]:
    def set_(value: int) -> None:
        os.umask(value)

    old = os.umask(0o022)
    try:
        yield set_
    finally:
        os.umask(old)


def secret(name: str, value: str = "c2VjcmV0") -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {"password": value}}


@pytest.mark.parametrize("value", [0o022, 0o000, 0o002])
def test_state_db_and_its_wal_and_shm_are_0600_whatever_the_umask(tmp_path, umask, value):
    umask(value)  # type: ignore[operator]
    path = str(tmp_path / "fresh" / "state.db")
    store = Store(path)
    store.create(secret("s"))
    assert mode(path) == 0o600
    assert os.path.exists(path + "-wal") and os.path.exists(path + "-shm")
    assert mode(path + "-wal") == 0o600 and mode(path + "-shm") == 0o600
    assert mode(os.path.dirname(path)) == 0o700
    store.close()


def test_existing_loose_state_files_are_tightened_and_logged(tmp_path, caplog):
    path = str(tmp_path / "state.db")
    Store(path).create(secret("s"))
    for p in (path, path + "-wal", path + "-shm"):
        os.chmod(p, 0o644)
    with caplog.at_level("WARNING"):
        store = Store(path)
    assert [mode(p) for p in (path, path + "-wal", path + "-shm")] == [0o600] * 3
    assert f"tightened the permissions of {path} from 0644 to 0600" in caplog.text
    assert store.must_get("Secret", "default", "s")["data"] == {"password": "c2VjcmV0"}


def _blob(name: str, n: int) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"b": "x" * n}}


def test_no_writer_can_store_a_giant_object(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    rv = store.revision()
    with pytest.raises(PermanentError) as e:
        store.create(_blob("big", MAX_STORED_BYTES))
    assert e.value.reason == "RequestEntityTooLarge"
    assert f"larger than {MAX_STORED_BYTES} bytes" in str(e.value) and "keep large data out" in str(e.value)
    assert store.get("ConfigMap", "default", "big") is None and store.revision() == rv
    small = store.create(_blob("small", 10))
    small["data"]["b"] = "x" * MAX_STORED_BYTES
    with pytest.raises(PermanentError, match="larger than"):
        store.update(small)
    assert store.must_get("ConfigMap", "default", "small")["data"]["b"] == "x" * 10
    assert os.path.getsize(str(tmp_path / "state.db")) + os.path.getsize(str(tmp_path / "state.db-wal")) < 1 << 20


def test_the_controller_can_still_write_status_to_an_object_at_the_admission_limit(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    dv = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "d"},
          "spec": {"source": {"http": {"url": "https://e.com/d", "extraHeaders": ["X-Pad: " + "a" * 1_560_000]}},
                   "storage": {"resources": {"requests": {"storage": "1Gi"}}}}}
    obj = store.create(admit(dv))
    obj["status"] = {"phase": "ImportInProgress", "conditions": [{"type": "Ready", "message": "m" * 100_000}]}
    obj["metadata"].setdefault("annotations", {})["embedded.cdi.kubevirt.io/disk-path"] = "/p" * 1000
    assert store.update(obj)["status"]["phase"] == "ImportInProgress"


def test_non_ascii_is_measured_as_utf8_not_as_escapes(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    text = "中" * (MAX_OBJECT_BYTES // 3 - 200)  # ~1.5 MiB of UTF-8, ~3 MiB as \\u escapes
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "zh"}, "data": {"t": text}}
    assert store.create(obj)["data"]["t"] == text
