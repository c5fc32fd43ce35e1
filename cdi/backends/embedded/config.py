"""Settings of the embedded backend: where the data dir is and what is in its config.yaml.

``config.yaml`` (written with the defaults on first use, so a user can find and edit it)::

    storageClasses:
      local: {path: <data dir>/pools/local, default: true}
    filesystemOverhead: 0.06      # CDI's default; per class with filesystemOverhead:
    retryLimit: 5                 # temporary import failures before a DataVolume fails
    retryBackoffSeconds: 2        # first retry delay; doubles up to retryBackoffMaxSeconds
    retryBackoffMaxSeconds: 60
    importerIdleTimeoutSeconds: 600
    importerMaxResumes: 5         # in-worker resumes (Range) before the worker gives up
    workerIsolation: true         # workers confine themselves (see cdi.common.confinement)
    workerUidBase: 1879048192     # workers run as uids in [base, base + count), one per worker
    workerUidCount: 1000000
    imageSandbox: true            # qemu-img and nbdkit run under bubblewrap (cdi.datapath.sandbox)
    upload:                       # optional; see cdi.api.upload.UploadConfig
      tokenTTLSeconds: 300        # (0, 3600]

Opening the data dir (:func:`open_store`, :meth:`Config.load`) first checks and tightens its
permissions (:mod:`cdi.backends.embedded.datadir`): it holds Secrets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from cdi.api.upload import UploadConfig
from cdi.backends.base import StorageClassInfo
from cdi.backends.embedded import datadir
from cdi.backends.embedded.workers import UID_BASE, UID_COUNT
from cdi.common import documents
from cdi.common.errors import PermanentError
from cdi.store.sqlite import Store

ENV_DATA_DIR = "CDI_DATA_DIR"
CONFIG_FILE = "config.yaml"
STATE_DB = "state.db"


def resolve_data_dir(arg: str | None = None) -> str:
    """``--data-dir``, else ``$CDI_DATA_DIR``, else ``~/.local/share/cdi`` (absolute)."""
    d = arg or os.environ.get(ENV_DATA_DIR) or os.path.join(os.path.expanduser("~"), ".local", "share", "cdi")
    return os.path.abspath(d)


def open_store(data_dir: str) -> Store:
    """The store of ``data_dir``, after checking and tightening the data dir.

    :raises datadir.UnsafeDataDir: the data dir is not private to the user running cdi.
    """
    datadir.secure(data_dir)
    return Store(os.path.join(data_dir, STATE_DB))


@dataclass(frozen=True)
class Config:
    data_dir: str
    storage_classes: dict[str, StorageClassInfo] = field(default_factory=dict)
    filesystem_overhead: float = 0.06
    retry_limit: int = 5
    retry_backoff: float = 2.0
    retry_backoff_max: float = 60.0
    importer_idle_timeout: float = 600.0
    importer_max_resumes: int = 5
    upload: UploadConfig = field(default_factory=UploadConfig)
    worker_isolation: bool = True
    worker_uid_base: int = UID_BASE
    worker_uid_count: int = UID_COUNT
    image_sandbox: bool = True

    @property
    def default_storage_class(self) -> str | None:
        for sc in self.storage_classes.values():
            if sc.default:
                return sc.name
        return None

    def overhead_for(self, storage_class: str) -> float:
        sc = self.storage_classes.get(storage_class)
        if sc is not None and sc.filesystem_overhead is not None:
            return sc.filesystem_overhead
        return self.filesystem_overhead

    @classmethod
    def load(cls, data_dir: str) -> Config:
        """Read ``config.yaml`` (creating it with defaults when absent).

        :raises PermanentError: naming the key that is wrong and what to write.
        """
        path = os.path.join(data_dir, CONFIG_FILE)
        datadir.secure(data_dir)
        if not os.path.exists(path):
            default = {
                "storageClasses": {"local": {"path": os.path.join(data_dir, "pools", "local"), "default": True}},
                "filesystemOverhead": 0.06,
                "retryLimit": 5,
                "retryBackoffSeconds": 2,
                "retryBackoffMaxSeconds": 60,
                "importerIdleTimeoutSeconds": 600,
                "importerMaxResumes": 5,
            }
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write("# pycdi embedded backend settings (see README, 'Embedded backend')\n")
                yaml.safe_dump(default, f, sort_keys=False)
            os.replace(tmp, path)
        try:
            raw: Any = documents.load_one(documents.read_file(path)) or {}
        except documents.DocumentError as e:
            raise PermanentError(f"{path} is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise PermanentError(f"{path}: expected a mapping of settings")
        classes: dict[str, StorageClassInfo] = {}
        for name, sc in (raw.get("storageClasses") or {}).items():
            if not isinstance(sc, dict) or "path" not in sc:
                raise PermanentError(f"{path}: storageClasses.{name} needs a path, e.g. {{path: /var/lib/cdi/{name}}}")
            overhead = sc.get("filesystemOverhead")
            classes[str(name)] = StorageClassInfo(
                name=str(name),
                path=os.path.abspath(os.path.expanduser(str(sc["path"]))),
                default=bool(sc.get("default", False)),
                filesystem_overhead=float(overhead) if overhead is not None else None,
            )

        def num(key: str, default: float) -> float:
            v = raw.get(key, default)
            try:
                return float(v)
            except (TypeError, ValueError) as e:
                raise PermanentError(f"{path}: {key} must be a number, got {v!r}") from e

        overhead = num("filesystemOverhead", 0.06)
        if not 0 <= overhead < 1:
            raise PermanentError(f"{path}: filesystemOverhead must be in [0, 1), e.g. 0.06; got {overhead}")
        isolation, image_sandbox = raw.get("workerIsolation", True), raw.get("imageSandbox", True)
        for key, value in (("workerIsolation", isolation), ("imageSandbox", image_sandbox)):
            if not isinstance(value, bool):
                raise PermanentError(f"{path}: {key} must be true or false, got {value!r}")
        uid_base, uid_count = int(num("workerUidBase", UID_BASE)), int(num("workerUidCount", UID_COUNT))
        if uid_base < 65536 or uid_count < 1 or uid_base + uid_count > 2**31:
            raise PermanentError(
                f"{path}: workerUidBase/workerUidCount must name a range of ids no user or container of this "
                f"machine uses, from 65536 up to 2147483648 (e.g. {UID_BASE} and {UID_COUNT}, above systemd's "
                f"container range); got {uid_base} and {uid_count}"
            )
        try:
            upload = UploadConfig.from_mapping(raw.get("upload"))
        except ValueError as e:
            raise PermanentError(f"{path}: {e}") from e
        return cls(
            data_dir=data_dir,
            storage_classes=classes,
            filesystem_overhead=overhead,
            retry_limit=int(num("retryLimit", 5)),
            retry_backoff=num("retryBackoffSeconds", 2),
            retry_backoff_max=num("retryBackoffMaxSeconds", 60),
            importer_idle_timeout=num("importerIdleTimeoutSeconds", 600),
            importer_max_resumes=int(num("importerMaxResumes", 5)),
            upload=upload,
            worker_isolation=isolation,
            worker_uid_base=uid_base,
            worker_uid_count=uid_count,
            image_sandbox=image_sandbox,
        )
