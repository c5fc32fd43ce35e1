"""Pure API data: types, validation/admission, phases, conditions, annotations, worker contract.

The names most callers need are re-exported here::

    from cdi.api import DataVolume, admit
"""

from cdi.api.datavolume import (
    API_VERSION,
    KIND,
    BlankSource,
    Checkpoint,
    DataVolume,
    DataVolumeSource,
    DataVolumeSpec,
    GCSSource,
    HTTPSource,
    ImageIOSource,
    PVCSource,
    RegistrySource,
    S3Source,
    SnapshotSource,
    SourceRef,
    StorageSpec,
    UploadSource,
    VDDKSource,
)
from cdi.api.meta import ObjectMeta
from cdi.api.objects import ConfigMap, Secret
from cdi.api.pvc import PersistentVolumeClaim
from cdi.api.validation import (
    ADMITTERS,
    admit,
    register_admitter,
    validate_configmap,
    validate_datavolume,
    validate_pvc,
    validate_secret,
)

__all__ = [
    "ADMITTERS",
    "API_VERSION",
    "KIND",
    "BlankSource",
    "Checkpoint",
    "ConfigMap",
    "DataVolume",
    "DataVolumeSource",
    "DataVolumeSpec",
    "GCSSource",
    "HTTPSource",
    "ImageIOSource",
    "ObjectMeta",
    "PVCSource",
    "PersistentVolumeClaim",
    "RegistrySource",
    "S3Source",
    "Secret",
    "SnapshotSource",
    "SourceRef",
    "StorageSpec",
    "UploadSource",
    "VDDKSource",
    "admit",
    "register_admitter",
    "validate_configmap",
    "validate_datavolume",
    "validate_pvc",
    "validate_secret",
]
