"""Names the controller derives from an object's namespace and name (workers, their directories).

A worker is named ``<kind>-<namespace>.<name>``, e.g. ``importer-default.fedora``. A namespace
is a DNS label (no dots), so the first dot after the kind separates the two parts and no two
objects share a worker, whatever dashes their names hold (``a-b``/``c`` and ``a``/``b-c`` once
both became ``importer-a-b-c``).

Kubernetes allows names of up to 253 characters; a path component may have at most 255 bytes
and a unix socket path at most 108. A name that would make the worker name longer than
``MAX_WORKER_NAME`` keeps a readable prefix and ends with ``_`` and a digest of the full name:
``_`` cannot occur in a Kubernetes name, so a shortened name never equals a name as written.
"""

from __future__ import annotations

import hashlib
import os.path

MAX_WORKER_NAME = 80
_DIGEST = 12
RUN_DIR = "run"  # the part of a worker's directory that belongs to the worker (embedded backend)
SECRETS_DIR = "secrets"  # secrets, in the run dir (the worker's copy) and beside it (the controller's)


def worker_name(kind: str, namespace: str, name: str) -> str:
    """The worker of ``kind`` ("importer", "upload") for the object ``namespace/name``."""
    full = f"{kind}-{namespace}.{name}"
    if len(full) <= MAX_WORKER_NAME:
        return full
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:_DIGEST]
    return f"{full[: MAX_WORKER_NAME - _DIGEST - 1]}_{digest}"


def worker_run_dir(data_dir: str, wname: str) -> str:
    """Where the embedded backend keeps worker ``wname``'s own files (result, state, secrets)."""
    return os.path.join(data_dir, "workers", wname, RUN_DIR)


def worker_held_secret(data_dir: str, wname: str, filename: str) -> str:
    """The controller side's copy of a secret it shares with worker ``wname``: in the root-owned
    worker directory, out of the worker's reach (it could replace its own copy with a link)."""
    return os.path.join(data_dir, "workers", wname, SECRETS_DIR, filename)
