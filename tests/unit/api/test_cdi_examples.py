"""Real manifests from CDI's repository (tests/data/cdi-docs) go through ``admit``.

The accepted ones must load with no error and keep every field they wrote (only empty optional
strings, which Go's omitempty also drops, and the defaulted contentType/namespace differ). The
ones under ``rejected/`` are CDI examples this implementation refuses on purpose, each for the
reason asserted below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cdi.api.validation import admit
from tests.unit.api.helpers import assert_error, errors

DATA = Path(__file__).resolve().parents[2] / "data" / "cdi-docs"
ACCEPTED = sorted(DATA.glob("*.yaml"))
REJECTED = sorted((DATA / "rejected").glob("*.yaml"))


def _drop_empty(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _drop_empty(x) for k, x in v.items() if x not in ("", None)}
    if isinstance(v, list):
        return [_drop_empty(x) for x in v]
    return v


def _contains(big: Any, small: Any, path: str = "") -> None:
    """Every field of ``small`` is in ``big`` with the same value."""
    if isinstance(small, dict):
        assert isinstance(big, dict), path
        for k, v in small.items():
            assert k in big, f"{path}.{k} was dropped"
            _contains(big[k], v, f"{path}.{k}")
    else:
        assert big == small, f"{path}: {big!r} != {small!r}"


def test_enough_examples() -> None:
    assert len(ACCEPTED) >= 5
    for f in ACCEPTED + REJECTED:
        assert f.read_text().startswith("# Source: kubevirt/containerized-data-importer/"), f


@pytest.mark.parametrize("path", ACCEPTED, ids=lambda p: p.name)
def test_cdi_example_is_admitted_unchanged(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    out = admit(obj)
    _contains(out, _drop_empty(obj))
    assert admit(out) == out  # normalized form is a fixed point


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DATA / "rejected" / name).read_text())
    return data


def test_rejected_archive_on_block() -> None:
    found = errors(lambda: admit(_load("import-archive-block-datavolume.yaml")))
    assert_error(found, "spec.contentType", "cannot be extracted into a Block volume")


def test_rejected_v1alpha1_registry_string() -> None:
    found = errors(lambda: admit(_load("registry-image-datavolume-v1alpha1.yaml")))
    assert_error(found, "spec.source.registry", "expected an object", "registry: {url: docker://")


def test_rejected_doc_vddk_with_pvc_under_source() -> None:
    found = errors(lambda: admit(_load("doc-datavolumes-vddk.yaml")))
    assert_error(found, "spec.source.pvc", "move it out to spec.pvc")


def test_rejected_doc_imageio_placeholder_url() -> None:
    found = errors(lambda: admit(_load("doc-datavolumes-imageio.yaml")))
    assert_error(found, "spec.source.imageio.url", "looks like a placeholder")


def test_all_rejected_files_are_covered() -> None:
    assert {p.name for p in REJECTED} == {
        "import-archive-block-datavolume.yaml",
        "registry-image-datavolume-v1alpha1.yaml",
        "doc-datavolumes-vddk.yaml",
        "doc-datavolumes-imageio.yaml",
    }
