"""Our vmdk descriptor parser reads what qemu reads: createType and the extents it would open.

Each descriptor sits in a capacity-0 sparse header (so qemu parses it as a descriptor file) and
names small files of this test. qemu-img info runs *unconfined* here (``CDI_IMAGE_SANDBOX=off``):
info opens the extents but reads no data, and the files are ours.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cdi.common.errors import PermanentError
from cdi.datapath import imagecheck, qemu_img, sandbox
from tests.peers import crafted

pytestmark = [pytest.mark.peers]

QEMU_TYPES = ("FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE")
HEAD = 'version=1\nCID=1234abcd\nparentCID=ffffffff\n'

CASES = {
    "flat": 'createType="monolithicFlat"\nRW 8 FLAT "{a}" 0\n',
    "two-flat": 'createType="twoGbMaxExtentFlat"\nRW 8 FLAT "{a}" 0\nRW 8 FLAT "{b}" 0\n',
    "whitespace": 'createType="vmfs"\n \t  RW\t\t8   VMFS  "{a}"\n',
    "multi-line": 'createType="monolithicFlat"\nRW\n8\n FLAT\r\n"{a}"\n0\n',
    "blank-before": 'createType="monolithicFlat"\n\n\nRW 8 FLAT "{a}" 0\n',
    "comments": 'createType="monolithicFlat"\n# RW 8 FLAT "{b}" 0\n#RW 8 FLAT "{b}" 0\nRW 8 FLAT "{a}" 0\n',
    "case-and-access": 'createType="monolithicFlat"\nrw 8 FLAT "{b}" 0\nRDONLY 8 FLAT "{b}" 0\nRW 8 flat "{b}"\n'
                       'RW 8 FLAT "{a}" 0\n',
    "decoy-createtype": '# createType="twoGbMaxExtentFlat"\ncreateType="monolithicSparse"\nRW 8 FLAT "{a}" 0\n',
    "zero-and-bad-size": 'createType="monolithicFlat"\nRW 8 ZERO\nRW 0 FLAT "{b}" 0\nRW -8 FLAT "{b}" 0\n'
                         'RW 8 FLAT "{a}" 0\n',
    "sparse-extent": 'createType="twoGbMaxExtentSparse"\nRW 2048 SPARSE "{s}"\nRW 8 FLAT "{a}" 0\n',
    "long-tokens": 'createType="monolithicFlat"\nRWRWRWRWRWRW 8 FLAT "{b}" 0\nRW 8 FLATFLATFLAT "{b}" 0\n'
                   'RW 8 FLAT "{a}" 0\n',
}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    out = {}
    for k in ("a", "b"):
        p = tmp_path / f"extent-{k}.raw"
        p.write_bytes(bytes(8 * 512))
        out[k] = str(p)
    s = tmp_path / "extent-s.vmdk"
    crafted.qemu_img("create", "-f", "vmdk", str(s), "1M")
    out["s"] = str(s)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_our_descriptor_parse_agrees_with_qemu(
    case: str, files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sandbox.ENV_SWITCH, "off")
    desc = ("# Disk DescriptorFile\n" + HEAD + CASES[case].format(**files)).encode()
    img = tmp_path / "d.vmdk"
    img.write_bytes(crafted.sparse_vmdk_with_descriptor(desc, capacity=0))
    info = qemu_img.info(str(img), "vmdk")
    ours = imagecheck.parse_descriptor(desc)
    assert ours.create_type == info.create_type
    opened = [e.filename for e in ours.extents
              if e.access == "RW" and e.type in QEMU_TYPES and (e.sectors or 0) > 0 and e.matches >= 4]
    assert list(dict.fromkeys(opened)) == list(dict.fromkeys(info.extents)), (opened, info.extents)
    assert files["a"] in opened
    # and our check refuses such a descriptor for what it names, not only for the capacity 0
    with pytest.raises(PermanentError) as e:
        imagecheck.check_head("vmdk", crafted.sparse_vmdk_with_descriptor(desc, capacity=2048)[:65536])
    assert "capacity 0" not in e.value.message and e.value.reason == "UnsafeImage", e.value.message
