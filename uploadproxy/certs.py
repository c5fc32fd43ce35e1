"""The upload proxy's TLS certificate: user-supplied, or a generated CA + server certificate.

Generated files live in ``<data dir>/upload/tls/``: ``ca.pem`` (what clients trust; ``cdi
image-upload`` uses it by default for the embedded proxy), ``ca.key``, ``tls.crt``, ``tls.key``
(SANs: localhost, 127.0.0.1, ::1 and the host name). They are made once and reused.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

from cdi.api import upload as api


@dataclass(frozen=True)
class TLSFiles:
    cert: str
    key: str
    ca: str | None  # None when the user supplied the certificate


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # exactly: a leftover .tmp keeps its old mode, and the umask may differ
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    pem: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    return pem


def tls_dir(data_dir: str) -> str:
    return os.path.join(api.upload_dir(data_dir), "tls")


def ensure_tls(data_dir: str, cert: str | None = None, key: str | None = None) -> TLSFiles:
    if cert and key:
        return TLSFiles(cert, key, None)
    d = tls_dir(data_dir)
    files = TLSFiles(os.path.join(d, "tls.crt"), os.path.join(d, "tls.key"), os.path.join(d, "ca.pem"))
    if all(os.path.exists(p) for p in (files.cert, files.key, files.ca or "")):
        return files
    os.makedirs(d, mode=0o700, exist_ok=True)
    # Imported here: a proxy whose certificate exists never loads x509 (memory).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pycdi-uploadproxy-ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    host = socket.gethostname()
    if host and host != "localhost":
        sans.append(x509.DNSName(host))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cdi-uploadproxy")]))
        .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(os.path.join(d, "ca.key"), _key_pem(ca_key), 0o600)
    _write(files.key, _key_pem(leaf_key), 0o600)
    _write(files.cert, leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM),
           0o644)
    _write(files.ca or "", ca.public_bytes(serialization.Encoding.PEM), 0o644)
    return files
