"""Secrets and ConfigMaps handed to workers as private files (never logged, never in argv)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import shutil

from cdi.common.errors import PermanentError
from cdi.store.sqlite import Store


def secret_values(store: Store, namespace: str, name: str, field: str) -> dict[str, bytes]:
    """The decoded data of Secret ``name``.

    :raises PermanentError: (reason SecretNotFound) naming the field that refers to it and how to create it.
    """
    obj = store.get("Secret", namespace, name)
    if obj is None:
        raise PermanentError(
            f'Secret "{name}" (from {field}) not found in namespace "{namespace}"; create it, e.g. '
            f"cdi create secret generic {name} --from-literal=accessKeyId=USER --from-literal=secretKey=PASSWORD",
            reason="SecretNotFound",
        )
    out: dict[str, bytes] = {}
    for k, v in (obj.get("data") or {}).items():
        try:
            out[k] = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as e:
            raise PermanentError(f'Secret "{name}" key {k} is not valid base64', reason="SecretInvalid") from e
    for k, v in (obj.get("stringData") or {}).items():
        out[k] = str(v).encode()
    return out


def _fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, mode=0o700)
    return path


def write_private(path: str, data: bytes) -> None:
    """A new file only its owner may read (an existing one is replaced, never written through)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_configmap(store: Store, namespace: str, name: str, directory: str, field: str) -> str:
    obj = store.get("ConfigMap", namespace, name)
    if obj is None:
        raise PermanentError(
            f'ConfigMap "{name}" (from {field}) not found in namespace "{namespace}"; create it with the CA '
            f"certificate(s) in PEM, e.g. cdi create configmap {name} --from-file=ca.pem",
            reason="ConfigMapNotFound",
        )
    _fresh_dir(directory)
    for k, v in (obj.get("data") or {}).items():
        write_private(os.path.join(directory, os.path.basename(k)), str(v).encode())
    for k, v in (obj.get("binaryData") or {}).items():
        write_private(os.path.join(directory, os.path.basename(k)), base64.b64decode(v))
    return directory


def write_secret_headers(store: Store, namespace: str, names: list[str], directory: str) -> str:
    """One file per header line: every value of every named Secret is a full "Name: value" line."""
    _fresh_dir(directory)
    for i, name in enumerate(names):
        values = secret_values(store, namespace, name, f"spec.source.http.secretExtraHeaders[{i}]")
        for k, v in sorted(values.items()):
            write_private(os.path.join(directory, f"{i:02d}-{os.path.basename(k)}"), v.strip())
    return directory
