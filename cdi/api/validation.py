"""Admission: CDI's DataVolume webhook rules, core-object checks, and the ``admit`` entry point.

Every check appends a :class:`~cdi.common.errors.ValidationError` (field path + what is wrong +
what to write instead); each ``validate_*`` raises all of them at once as one
:class:`~cdi.common.errors.ValidationErrors`. No I/O: checks that need other objects (does the
source PVC exist? does a PVC with this name already exist?) belong to the caller.

``admit(obj, old)`` is what the CLI and the controller call before storing an object: it
dispatches on ``kind`` through :data:`ADMITTERS` (other packages register more kinds, e.g. the
VM runtime registers VirtualMachine / VirtualMachineInstance), parses, validates and returns the
normalized dict. Before a kind's own rules it applies Kubernetes' limits to every kind
(:mod:`cdi.api.limits`: label and annotation syntax, 256 KiB of annotations, 3 MiB as submitted)
and after them the 1.5 MiB limit on the object as it will be stored.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from cdi.api import annotations as ann
from cdi.api import limits
from cdi.api.datavolume import (
    CONTENT_ARCHIVE,
    CONTENT_KUBEVIRT,
    SOURCE_KINDS,
    DataVolume,
    StorageSpec,
)
from cdi.api.meta import Errors, ObjectMeta, raise_if_any
from cdi.api.objects import ConfigMap, Secret
from cdi.api.pvc import PersistentVolumeClaim
from cdi.api.values import CHECKSUM_HEX_LENGTHS, Checksum
from cdi.common.errors import ValidationError, ValidationErrors
from cdi.common.units import MiB

Admitter = Callable[[dict[str, Any], dict[str, Any] | None], dict[str, Any]]

ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
VOLUME_MODES = ("Filesystem", "Block")
CONTENT_TYPES = (CONTENT_KUBEVIRT, CONTENT_ARCHIVE)
PULL_METHODS = ("pod", "node")
REGISTRY_SCHEMES = ("docker", "oci-archive")
MIN_SIZE = MiB
DNS1123_SUBDOMAIN_MAX = 253
DNS1123_LABEL_MAX = 63
SECRET_MAX_BYTES = limits.MAX_DATA_BYTES

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = limits.DNS1123_SUBDOMAIN
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEX = set(string.hexdigits)

# Sources whose content is always a disk image (no archive).
_NO_ARCHIVE = ("registry", "blank", "imageio", "vddk")
_CLONE_KINDS = ("pvc", "snapshot")
_MULTISTAGE_KINDS = ("vddk", "imageio")
_IMMUTABLE_EXCEPT = ("checkpoints", "finalCheckpoint")


# --- small checks ---------------------------------------------------------------------------


def dns1123_subdomain_problem(value: str) -> str | None:
    """Why ``value`` is not a DNS-1123 subdomain (object names), or None."""
    if not value:
        return "is empty"
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        return f"is {len(value)} characters long; the limit is {DNS1123_SUBDOMAIN_MAX}"
    if not _DNS1123_SUBDOMAIN.match(value):
        return (
            f"{value!r} is not a valid name: use lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def dns1123_label_problem(value: str) -> str | None:
    """Why ``value`` is not a DNS-1123 label (namespaces), or None."""
    if not value:
        return "is empty"
    if len(value) > DNS1123_LABEL_MAX:
        return f"is {len(value)} characters long; the limit is {DNS1123_LABEL_MAX}"
    if not _DNS1123_LABEL.match(value):
        return (
            f"{value!r} is not a valid name: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def _suggest_name(value: str) -> str:
    s = re.sub(r"[^a-z0-9.-]+", "-", value.lower()).strip("-.")
    return s[:DNS1123_SUBDOMAIN_MAX].strip("-.") or "my-object"


def _check_metadata(meta: ObjectMeta, kind: str, errs: Errors) -> None:
    if not meta.name:
        errs.append(
            ValidationError(
                "metadata.name", f"missing; every {kind} needs a name, e.g. name: my-{kind.lower()}"
            )
        )
    else:
        problem = dns1123_subdomain_problem(meta.name)
        if problem:
            errs.append(
                ValidationError("metadata.name", f"{problem}; write e.g. {_suggest_name(meta.name)!r}")
            )
    problem = dns1123_label_problem(meta.namespace)
    if problem:
        errs.append(ValidationError("metadata.namespace", f"{problem}; write e.g. 'default'"))


def _check_ref_name(value: str | None, path: str, what: str, errs: Errors) -> None:
    """A reference to another object by name (secretRef, certConfigMap, ...)."""
    if value is None:
        return
    problem = dns1123_subdomain_problem(value)
    if problem:
        errs.append(ValidationError(path, f"{problem}; write the name of an existing {what}"))


def _check_url(url: str, path: str, schemes: tuple[str, ...], example: str, errs: Errors) -> None:
    wanted = " or ".join(f"{s}://" for s in schemes)
    if not url:
        errs.append(ValidationError(path, f"missing; write the source URL, e.g. url: {example}"))
        return
    if "<" in url or ">" in url:
        errs.append(
            ValidationError(
                path, f"{url!r} looks like a placeholder; replace the <...> part with the real value"
            )
        )
        return
    if any(c.isspace() for c in url):
        errs.append(
            ValidationError(path, f"{url!r} contains whitespace; percent-encode it (%20) or remove it")
        )
        return
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        errs.append(
            ValidationError(path, f"{url!r} is not a valid URL; write a {wanted} URL, e.g. {example}")
        )
        return
    if not parts.scheme:
        errs.append(ValidationError(path, f"{url!r} has no scheme; write a {wanted} URL, e.g. {example}"))
    elif parts.scheme not in schemes:
        errs.append(
            ValidationError(
                path, f"{url!r} has scheme {parts.scheme!r}; write a {wanted} URL, e.g. {example}"
            )
        )
    elif not parts.netloc:
        errs.append(ValidationError(path, f"{url!r} has no host; write a {wanted} URL, e.g. {example}"))


def check_checksum(value: str, path: str, errs: Errors) -> None:
    """``algo:hex`` with a supported algorithm and the right number of hex digits (one rule:
    :meth:`cdi.api.values.Checksum.parse`)."""
    try:
        Checksum.parse(value, path)
    except ValidationError as e:
        errs.append(e)


def check_header_line(value: str, path: str, errs: Errors) -> None:
    """``Name: value`` (the value is never echoed: headers may carry tokens)."""
    name, sep, rest = value.partition(":")
    if "\n" in value or "\r" in value:
        errs.append(ValidationError(path, "header contains a line break; write one 'Name: value' per entry"))
    elif not sep or not _HEADER_NAME.match(name):
        errs.append(
            ValidationError(
                path, "entry is not a header line; write it as 'Name: value', e.g. 'X-Auth-Token: abc'"
            )
        )
    elif not rest.strip():
        errs.append(
            ValidationError(
                path, f"header {name!r} has no value; write it as '{name}: value' or remove the entry"
            )
        )


# --- storage --------------------------------------------------------------------------------


def _check_storage(
    st: StorageSpec,
    path: str,
    errs: Errors,
    *,
    size_required: bool,
    size_hint: str,
    access_mode_required: bool,
) -> None:
    size_path = f"{path}.resources.requests.storage"
    if st.requests_storage is None:
        if size_required:
            errs.append(ValidationError(size_path, f"missing; {size_hint}"))
    elif st.requests_storage < MIN_SIZE:
        written = st.requests_storage_text or str(st.requests_storage)
        errs.append(
            ValidationError(
                size_path,
                f"{written!r} is smaller than the minimum of 1Mi; write at least 1Mi, e.g. storage: 1Gi",
            )
        )
    if access_mode_required and not st.access_modes:
        errs.append(
            ValidationError(
                f"{path}.accessModes",
                "missing; write at least one access mode, e.g. accessModes: [ReadWriteOnce]",
            )
        )
    seen: set[str] = set()
    for i, mode in enumerate(st.access_modes):
        p = f"{path}.accessModes[{i}]"
        if mode not in ACCESS_MODES:
            errs.append(
                ValidationError(p, f"{mode!r} is not an access mode; write one of {', '.join(ACCESS_MODES)}")
            )
        elif mode in seen:
            errs.append(ValidationError(p, f"{mode!r} is listed twice; remove the duplicate"))
        seen.add(mode)
    if st.volume_mode is not None and st.volume_mode not in VOLUME_MODES:
        errs.append(
            ValidationError(
                f"{path}.volumeMode", f"{st.volume_mode!r} is not a volume mode; write Filesystem or Block"
            )
        )
    if st.storage_class_name:
        _check_ref_name(st.storage_class_name, f"{path}.storageClassName", "StorageClass", errs)
    if (
        st.limits_storage is not None
        and st.requests_storage is not None
        and st.limits_storage < st.requests_storage
    ):
        errs.append(
            ValidationError(
                f"{path}.resources.limits.storage",
                "is smaller than resources.requests.storage; raise the limit or remove it",
            )
        )


# --- DataVolume -----------------------------------------------------------------------------


def validate_datavolume(new: DataVolume, old: DataVolume | None = None) -> None:
    """CDI's DataVolume admission rules; raises ValidationErrors listing every problem."""
    errs: Errors = []
    _check_metadata(new.metadata, "DataVolume", errs)
    spec = new.spec

    # --- source / sourceRef
    kinds = spec.source.kinds if spec.source is not None else []
    externally_populated = any(
        t is not None and t.data_source_ref is not None for t in (spec.storage, spec.pvc)
    )
    if spec.source is not None and spec.source_ref is not None:
        errs.append(
            ValidationError("spec.sourceRef", "set either source or sourceRef, not both; remove one of them")
        )
    elif spec.source is None and spec.source_ref is None:
        if not externally_populated:
            errs.append(
                ValidationError(
                    "spec.source",
                    "missing; set exactly one source, e.g. source: {http: {url: https://example.com/disk.qcow2}}, "
                    "or sourceRef: {kind: DataSource, name: <name>}",
                )
            )
    elif spec.source is not None:
        if not kinds:
            errs.append(
                ValidationError(
                    "spec.source", f"no source kind is set; set exactly one of {', '.join(SOURCE_KINDS)}"
                )
            )
        elif len(kinds) > 1:
            errs.append(
                ValidationError(
                    "spec.source",
                    f"{len(kinds)} source kinds are set ({', '.join(kinds)}); keep exactly one of them",
                )
            )
    if spec.source_ref is not None:
        ref = spec.source_ref
        if not ref.kind:
            errs.append(ValidationError("spec.sourceRef.kind", "missing; write kind: DataSource"))
        elif ref.kind != "DataSource":
            errs.append(
                ValidationError(
                    "spec.sourceRef.kind", f"{ref.kind!r} is not supported; write kind: DataSource"
                )
            )
        if not ref.name:
            errs.append(ValidationError("spec.sourceRef.name", "missing; write the name of the DataSource"))
        else:
            _check_ref_name(ref.name, "spec.sourceRef.name", "DataSource", errs)
        if ref.namespace is not None:
            problem = dns1123_label_problem(ref.namespace)
            if problem:
                errs.append(
                    ValidationError(
                        "spec.sourceRef.namespace", f"{problem}; write the DataSource's namespace"
                    )
                )
    if spec.source is not None and len(kinds) == 1:
        _check_source(new, kinds[0], errs)

    # --- target: pvc / storage
    is_clone = spec.source_ref is not None or any(k in _CLONE_KINDS for k in kinds)
    if spec.pvc is not None and spec.storage is not None:
        errs.append(
            ValidationError(
                "spec.pvc",
                "set either pvc or storage, not both; keep storage (recommended: it fills in defaults) and remove pvc",
            )
        )
    elif spec.pvc is None and spec.storage is None:
        errs.append(
            ValidationError(
                "spec.storage",
                "missing; set the target volume, e.g. storage: {resources: {requests: {storage: 10Gi}}} (or pvc)",
            )
        )
    elif spec.storage is not None:
        _check_storage(
            spec.storage,
            "spec.storage",
            errs,
            size_required=not is_clone and not externally_populated,
            size_hint="write the volume size, e.g. storage: 10Gi (it may be left out only when cloning)",
            access_mode_required=False,
        )
    elif spec.pvc is not None:
        _check_storage(
            spec.pvc,
            "spec.pvc",
            errs,
            size_required=True,
            size_hint=(
                "write the volume size, e.g. storage: 10Gi; spec.pvc always needs one "
                "(use spec.storage instead to take the size of a clone source)"
                if is_clone
                else "write the volume size, e.g. storage: 10Gi"
            ),
            access_mode_required=True,
        )

    # --- contentType
    target = spec.target
    if spec.content_type not in CONTENT_TYPES:
        errs.append(
            ValidationError(
                "spec.contentType",
                f"{spec.content_type!r} is not a content type; write kubevirt (a disk image) or archive (a tar)",
            )
        )
    elif spec.content_type == CONTENT_ARCHIVE:
        for k in kinds:
            if k in _NO_ARCHIVE:
                errs.append(
                    ValidationError(
                        "spec.contentType",
                        f"archive is not supported with a {k} source; write contentType: kubevirt (or remove it)",
                    )
                )
        if target is not None and target.volume_mode == "Block":
            errs.append(
                ValidationError(
                    "spec.contentType",
                    "archive cannot be extracted into a Block volume; use volumeMode: Filesystem or contentType: kubevirt",
                )
            )

    # --- multi-stage
    if spec.checkpoints and not any(k in _MULTISTAGE_KINDS for k in kinds):
        errs.append(
            ValidationError(
                "spec.checkpoints",
                "multi-stage import is supported only for vddk and imageio sources; remove checkpoints",
            )
        )
    for i, cp in enumerate(spec.checkpoints):
        if not cp.current:
            errs.append(
                ValidationError(
                    f"spec.checkpoints[{i}].current", "missing; write the snapshot id of this checkpoint"
                )
            )

    if spec.priority_class_name is not None:
        _check_ref_name(spec.priority_class_name, "spec.priorityClassName", "PriorityClass", errs)
    if spec.service_account_name is not None:
        _check_ref_name(spec.service_account_name, "spec.serviceAccountName", "ServiceAccount", errs)

    # --- update: the spec is immutable except checkpoints / finalCheckpoint
    if old is not None:
        _check_same_identity(new.metadata, old.metadata, errs)
        a = {k: v for k, v in new.spec.semantic().items() if k not in _IMMUTABLE_EXCEPT}
        b = {k: v for k, v in old.spec.semantic().items() if k not in _IMMUTABLE_EXCEPT}
        for path in _diff_paths(a, b, "spec"):
            errs.append(
                ValidationError(
                    path,
                    "spec is immutable after creation except checkpoints/finalCheckpoint; "
                    f"delete and recreate the DataVolume to change {path}",
                )
            )
    raise_if_any(errs)


def _check_source(dv: DataVolume, kind: str, errs: Errors) -> None:
    src = dv.spec.source
    assert src is not None
    base = f"spec.source.{kind}"
    if src.http is not None:
        h = src.http
        _check_url(h.url, f"{base}.url", ("http", "https"), "https://example.com/disk.qcow2", errs)
        _check_ref_name(h.secret_ref, f"{base}.secretRef", "Secret", errs)
        _check_ref_name(h.cert_config_map, f"{base}.certConfigMap", "ConfigMap", errs)
        for i, header in enumerate(h.extra_headers):
            check_header_line(header, f"{base}.extraHeaders[{i}]", errs)
        for i, name in enumerate(h.secret_extra_headers):
            _check_ref_name(name, f"{base}.secretExtraHeaders[{i}]", "Secret", errs)
        if h.checksum is not None:
            check_checksum(h.checksum, f"{base}.checksum", errs)
    elif src.upload is not None:
        if src.upload.checksum is not None:
            check_checksum(src.upload.checksum, f"{base}.checksum", errs)
    elif src.s3 is not None:
        _check_url(
            src.s3.url, f"{base}.url", ("http", "https"), "https://s3.example.com/bucket/disk.img", errs
        )
        _check_ref_name(src.s3.secret_ref, f"{base}.secretRef", "Secret", errs)
        _check_ref_name(src.s3.cert_config_map, f"{base}.certConfigMap", "ConfigMap", errs)
    elif src.gcs is not None:
        _check_url(src.gcs.url, f"{base}.url", ("gs", "http", "https"), "gs://bucket/disk.img", errs)
        _check_ref_name(src.gcs.secret_ref, f"{base}.secretRef", "Secret", errs)
    elif src.registry is not None:
        _check_registry(dv, base, errs)
    elif src.imageio is not None:
        io = src.imageio
        _check_url(
            io.url, f"{base}.url", ("http", "https"), "https://engine.example.com/ovirt-engine/api", errs
        )
        if not io.disk_id:
            errs.append(
                ValidationError(f"{base}.diskId", "missing; write the id of the oVirt disk to import")
            )
        if io.secret_ref is None:
            errs.append(
                ValidationError(
                    f"{base}.secretRef",
                    "missing; name a Secret with the engine's accessKeyId (user) and secretKey",
                )
            )
        _check_ref_name(io.secret_ref, f"{base}.secretRef", "Secret", errs)
        if io.cert_config_map is None and not io.insecure_skip_verify:
            errs.append(
                ValidationError(
                    f"{base}.certConfigMap",
                    "missing; name a ConfigMap holding the engine's CA certificate, "
                    "or set insecureSkipVerify: true to skip TLS verification",
                )
            )
        _check_ref_name(io.cert_config_map, f"{base}.certConfigMap", "ConfigMap", errs)
    elif src.vddk is not None:
        v = src.vddk
        _check_url(v.url, f"{base}.url", ("http", "https"), "https://vcenter.example.com", errs)
        if not v.uuid:
            errs.append(
                ValidationError(f"{base}.uuid", "missing; write the UUID of the VM that owns the disk")
            )
        if not v.backing_file:
            errs.append(
                ValidationError(
                    f"{base}.backingFile",
                    "missing; write the disk's file, e.g. backingFile: '[datastore] vm/vm.vmdk'",
                )
            )
        if v.secret_ref is None:
            errs.append(
                ValidationError(
                    f"{base}.secretRef", "missing; name a Secret with the vCenter/ESXi user and password"
                )
            )
        _check_ref_name(v.secret_ref, f"{base}.secretRef", "Secret", errs)
        _check_ref_name(v.cert_config_map, f"{base}.certConfigMap", "ConfigMap", errs)
        _check_ref_name(v.extra_args, f"{base}.extraArgs", "ConfigMap", errs)
    elif src.pvc is not None or src.snapshot is not None:
        ref = src.pvc if src.pvc is not None else src.snapshot
        assert ref is not None
        what = "PersistentVolumeClaim" if kind == "pvc" else "VolumeSnapshot"
        if not ref.name:
            errs.append(ValidationError(f"{base}.name", f"missing; write the name of the source {what}"))
        else:
            _check_ref_name(ref.name, f"{base}.name", what, errs)
        if ref.namespace:
            problem = dns1123_label_problem(ref.namespace)
            if problem:
                errs.append(
                    ValidationError(f"{base}.namespace", f"{problem}; write the source {what}'s namespace")
                )


def _check_registry(dv: DataVolume, base: str, errs: Errors) -> None:
    reg = dv.spec.source.registry if dv.spec.source is not None else None
    assert reg is not None
    if reg.url is None and reg.image_stream is None:
        errs.append(
            ValidationError(
                f"{base}.url",
                "missing; write the image, e.g. url: docker://quay.io/containerdisks/fedora:latest",
            )
        )
    elif reg.url is not None and reg.image_stream is not None:
        errs.append(
            ValidationError(f"{base}.imageStream", "set either url or imageStream, not both; remove one")
        )
    if reg.url is not None:
        scheme, sep, rest = reg.url.partition(":")
        if not sep or scheme not in REGISTRY_SCHEMES or not rest.strip("/"):
            errs.append(
                ValidationError(
                    f"{base}.url",
                    f"{reg.url!r} is not a registry image URL; write docker://<registry>/<image>:<tag> "
                    "or oci-archive://<path>, e.g. docker://quay.io/containerdisks/fedora:latest",
                )
            )
        elif any(c.isspace() for c in reg.url):
            errs.append(ValidationError(f"{base}.url", f"{reg.url!r} contains whitespace; remove it"))
    if reg.pull_method is not None and reg.pull_method not in PULL_METHODS:
        errs.append(
            ValidationError(
                f"{base}.pullMethod", f"{reg.pull_method!r} is not a pull method; write pod or node"
            )
        )
    if reg.image_stream is not None and reg.pull_method != "node":
        errs.append(
            ValidationError(
                f"{base}.imageStream",
                "imageStream is allowed only with pullMethod: node; add pullMethod: node or use url: docker://... instead",
            )
        )
    _check_ref_name(reg.secret_ref, f"{base}.secretRef", "Secret", errs)
    _check_ref_name(reg.cert_config_map, f"{base}.certConfigMap", "ConfigMap", errs)
    if reg.platform is not None and not reg.platform.get("architecture"):
        errs.append(
            ValidationError(
                f"{base}.platform.architecture", "missing; write e.g. architecture: amd64, or remove platform"
            )
        )


def _diff_paths(a: Any, b: Any, path: str) -> list[str]:
    """Leaf paths where ``a`` and ``b`` differ (``spec.source.http.url``)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out.extend(_diff_paths(a.get(key), b.get(key), f"{path}.{key}"))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out.extend(_diff_paths(x, y, f"{path}[{i}]"))
        return out
    return [] if a == b else [path]


def _check_same_identity(new: ObjectMeta, old: ObjectMeta, errs: Errors) -> None:
    if new.name != old.name:
        errs.append(
            ValidationError(
                "metadata.name",
                f"cannot change from {old.name!r} to {new.name!r}; create a new object instead",
            )
        )
    if new.namespace != old.namespace:
        errs.append(
            ValidationError(
                "metadata.namespace",
                f"cannot change from {old.namespace!r} to {new.namespace!r}; create a new object instead",
            )
        )


# --- PersistentVolumeClaim, Secret, ConfigMap -----------------------------------------------


def validate_pvc(new: PersistentVolumeClaim, old: PersistentVolumeClaim | None = None) -> None:
    """Core PVC rules; on update only the size may grow and an unset volumeName may be bound."""
    errs: Errors = []
    _check_metadata(new.metadata, "PersistentVolumeClaim", errs)
    _check_storage(
        new.spec,
        "spec",
        errs,
        size_required=True,
        size_hint="write the claim size, e.g. resources: {requests: {storage: 10Gi}}",
        access_mode_required=True,
    )
    content = new.metadata.annotations.get(ann.CONTENT_TYPE)
    if content is not None and content not in CONTENT_TYPES:
        errs.append(
            ValidationError(
                f"metadata.annotations[{ann.CONTENT_TYPE}]",
                f"{content!r} is not a content type; write kubevirt or archive",
            )
        )
    if old is not None:
        _check_same_identity(new.metadata, old.metadata, errs)
        a, b = new.spec.semantic(), old.spec.semantic()
        if b.get("volumeName") is None:
            a.pop("volumeName", None)  # binding sets it once
            b.pop("volumeName", None)
        new_size = a["resources"]["requests"].pop("storage")
        old_size = b["resources"]["requests"].pop("storage")
        if new_size is not None and old_size is not None and new_size < old_size:
            errs.append(
                ValidationError(
                    "spec.resources.requests.storage",
                    "a claim cannot shrink; write a size at least as large as the current one",
                )
            )
        for path in _diff_paths(a, b, "spec"):
            errs.append(
                ValidationError(
                    path,
                    "spec is immutable after creation except resources.requests.storage (which may only grow); "
                    f"delete and recreate the claim to change {path}",
                )
            )
    raise_if_any(errs)


def _check_keys(keys: list[str], path: str, errs: Errors) -> None:
    for key in keys:
        if not key or len(key) > DNS1123_SUBDOMAIN_MAX or not _CONFIG_KEY.match(key) or key in (".", ".."):
            errs.append(
                ValidationError(
                    f"{path}[{key}]",
                    "is not a valid key; use letters, digits, '-', '_' and '.' (keys become file names)",
                )
            )


def validate_secret(new: Secret, old: Secret | None = None) -> None:
    errs: Errors = []
    _check_metadata(new.metadata, "Secret", errs)
    if not new.type:
        errs.append(ValidationError("type", "is empty; write type: Opaque"))
    _check_keys(list(new.data), "data", errs)
    too_long = limits.check_data_size(list(new.data.values()), "data", "Secret")
    if too_long is not None:
        errs.append(too_long)
    if old is not None:
        _check_same_identity(new.metadata, old.metadata, errs)
        if new.type != old.type:
            errs.append(
                ValidationError(
                    "type", f"cannot change from {old.type!r}; delete and recreate the Secret instead"
                )
            )
        if old.immutable and (new.data != old.data or not new.immutable):
            errs.append(
                ValidationError("data", "the Secret is immutable; delete and recreate it to change its data")
            )
    raise_if_any(errs)


def validate_configmap(new: ConfigMap, old: ConfigMap | None = None) -> None:
    errs: Errors = []
    _check_metadata(new.metadata, "ConfigMap", errs)
    _check_keys(list(new.data), "data", errs)
    _check_keys(list(new.binary_data), "binaryData", errs)
    for key in sorted(set(new.data) & set(new.binary_data)):
        errs.append(
            ValidationError(
                f"binaryData[{key}]", "the key is also in data; keep it in only one of data and binaryData"
            )
        )
    values: list[str | bytes] = [*new.data.values(), *new.binary_data.values()]
    too_long = limits.check_data_size(values, "data", "ConfigMap")
    if too_long is not None:
        errs.append(too_long)
    if old is not None:
        _check_same_identity(new.metadata, old.metadata, errs)
        changed = new.data != old.data or new.binary_data != old.binary_data
        if old.immutable and (changed or not new.immutable):
            errs.append(
                ValidationError(
                    "data", "the ConfigMap is immutable; delete and recreate it to change its data"
                )
            )
    raise_if_any(errs)


# --- admission ------------------------------------------------------------------------------


def _finish(new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """Status: dropped on create (as kubectl apply does), kept from ``old`` on update.

    On update, server-owned metadata the client left out (uid, creationTimestamp) is kept too.
    """
    new.pop("status", None)
    if old is None:
        return new
    if isinstance(old.get("status"), Mapping) and old["status"]:
        new["status"] = old["status"]
    old_meta = old.get("metadata")
    if isinstance(old_meta, Mapping):
        meta = new.setdefault("metadata", {})
        for key in ("uid", "creationTimestamp"):
            if key not in meta and old_meta.get(key):
                meta[key] = old_meta[key]
    return new


def _admit_datavolume(obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    new = DataVolume.from_dict(obj)
    old_dv = DataVolume.from_dict(old) if old is not None else None
    validate_datavolume(new, old_dv)
    return _finish(new.to_dict(), old)


def _admit_pvc(obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    new = PersistentVolumeClaim.from_dict(obj)
    old_pvc = PersistentVolumeClaim.from_dict(old) if old is not None else None
    validate_pvc(new, old_pvc)
    return _finish(new.to_dict(), old)


def _admit_secret(obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    new = Secret.from_dict(obj)
    validate_secret(new, Secret.from_dict(old) if old is not None else None)
    return _finish(new.to_dict(), old)


def _admit_configmap(obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    new = ConfigMap.from_dict(obj)
    validate_configmap(new, ConfigMap.from_dict(old) if old is not None else None)
    return _finish(new.to_dict(), old)


ADMITTERS: dict[str, Admitter] = {
    "DataVolume": _admit_datavolume,
    "PersistentVolumeClaim": _admit_pvc,
    "Secret": _admit_secret,
    "ConfigMap": _admit_configmap,
}
"""kind -> admitter. Other packages add kinds with :func:`register_admitter`."""

# Kinds that another package (the VM runtime) admits through a hook registered at import time.
HOOKED_KINDS = ("VirtualMachine", "VirtualMachineInstance")


def register_admitter(kind: str, admitter: Admitter) -> None:
    """Register (or replace) the admitter for ``kind``."""
    ADMITTERS[kind] = admitter


def admit(obj: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse, validate and normalize ``obj`` (``old`` is the stored object on update).

    Returns the normalized dict: apiVersion normalized, ``metadata.namespace`` defaulted to
    "default", optional empty fields omitted, status dropped on create / kept from ``old`` on
    update. Raises ValidationErrors listing every problem.
    """
    if not isinstance(obj, Mapping):
        raise ValidationErrors([ValidationError("", "expected an object (a manifest); got something else")])
    kind = obj.get("kind")
    supported = ", ".join(sorted(set(ADMITTERS) | set(HOOKED_KINDS)))
    if not kind:
        raise ValidationErrors(
            [ValidationError("kind", f"missing; write the kind of the object, one of {supported}")]
        )
    admitter = ADMITTERS.get(str(kind))
    if admitter is None:
        if kind in HOOKED_KINDS:
            msg = (
                f"{kind} objects need the VM runtime's admission hook, which is not loaded; "
                "install the vm extra (pip install 'pycdi[vm]') and import vm_runtime, "
                "which registers it with cdi.api.validation.register_admitter"
            )
        else:
            msg = f"{kind!r} is not a supported kind; write one of {supported}"
        raise ValidationErrors([ValidationError("kind", msg)])
    if old is not None and old.get("kind") != kind:
        raise ValidationErrors(
            [
                ValidationError(
                    "kind", f"cannot change from {old.get('kind')!r} to {kind!r}; create a new object instead"
                )
            ]
        )
    too_large = limits.check_object_size(obj, limits.MAX_REQUEST_BYTES, f"a {kind} as submitted")
    if too_large is not None:  # refused before anything walks it
        raise ValidationErrors([too_large])
    errs = limits.check_metadata_limits(obj)
    try:
        new = admitter(dict(obj), old)
    except ValidationErrors as e:
        raise ValidationErrors(errs + e.errors) from None
    except ValidationError as e:
        raise ValidationErrors([*errs, e]) from None
    raise_if_any(errs)
    too_large = limits.check_object_size(new, limits.MAX_OBJECT_BYTES, f"a stored {kind}")
    if too_large is not None:
        raise ValidationErrors([too_large])
    return new


__all__ = [
    "ACCESS_MODES",
    "ADMITTERS",
    "CHECKSUM_HEX_LENGTHS",
    "CONTENT_TYPES",
    "VOLUME_MODES",
    "Admitter",
    "admit",
    "check_checksum",
    "check_header_line",
    "dns1123_label_problem",
    "dns1123_subdomain_problem",
    "register_admitter",
    "validate_configmap",
    "validate_datavolume",
    "validate_pvc",
    "validate_secret",
]
