"""Every annotation and label key the project reads or writes, defined once."""

from __future__ import annotations

PREFIX = "cdi.kubevirt.io/"

# User-facing (CDI's keys)
BIND_IMMEDIATE = "cdi.kubevirt.io/storage.bind.immediate.requested"
RETAIN_AFTER_COMPLETION = "cdi.kubevirt.io/storage.pod.retainAfterCompletion"
UPLOAD_TARGET = "cdi.kubevirt.io/storage.upload.target"
CONTENT_TYPE = "cdi.kubevirt.io/storage.contentType"
ALLOW_CLAIM_ADOPTION = "cdi.kubevirt.io/allowClaimAdoption"
DEFAULT_VIRT_CLASS = "storageclass.kubevirt.io/is-default-virt-class"

# Ours: per-DataVolume retry limit for temporary import failures (global default in config).
RETRY_LIMIT = "cdi.kubevirt.io/storage.import.retryLimit"

# Controller-owned (CDI's keys, set on the PVC)
POD_PHASE = "cdi.kubevirt.io/storage.pod.phase"
POD_RESTARTS = "cdi.kubevirt.io/storage.pod.restarts"
IMPORT_POD_NAME = "cdi.kubevirt.io/storage.import.importPodName"
IMPORT_ENDPOINT = "cdi.kubevirt.io/storage.import.endpoint"
IMPORT_SOURCE = "cdi.kubevirt.io/storage.import.source"
PREALLOCATION_APPLIED = "cdi.kubevirt.io/storage.preallocation"
CREATED_FOR_DATAVOLUME = "cdi.kubevirt.io/createdForDataVolume"

# Embedded backend: where the disk lives on this machine (documented in README).
DISK_PATH = "embedded.cdi.kubevirt.io/disk-path"
VOLUME_PATH = "embedded.cdi.kubevirt.io/volume-path"
BACKING_FILE = "embedded.cdi.kubevirt.io/backing-file"

# Finalizers
DV_FINALIZER = "cdi.kubevirt.io/dataVolume"
PVC_FINALIZER = "kubernetes.io/pvc-protection"

LABEL_APP = "app"
LABEL_APP_VALUE = "containerized-data-importer"
