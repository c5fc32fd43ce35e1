"""The ``cdi.kubevirt.io/v1beta1`` DataVolume, parsed strictly into typed dataclasses.

``DataVolume.from_dict`` raises :class:`~cdi.common.errors.ValidationErrors` for *structural*
problems (wrong JSON types, unknown fields, unparsable quantities, wrong apiVersion/kind); the
semantic rules of CDI's admission webhook live in :mod:`cdi.api.validation`. ``to_dict`` writes
the normalized camelCase form (empty optional fields omitted, apiVersion v1beta1, contentType
always present). No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cdi.api.meta import (
    Errors,
    ObjectMeta,
    Reader,
    as_mapping,
    check_type_meta,
    child_path,
    deep_copy,
    raise_if_any,
)
from cdi.common.errors import ValidationError
from cdi.common.units import parse_quantity

GROUP = "cdi.kubevirt.io"
API_VERSION = "cdi.kubevirt.io/v1beta1"
API_VERSIONS_ACCEPTED = ("cdi.kubevirt.io/v1beta1", "cdi.kubevirt.io/v1alpha1")
KIND = "DataVolume"

CONTENT_KUBEVIRT = "kubevirt"
CONTENT_ARCHIVE = "archive"

# A field tree: JSON field name -> nested tree (an object with known fields) or None (a leaf,
# including free-form objects). Used by the CRD drift test and by documentation.
FieldTree = dict[str, Any]


def _opt(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None and value != "" and value != [] and value != {}:
        out[key] = value


# --- sources --------------------------------------------------------------------------------


@dataclass
class HTTPSource:
    url: str = ""
    secret_ref: str | None = None
    cert_config_map: str | None = None
    extra_headers: list[str] = field(default_factory=list)
    secret_extra_headers: list[str] = field(default_factory=list)
    checksum: str | None = None
    insecure_skip_verify: bool = False

    FIELDS: ClassVar[tuple[str, ...]] = (
        "url",
        "secretRef",
        "certConfigMap",
        "extraHeaders",
        "secretExtraHeaders",
        "checksum",
        "insecureSkipVerify",
    )

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> HTTPSource:
        r = Reader(d, path, errs, cls.FIELDS)
        return cls(
            url=r.text("url"),
            secret_ref=r.opt_text("secretRef"),
            cert_config_map=r.opt_text("certConfigMap"),
            extra_headers=r.texts("extraHeaders"),
            secret_extra_headers=r.texts("secretExtraHeaders"),
            checksum=r.opt_text("checksum"),
            insecure_skip_verify=r.flag("insecureSkipVerify"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url}
        _opt(out, "secretRef", self.secret_ref)
        _opt(out, "certConfigMap", self.cert_config_map)
        _opt(out, "extraHeaders", list(self.extra_headers))
        _opt(out, "secretExtraHeaders", list(self.secret_extra_headers))
        _opt(out, "checksum", self.checksum)
        if self.insecure_skip_verify:
            out["insecureSkipVerify"] = True
        return out


@dataclass
class S3Source:
    url: str = ""
    secret_ref: str | None = None
    cert_config_map: str | None = None

    FIELDS: ClassVar[tuple[str, ...]] = ("url", "secretRef", "certConfigMap")

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> S3Source:
        r = Reader(d, path, errs, cls.FIELDS)
        return cls(
            url=r.text("url"), secret_ref=r.opt_text("secretRef"), cert_config_map=r.opt_text("certConfigMap")
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url}
        _opt(out, "secretRef", self.secret_ref)
        _opt(out, "certConfigMap", self.cert_config_map)
        return out


@dataclass
class GCSSource:
    url: str = ""
    secret_ref: str | None = None

    FIELDS: ClassVar[tuple[str, ...]] = ("url", "secretRef")

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> GCSSource:
        r = Reader(d, path, errs, cls.FIELDS)
        return cls(url=r.text("url"), secret_ref=r.opt_text("secretRef"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url}
        _opt(out, "secretRef", self.secret_ref)
        return out


@dataclass
class RegistrySource:
    """``url`` (docker://, oci-archive://) or ``image_stream`` (with pull_method node)."""

    url: str | None = None
    image_stream: str | None = None
    pull_method: str | None = None  # "pod" (default) or "node"
    secret_ref: str | None = None
    cert_config_map: str | None = None
    platform: dict[str, Any] | None = None  # {"architecture": "arm64"}

    FIELDS: ClassVar[tuple[str, ...]] = (
        "url",
        "imageStream",
        "pullMethod",
        "secretRef",
        "certConfigMap",
        "platform",
    )
    PLATFORM_FIELDS: ClassVar[tuple[str, ...]] = ("architecture",)

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> RegistrySource:
        r = Reader(d, path, errs, cls.FIELDS)
        platform: dict[str, Any] | None = None
        p = r.obj("platform", "platform: {architecture: arm64}")
        if p is not None:
            pr = Reader(p, r.at("platform"), errs, cls.PLATFORM_FIELDS)
            arch = pr.opt_text("architecture")
            platform = {"architecture": arch} if arch is not None else {}
        return cls(
            url=r.opt_text("url"),
            image_stream=r.opt_text("imageStream"),
            pull_method=r.opt_text("pullMethod"),
            secret_ref=r.opt_text("secretRef"),
            cert_config_map=r.opt_text("certConfigMap"),
            platform=platform,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "url", self.url)
        _opt(out, "imageStream", self.image_stream)
        _opt(out, "pullMethod", self.pull_method)
        _opt(out, "secretRef", self.secret_ref)
        _opt(out, "certConfigMap", self.cert_config_map)
        if self.platform is not None:
            out["platform"] = dict(self.platform)
        return out


@dataclass
class ImageIOSource:
    url: str = ""
    disk_id: str = ""
    secret_ref: str | None = None
    cert_config_map: str | None = None
    insecure_skip_verify: bool = False

    FIELDS: ClassVar[tuple[str, ...]] = ("url", "diskId", "secretRef", "certConfigMap", "insecureSkipVerify")

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> ImageIOSource:
        r = Reader(d, path, errs, cls.FIELDS)
        return cls(
            url=r.text("url"),
            disk_id=r.text("diskId"),
            secret_ref=r.opt_text("secretRef"),
            cert_config_map=r.opt_text("certConfigMap"),
            insecure_skip_verify=r.flag("insecureSkipVerify"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url, "diskId": self.disk_id}
        _opt(out, "secretRef", self.secret_ref)
        _opt(out, "certConfigMap", self.cert_config_map)
        if self.insecure_skip_verify:
            out["insecureSkipVerify"] = True
        return out


@dataclass
class VDDKSource:
    url: str = ""
    uuid: str = ""
    backing_file: str = ""
    thumbprint: str | None = None
    secret_ref: str | None = None
    cert_config_map: str | None = None
    init_image_url: str | None = None
    extra_args: str | None = None  # name of a ConfigMap

    FIELDS: ClassVar[tuple[str, ...]] = (
        "url",
        "uuid",
        "backingFile",
        "thumbprint",
        "secretRef",
        "certConfigMap",
        "initImageURL",
        "extraArgs",
    )

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> VDDKSource:
        r = Reader(d, path, errs, cls.FIELDS)
        return cls(
            url=r.text("url"),
            uuid=r.text("uuid"),
            backing_file=r.text("backingFile"),
            thumbprint=r.opt_text("thumbprint"),
            secret_ref=r.opt_text("secretRef"),
            cert_config_map=r.opt_text("certConfigMap"),
            init_image_url=r.opt_text("initImageURL"),
            extra_args=r.opt_text("extraArgs"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "url", self.url)
        _opt(out, "uuid", self.uuid)
        _opt(out, "backingFile", self.backing_file)
        _opt(out, "thumbprint", self.thumbprint)
        _opt(out, "secretRef", self.secret_ref)
        _opt(out, "certConfigMap", self.cert_config_map)
        _opt(out, "initImageURL", self.init_image_url)
        _opt(out, "extraArgs", self.extra_args)
        return out


@dataclass
class PVCSource:
    """Clone from a PVC; ``namespace`` defaults to the DataVolume's when parsed in one."""

    namespace: str = ""
    name: str = ""

    FIELDS: ClassVar[tuple[str, ...]] = ("namespace", "name")

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> PVCSource:
        r = Reader(d, path, errs, cls.FIELDS)
        return cls(namespace=r.text("namespace"), name=r.text("name"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "namespace", self.namespace)
        out["name"] = self.name
        return out


@dataclass
class SnapshotSource(PVCSource):
    """Clone from a VolumeSnapshot; ``namespace`` defaults to the DataVolume's."""


@dataclass
class UploadSource:
    # beyond CDI: the expected checksum of the uploaded bytes (a request's X-Checksum wins)
    checksum: str | None = None

    FIELDS: ClassVar[tuple[str, ...]] = ("checksum",)

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> UploadSource:
        r = Reader(d, path, errs, cls.FIELDS)
        return cls(checksum=r.opt_text("checksum"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "checksum", self.checksum)
        return out


@dataclass
class BlankSource:
    FIELDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> BlankSource:
        Reader(d, path, errs, cls.FIELDS)
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return {}


SOURCE_CLASSES: dict[str, Any] = {
    "http": HTTPSource,
    "s3": S3Source,
    "gcs": GCSSource,
    "registry": RegistrySource,
    "imageio": ImageIOSource,
    "vddk": VDDKSource,
    "upload": UploadSource,
    "blank": BlankSource,
    "pvc": PVCSource,
    "snapshot": SnapshotSource,
}
SOURCE_KINDS: tuple[str, ...] = tuple(SOURCE_CLASSES)
_SOURCE_EXAMPLES = {
    "http": "http: {url: https://example.com/disk.qcow2}",
    "s3": "s3: {url: https://s3.example.com/bucket/disk.img}",
    "gcs": "gcs: {url: gs://bucket/disk.img}",
    "registry": "registry: {url: docker://quay.io/containerdisks/fedora:latest}",
    "imageio": "imageio: {url: https://engine/ovirt-engine/api, diskId: ..., secretRef: ...}",
    "vddk": "vddk: {url: https://vcenter, uuid: ..., backingFile: ..., secretRef: ...}",
    "upload": "upload: {}",
    "blank": "blank: {}",
    "pvc": "pvc: {namespace: ns, name: source-pvc}",
    "snapshot": "snapshot: {namespace: ns, name: my-snapshot}",
}


@dataclass
class DataVolumeSource:
    """``spec.source``: exactly one attribute should be set (validation checks it)."""

    http: HTTPSource | None = None
    s3: S3Source | None = None
    gcs: GCSSource | None = None
    registry: RegistrySource | None = None
    imageio: ImageIOSource | None = None
    vddk: VDDKSource | None = None
    upload: UploadSource | None = None
    blank: BlankSource | None = None
    pvc: PVCSource | None = None
    snapshot: SnapshotSource | None = None

    FIELDS: ClassVar[tuple[str, ...]] = SOURCE_KINDS

    @property
    def kinds(self) -> list[str]:
        """Every source kind that is set (more than one is a validation error)."""
        return [k for k in SOURCE_KINDS if getattr(self, k) is not None]

    @property
    def kind(self) -> str | None:
        """The name of the source kind that is set ("http", "blank", ...), or None."""
        kinds = self.kinds
        return kinds[0] if kinds else None

    @property
    def value(self) -> Any:
        """The source object of :attr:`kind`, or None."""
        k = self.kind
        return getattr(self, k) if k else None

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> DataVolumeSource:
        r = Reader(d, path, errs, cls.FIELDS)
        kwargs: dict[str, Any] = {}
        for kind, klass in SOURCE_CLASSES.items():
            if kind not in d:
                continue
            raw = d[kind]
            if raw is None:
                # `blank:` with nothing after it in YAML means `blank: {}`.
                raw = {}
            m = as_mapping(raw, r.at(kind), errs, _SOURCE_EXAMPLES[kind])
            if m is not None and kind == "pvc" and set(m) & {"accessModes", "resources", "volumeMode"}:
                errs.append(
                    ValidationError(
                        r.at(kind),
                        "this looks like the target volume indented under source; move it out to spec.pvc "
                        "(a pvc clone source takes only namespace and name)",
                    )
                )
            elif m is not None:
                kwargs[kind] = klass.parse(m, r.at(kind), errs)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in SOURCE_KINDS:
            v = getattr(self, k)
            if v is not None:
                out[k] = v.to_dict()
        return out


@dataclass
class SourceRef:
    """``spec.sourceRef``: an indirect source; ``kind`` may only be DataSource."""

    kind: str = ""
    name: str = ""
    namespace: str | None = None

    FIELDS: ClassVar[tuple[str, ...]] = ("kind", "namespace", "name")

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> SourceRef:
        r = Reader(d, path, errs, cls.FIELDS)
        return cls(kind=r.text("kind"), name=r.text("name"), namespace=r.opt_text("namespace"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        _opt(out, "namespace", self.namespace)
        out["name"] = self.name
        return out


# --- storage --------------------------------------------------------------------------------


@dataclass
class StorageSpec:
    """``spec.pvc`` / ``spec.storage`` of a DataVolume and ``spec`` of a PersistentVolumeClaim.

    ``requests_storage`` is the requested size in bytes (None when not given);
    ``requests_storage_text`` keeps the quantity as written so ``to_dict`` round-trips.
    """

    access_modes: list[str] = field(default_factory=list)
    volume_mode: str | None = None
    storage_class_name: str | None = None
    requests_storage: int | None = None
    selector: dict[str, Any] | None = None
    volume_name: str | None = None
    data_source: dict[str, Any] | None = None
    data_source_ref: dict[str, Any] | None = None
    requests_storage_text: str | None = None
    limits_storage: int | None = None
    limits_storage_text: str | None = None
    has_resources: bool = False  # `resources` was written (kept so to_dict round-trips)

    FIELDS: ClassVar[tuple[str, ...]] = (
        "accessModes",
        "volumeMode",
        "storageClassName",
        "resources",
        "selector",
        "volumeName",
        "dataSource",
        "dataSourceRef",
    )
    RESOURCES_FIELDS: ClassVar[tuple[str, ...]] = ("requests", "limits")
    QUANTITY_FIELDS: ClassVar[tuple[str, ...]] = ("storage",)

    @property
    def size(self) -> int | None:
        """Alias of ``requests_storage``."""
        return self.requests_storage

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> StorageSpec:
        r = Reader(d, path, errs, cls.FIELDS)
        spec = cls(
            access_modes=r.texts("accessModes"),
            volume_mode=r.opt_text("volumeMode"),
            storage_class_name=r.text("storageClassName") if r.has("storageClassName") else None,
            selector=r.any_obj("selector"),
            volume_name=r.opt_text("volumeName"),
            data_source=r.any_obj("dataSource"),
            data_source_ref=r.any_obj("dataSourceRef"),
        )
        res = r.obj("resources", "resources: {requests: {storage: 10Gi}}")
        if res is not None:
            spec.has_resources = True
            rr = Reader(res, r.at("resources"), errs, cls.RESOURCES_FIELDS)
            for part in ("requests", "limits"):
                m = rr.obj(part, f"{part}: {{storage: 10Gi}}")
                if m is None:
                    continue
                qr = Reader(m, rr.at(part), errs, cls.QUANTITY_FIELDS)
                if m.get("storage") is None:
                    continue
                raw = m["storage"]
                text = str(raw) if not isinstance(raw, bool) else None
                try:
                    size = parse_quantity(raw)
                except ValueError as e:
                    errs.append(ValidationError(qr.at("storage"), str(e)))
                    continue
                if part == "requests":
                    spec.requests_storage, spec.requests_storage_text = size, text
                else:
                    spec.limits_storage, spec.limits_storage_text = size, text
        return spec

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _opt(out, "accessModes", list(self.access_modes))
        _opt(out, "volumeMode", self.volume_mode)
        if self.storage_class_name is not None:
            out["storageClassName"] = self.storage_class_name
        resources: dict[str, Any] = {}
        if self.requests_storage is not None:
            resources["requests"] = {"storage": self.requests_storage_text or str(self.requests_storage)}
        if self.limits_storage is not None:
            resources["limits"] = {"storage": self.limits_storage_text or str(self.limits_storage)}
        if resources or self.has_resources:
            out["resources"] = resources
        if self.selector is not None:
            out["selector"] = deep_copy(self.selector)
        _opt(out, "volumeName", self.volume_name)
        if self.data_source is not None:
            out["dataSource"] = deep_copy(self.data_source)
        if self.data_source_ref is not None:
            out["dataSourceRef"] = deep_copy(self.data_source_ref)
        return out

    def semantic(self) -> dict[str, Any]:
        """A comparable form: sizes in bytes, not as written (``1Gi`` == ``1073741824``)."""
        d = self.to_dict()
        d["resources"] = {
            "requests": {"storage": self.requests_storage},
            "limits": {"storage": self.limits_storage},
        }
        return d


@dataclass
class Checkpoint:
    previous: str = ""
    current: str = ""

    FIELDS: ClassVar[tuple[str, ...]] = ("previous", "current")

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> Checkpoint:
        r = Reader(d, path, errs, cls.FIELDS)
        return cls(previous=r.text("previous"), current=r.text("current"))

    def to_dict(self) -> dict[str, Any]:
        return {"previous": self.previous, "current": self.current}


# --- spec and object ------------------------------------------------------------------------


@dataclass
class DataVolumeSpec:
    source: DataVolumeSource | None = None
    source_ref: SourceRef | None = None
    pvc: StorageSpec | None = None
    storage: StorageSpec | None = None
    content_type: str = CONTENT_KUBEVIRT
    preallocation: bool | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    final_checkpoint: bool = False
    priority_class_name: str | None = None
    service_account_name: str | None = None

    FIELDS: ClassVar[tuple[str, ...]] = (
        "source",
        "sourceRef",
        "pvc",
        "storage",
        "contentType",
        "preallocation",
        "checkpoints",
        "finalCheckpoint",
        "priorityClassName",
        "serviceAccountName",
    )

    @property
    def target(self) -> StorageSpec | None:
        """The storage request, whichever of ``storage`` / ``pvc`` is set (``storage`` first)."""
        return self.storage if self.storage is not None else self.pvc

    @property
    def source_kind(self) -> str | None:
        return self.source.kind if self.source is not None else None

    @classmethod
    def parse(cls, d: Mapping[str, Any], path: str, errs: Errors) -> DataVolumeSpec:
        r = Reader(d, path, errs, cls.FIELDS)
        spec = cls(
            content_type=r.text("contentType") or CONTENT_KUBEVIRT,
            preallocation=r.opt_flag("preallocation"),
            final_checkpoint=r.flag("finalCheckpoint"),
            priority_class_name=r.opt_text("priorityClassName"),
            service_account_name=r.opt_text("serviceAccountName"),
        )
        m = r.obj("source", "source: {http: {url: https://example.com/disk.qcow2}}")
        if m is not None:
            spec.source = DataVolumeSource.parse(m, r.at("source"), errs)
        m = r.obj("sourceRef", "sourceRef: {kind: DataSource, name: fedora}")
        if m is not None:
            spec.source_ref = SourceRef.parse(m, r.at("sourceRef"), errs)
        for key in ("pvc", "storage"):
            if key not in d:
                continue
            # `storage:` with nothing after it (as in CDI's clone example) means `storage: {}`.
            raw = d[key] if d[key] is not None else {}
            m = as_mapping(raw, r.at(key), errs, f"{key}: {{resources: {{requests: {{storage: 10Gi}}}}}}")
            if m is not None:
                setattr(spec, key, StorageSpec.parse(m, r.at(key), errs))
        raw_cps = d.get("checkpoints")
        if raw_cps is not None:
            if not isinstance(raw_cps, list):
                errs.append(
                    ValidationError(
                        r.at("checkpoints"),
                        "expected a list of {previous, current} objects; write checkpoints: "
                        '[{previous: "", current: snapshot-1}]',
                    )
                )
            else:
                for i, item in enumerate(raw_cps):
                    p = f"{r.at('checkpoints')}[{i}]"
                    cm = as_mapping(item, p, errs, "{previous: snapshot-1, current: snapshot-2}")
                    if cm is not None:
                        spec.checkpoints.append(Checkpoint.parse(cm, p, errs))
        return spec

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.source is not None:
            out["source"] = self.source.to_dict()
        if self.source_ref is not None:
            out["sourceRef"] = self.source_ref.to_dict()
        if self.pvc is not None:
            out["pvc"] = self.pvc.to_dict()
        if self.storage is not None:
            out["storage"] = self.storage.to_dict()
        out["contentType"] = self.content_type
        if self.preallocation is not None:
            out["preallocation"] = self.preallocation
        if self.checkpoints:
            out["checkpoints"] = [c.to_dict() for c in self.checkpoints]
        if self.final_checkpoint:
            out["finalCheckpoint"] = True
        _opt(out, "priorityClassName", self.priority_class_name)
        _opt(out, "serviceAccountName", self.service_account_name)
        return out

    def semantic(self) -> dict[str, Any]:
        """A comparable form of the spec (quantities compared by value)."""
        d = self.to_dict()
        if self.pvc is not None:
            d["pvc"] = self.pvc.semantic()
        if self.storage is not None:
            d["storage"] = self.storage.semantic()
        return d


@dataclass
class DataVolume:
    metadata: ObjectMeta
    spec: DataVolumeSpec
    status: dict[str, Any] = field(default_factory=dict)

    API_VERSION: ClassVar[str] = API_VERSION
    KIND: ClassVar[str] = KIND
    FIELDS: ClassVar[tuple[str, ...]] = ("apiVersion", "kind", "metadata", "spec", "status")

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataVolume:
        """Parse a DataVolume manifest (v1beta1 or v1alpha1); raises ValidationErrors."""
        errs: Errors = []
        m = as_mapping(d, "", errs, "a DataVolume manifest")
        if m is None:
            raise_if_any(errs)
            raise AssertionError("unreachable")
        check_type_meta(m, errs, API_VERSIONS_ACCEPTED, KIND, API_VERSION)
        Reader(m, "", errs, cls.FIELDS)
        metadata = ObjectMeta.parse(m.get("metadata"), "metadata", errs)
        raw_spec = m.get("spec")
        if raw_spec is None:
            errs.append(
                ValidationError(
                    "spec",
                    "missing; write a spec with a source and a size, e.g. spec: {source: {blank: {}}, "
                    "storage: {resources: {requests: {storage: 1Gi}}}}",
                )
            )
            spec = DataVolumeSpec()
        else:
            sm = as_mapping(raw_spec, "spec", errs, "spec: {source: ..., storage: ...}")
            spec = DataVolumeSpec.parse(sm, "spec", errs) if sm is not None else DataVolumeSpec()
        status: dict[str, Any] = {}
        if m.get("status") is not None:
            st = as_mapping(m["status"], "status", errs)
            status = deep_copy(st) if st is not None else {}
        raise_if_any(errs)
        # Clone sources default to the DataVolume's own namespace.
        if spec.source is not None:
            for src in (spec.source.pvc, spec.source.snapshot):
                if src is not None and not src.namespace:
                    src.namespace = metadata.namespace
        return cls(metadata=metadata, spec=spec, status=status)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": self.metadata.to_dict(),
            "spec": self.spec.to_dict(),
        }
        if self.status:
            out["status"] = deep_copy(self.status)
        return out


# --- field tree (for the CRD drift test) ----------------------------------------------------


def _tree(cls: Any) -> FieldTree:
    return {name: None for name in cls.FIELDS}


def storage_field_tree() -> FieldTree:
    t = _tree(StorageSpec)
    t["resources"] = {part: {"storage": None} for part in StorageSpec.RESOURCES_FIELDS}
    return t


def spec_field_tree() -> FieldTree:
    """Every field name ``DataVolumeSpec.parse`` accepts, nested like the JSON."""
    source: FieldTree = {}
    for kind, klass in SOURCE_CLASSES.items():
        source[kind] = _tree(klass)
    source["registry"]["platform"] = {"architecture": None}
    t = _tree(DataVolumeSpec)
    t["source"] = source
    t["sourceRef"] = _tree(SourceRef)
    t["pvc"] = storage_field_tree()
    t["storage"] = storage_field_tree()
    t["checkpoints"] = _tree(Checkpoint)
    return t


__all__ = [
    "API_VERSION",
    "API_VERSIONS_ACCEPTED",
    "CONTENT_ARCHIVE",
    "CONTENT_KUBEVIRT",
    "KIND",
    "SOURCE_KINDS",
    "BlankSource",
    "Checkpoint",
    "DataVolume",
    "DataVolumeSource",
    "DataVolumeSpec",
    "GCSSource",
    "HTTPSource",
    "ImageIOSource",
    "PVCSource",
    "RegistrySource",
    "S3Source",
    "SnapshotSource",
    "SourceRef",
    "StorageSpec",
    "UploadSource",
    "VDDKSource",
    "child_path",
    "spec_field_tree",
]
