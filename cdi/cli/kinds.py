"""The kind table: aliases -> KindInfo (kind, plural, group, columns).

Other parts of the project add kinds with ``register(KindInfo(...), "alias", ...)``; a later
registration of an alias replaces the earlier one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cdi.api import annotations as ann
from cdi.cli.printers import access_modes, age, bytes_progress, cell, dig, quantity

if TYPE_CHECKING:
    from cdi.store.sqlite import Store

Obj = dict[str, Any]


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Obj, datetime], str]


ColumnsFn = Callable[[bool], list[Column]]
Lister = Callable[["Store", "str | None"], list[Obj]]


@dataclass(frozen=True)
class KindInfo:
    kind: str  # DataVolume
    plural: str  # datavolumes
    columns: ColumnsFn  # wide -> the columns, NAME first
    group: str = ""  # cdi.kubevirt.io ("" for core)
    version: str = "v1"
    namespaced: bool = True
    # objects that are not stored as objects (events); None: store.list(kind, namespace)
    lister: Lister | None = None
    # the component named in describe's Events "From" column
    event_source: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """``datavolume.cdi.kubevirt.io`` (kubectl's prefix in "created" lines and -o name)."""
        base = self.kind.lower()
        return f"{base}.{self.group}" if self.group else base

    @property
    def resource_plural(self) -> str:
        """``datavolumes.cdi.kubevirt.io`` (kubectl's word in NotFound errors)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def list_objects(self, store: Store, namespace: str | None) -> list[Obj]:
        if self.lister is not None:
            return self.lister(store, namespace)
        return store.list(self.kind, namespace)


KINDS: dict[str, KindInfo] = {}
BY_KIND: dict[str, KindInfo] = {}


def register(info: KindInfo, *aliases: str) -> KindInfo:
    names = {info.kind.lower(), info.plural.lower(), info.resource, info.resource_plural, *aliases}
    for a in names:
        KINDS[a.lower()] = info
    BY_KIND[info.kind] = info
    return info


def lookup(alias: str) -> KindInfo | None:
    return KINDS.get(alias.strip().lower())


def by_kind(kind: str) -> KindInfo | None:
    return BY_KIND.get(kind)


# -- column helpers ------------------------------------------------------------------------------


def _name(o: Obj, now: datetime) -> str:
    return cell(dig(o, "metadata", "name"))


def _age(o: Obj, now: datetime) -> str:
    return age(dig(o, "metadata", "creationTimestamp"), now)


def condition_status(o: Obj, type_: str) -> str:
    for c in dig(o, "status", "conditions") or []:
        if isinstance(c, dict) and c.get("type") == type_:
            return cell(c.get("status"))
    return ""


def col(header: str, *path: str | int) -> Column:
    return Column(header, lambda o, now: cell(dig(o, *path)))


NAME = Column("NAME", _name)
AGE = Column("AGE", _age)


# -- DataVolume ----------------------------------------------------------------------------------


def _dv_bytes(o: Obj, now: datetime) -> str:
    return bytes_progress(
        dig(o, "status", "progressDetail", "bytesDone"), dig(o, "status", "progressDetail", "bytesTotal")
    )


def dv_columns(wide: bool) -> list[Column]:
    cols = [
        NAME,
        col("PHASE", "status", "phase"),
        col("PROGRESS", "status", "progress"),
        col("RESTARTS", "status", "restartCount"),
        AGE,
    ]
    if wide:
        cols += [
            col("CLAIM", "status", "claimName"),
            Column("BYTES", _dv_bytes),
            Column("READY", lambda o, now: condition_status(o, "Ready")),
        ]
    return cols


DATAVOLUME = register(
    KindInfo(
        "DataVolume",
        "datavolumes",
        dv_columns,
        group="cdi.kubevirt.io",
        version="v1beta1",
        event_source="datavolume-controller",
    ),
    "dv",
    "dvs",
)


# -- PersistentVolumeClaim -----------------------------------------------------------------------


def _pvc_status(o: Obj, now: datetime) -> str:
    if dig(o, "metadata", "deletionTimestamp"):
        return "Terminating"
    return cell(dig(o, "status", "phase"))


def _pvc_capacity(o: Obj, now: datetime) -> str:
    return quantity(dig(o, "status", "capacity", "storage"))


def _pvc_modes(o: Obj, now: datetime) -> str:
    return access_modes(dig(o, "status", "accessModes"))


def _pvc_volume_mode(o: Obj, now: datetime) -> str:
    return cell(dig(o, "spec", "volumeMode") or "Filesystem")


def pvc_columns(wide: bool) -> list[Column]:
    cols = [
        NAME,
        Column("STATUS", _pvc_status),
        col("VOLUME", "spec", "volumeName"),
        Column("CAPACITY", _pvc_capacity),
        Column("ACCESS MODES", _pvc_modes),
        col("STORAGECLASS", "spec", "storageClassName"),
        Column("VOLUMEMODE", _pvc_volume_mode),
        AGE,
    ]
    if wide:
        cols.append(Column("DISK", lambda o, now: cell(dig(o, "metadata", "annotations", ann.DISK_PATH))))
    return cols


PVC = register(
    KindInfo(
        "PersistentVolumeClaim", "persistentvolumeclaims", pvc_columns, event_source="import-controller"
    ),
    "pvc",
    "pvcs",
)


# -- Secret, ConfigMap ---------------------------------------------------------------------------


def secret_columns(wide: bool) -> list[Column]:
    return [
        NAME,
        Column("TYPE", lambda o, now: cell(o.get("type") or "Opaque")),
        Column("DATA", lambda o, now: str(len(o.get("data") or {}))),
        AGE,
    ]


def configmap_columns(wide: bool) -> list[Column]:
    return [
        NAME,
        Column("DATA", lambda o, now: str(len(o.get("data") or {}) + len(o.get("binaryData") or {}))),
        AGE,
    ]


SECRET = register(KindInfo("Secret", "secrets", secret_columns), "secret")
CONFIGMAP = register(KindInfo("ConfigMap", "configmaps", configmap_columns), "cm")


# -- Event ---------------------------------------------------------------------------------------


def _event_object(o: Obj, now: datetime) -> str:
    inv = o.get("involvedObject") or {}
    return f"{cell(inv.get('kind')).lower()}/{cell(inv.get('name'))}"


def event_name(o: Obj) -> str:
    inv = o.get("involvedObject") or {}
    return cell(dig(o, "metadata", "name")) or f"{cell(inv.get('name'))}.{cell(o.get('reason')).lower()}"


def event_columns(wide: bool) -> list[Column]:
    return [
        Column("LAST SEEN", lambda o, now: age(o.get("lastTimestamp"), now)),
        col("TYPE", "type"),
        col("REASON", "reason"),
        Column("OBJECT", _event_object),
        col("MESSAGE", "message"),
    ]


def _list_events(store: Store, namespace: str | None) -> list[Obj]:
    out = []
    for raw in store.events(namespace=namespace):
        ev = dict(raw)
        inv = ev.get("involvedObject") or {}
        ev.setdefault("apiVersion", "v1")
        ev.setdefault("metadata", {"name": event_name(ev), "namespace": inv.get("namespace", "")})
        out.append(ev)
    return out


EVENT = register(KindInfo("Event", "events", event_columns, lister=_list_events), "ev")


# -- KubeVirt (the VM runtime may re-register these with its own columns) -------------------------


def vm_columns(wide: bool) -> list[Column]:
    return [
        NAME,
        AGE,
        col("STATUS", "status", "printableStatus"),
        Column("READY", lambda o, now: condition_status(o, "Ready")),
    ]


def vmi_columns(wide: bool) -> list[Column]:
    return [
        NAME,
        AGE,
        col("PHASE", "status", "phase"),
        col("IP", "status", "interfaces", 0, "ipAddress"),
        col("NODENAME", "status", "nodeName"),
        Column("READY", lambda o, now: condition_status(o, "Ready")),
    ]


register(
    KindInfo(
        "VirtualMachine",
        "virtualmachines",
        vm_columns,
        group="kubevirt.io",
        event_source="virtualmachine-controller",
    ),
    "vm",
    "vms",
)
register(
    KindInfo(
        "VirtualMachineInstance",
        "virtualmachineinstances",
        vmi_columns,
        group="kubevirt.io",
        event_source="virtualmachine-controller",
    ),
    "vmi",
    "vmis",
)
