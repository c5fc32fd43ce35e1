import pytest

from cdi.api import conditions as cond
from cdi.common.errors import PermanentError
from cdi.common.units import MiB, format_quantity, parse_quantity
from cdi.controller.storage import resolve, too_small_message


def test_transition_time_changes_only_when_status_flips():
    c = cond.set_condition([], cond.READY, cond.FALSE, "TransferRunning", "", "t1")
    c = cond.set_condition(c, cond.READY, cond.FALSE, "Other", "msg", "t2")
    assert c[0]["lastTransitionTime"] == "t1" and c[0]["lastHeartbeatTime"] == "t2"
    c = cond.set_condition(c, cond.READY, cond.TRUE, "", "", "t3")
    assert c[0]["lastTransitionTime"] == "t3" and c[0]["status"] == "True"
    assert len(c) == 1


@pytest.mark.parametrize("text,n", [("10Gi", 10 << 30), ("512Mi", 512 << 20), ("1G", 10**9), ("1.5Gi", 3 << 29),
                                    ("1073741824", 1 << 30), (1024, 1024)])
def test_quantities(text, n):
    assert parse_quantity(text) == n


def test_bad_quantity_says_what_to_write():
    with pytest.raises(ValueError, match="write a size such as 10Gi"):
        parse_quantity("ten gigs")
    assert format_quantity(3 << 30) == "3Gi" and format_quantity(1536 << 20) == "1536Mi"


def spec(api, size="1Gi", mode=None, sc=None):
    s = {"resources": {"requests": {"storage": size}}}
    if mode:
        s["volumeMode"] = mode
    if sc:
        s["storageClassName"] = sc
    return {api: s}


def test_storage_api_inflates_filesystem_capacity_by_overhead():
    r = resolve(spec("storage"), "local", lambda sc: 0.06)
    assert r.capacity == 1086 * MiB  # ceil(1024 MiB * 1.06) rounded up to MiB
    assert r.requested == 1 << 30 and r.volume_mode == "Filesystem" and r.access_modes == ("ReadWriteOnce",)


def test_pvc_api_and_block_are_taken_literally():
    assert resolve(spec("pvc"), "local", lambda sc: 0.06).capacity == 1 << 30
    assert resolve(spec("storage", mode="Block"), "local", lambda sc: 0.06).capacity == 1 << 30


def test_no_storage_class_is_a_clear_error():
    with pytest.raises(PermanentError, match="no default storage class"):
        resolve(spec("storage"), None, lambda sc: 0.06)


def test_too_small_message_says_what_to_request():
    r = resolve(spec("storage", "100Mi"), "local", lambda sc: 0.06)
    msg = too_small_message(r, 200 * MiB, 100 * MiB)
    assert msg.startswith("DataVolume too small: image virtual size 200.0 MiB")
    assert "request at least 200Mi in spec.storage.resources.requests.storage" in msg
    r = resolve(spec("pvc", "100Mi"), "local", lambda sc: 0.06)
    assert "request at least 212Mi in spec.pvc" in too_small_message(r, 200 * MiB, 94 * MiB)
