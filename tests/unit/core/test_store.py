import pytest

from cdi.common.errors import ConflictError, NotFoundError
from cdi.store.sqlite import Store


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "state.db"))


def dv(name, **extra):
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name, **extra},
            "spec": {"source": {"blank": {}}}}


def test_create_assigns_identity_and_rejects_duplicates(store):
    a = store.create(dv("a"))
    assert a["metadata"]["namespace"] == "default"
    assert a["metadata"]["uid"] and a["metadata"]["resourceVersion"] == "1"
    with pytest.raises(ConflictError, match='DataVolume "a" already exists'):
        store.create(dv("a"))


def test_update_checks_resource_version_and_bumps_generation_on_spec_change(store):
    a = store.create(dv("a"))
    stale = dict(a)
    a["status"] = {"phase": "Pending"}
    a2 = store.update(a)
    assert a2["metadata"]["generation"] == 1  # status only
    with pytest.raises(ConflictError, match="was modified"):
        store.update(stale)
    a2["spec"] = {"source": {"http": {"url": "http://x/y"}}}
    a3 = store.update(a2)
    assert a3["metadata"]["generation"] == 2
    assert int(a3["metadata"]["resourceVersion"]) > int(a2["metadata"]["resourceVersion"])


def test_delete_with_finalizers_marks_then_removing_finalizer_deletes(store):
    store.create(dv("a", finalizers=["x"]))
    marked = store.delete("DataVolume", "default", "a")
    assert marked is not None and marked["metadata"]["deletionTimestamp"]
    marked["metadata"]["finalizers"] = []
    store.update(marked)
    assert store.get("DataVolume", "default", "a") is None
    with pytest.raises(NotFoundError):
        store.delete("DataVolume", "default", "a")


def test_events_deduplicate_repeats(store):
    a = store.create(dv("a"))
    store.record_event(a, "Warning", "ImportRetry", "boom")
    store.record_event(a, "Warning", "ImportRetry", "boom")
    store.record_event(a, "Normal", "ImportSucceeded", "ok")
    evs = store.events("DataVolume", "default", "a")
    assert [(e["reason"], e["count"]) for e in evs] == [("ImportRetry", 2), ("ImportSucceeded", 1)]


def test_changed_since_lists_only_newer_writes(store):
    store.create(dv("a"))
    rev = store.revision()
    store.create(dv("b"))
    assert store.changed_since(rev) == [("DataVolume", "default", "b")]


def test_two_connections_see_each_others_writes(tmp_path):
    s1 = Store(str(tmp_path / "state.db"))
    s2 = Store(str(tmp_path / "state.db"))
    s1.create(dv("a"))
    assert s2.get("DataVolume", "default", "a") is not None
