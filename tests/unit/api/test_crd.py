"""The DataVolume CRD matches the parser (drift test) and CDI's printer columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cdi.api.datavolume import FieldTree, spec_field_tree

CRD = Path(__file__).resolve().parents[3] / "crds" / "datavolume.yaml"


def _load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CRD.read_text())
    return data


def _schema_tree(schema: dict[str, Any]) -> FieldTree | None:
    if schema.get("type") == "array":
        return _schema_tree(schema["items"])
    props = schema.get("properties")
    if schema.get("type") != "object" or props is None or schema.get("x-kubernetes-preserve-unknown-fields"):
        return None
    return {name: _schema_tree(sub) for name, sub in props.items()}


def _normalize(tree: FieldTree | None) -> Any:
    """Leaves and empty objects ({} for upload/blank) compare equal as None."""
    if not tree:
        return None
    return {k: _normalize(v) for k, v in tree.items()}


def _version() -> dict[str, Any]:
    versions = _load()["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1beta1"]
    v: dict[str, Any] = versions[0]
    return v


def test_spec_properties_match_parser() -> None:
    spec_schema = _version()["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert _normalize(_schema_tree(spec_schema)) == _normalize(spec_field_tree())


def test_crd_shape_matches_cdi() -> None:
    crd = _load()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "datavolumes.cdi.kubevirt.io"
    spec = crd["spec"]
    assert spec["group"] == "cdi.kubevirt.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "DataVolume" and spec["names"]["plural"] == "datavolumes"
    assert spec["names"]["shortNames"] == ["dv", "dvs"] and spec["names"]["categories"] == ["all"]
    v = _version()
    assert v["served"] is True and v["storage"] is True and v["subresources"] == {"status": {}}
    cols = [(c["name"], c["type"], c["jsonPath"]) for c in v["additionalPrinterColumns"]]
    assert cols == [
        ("Phase", "string", ".status.phase"),
        ("Progress", "string", ".status.progress"),
        ("Restarts", "integer", ".status.restartCount"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]
    status = v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(status) == {"claimName", "phase", "progress", "restartCount", "conditions"}
