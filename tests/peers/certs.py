"""A test CA and one server certificate (SAN localhost + 127.0.0.1), made with the openssl CLI."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Certs:
    ca_pem: str  # the CA certificate clients trust
    server_pem: str  # leaf certificate for localhost / 127.0.0.1, signed by the CA
    server_key: str  # its key (unencrypted)
    cert_dir: str = ""  # a directory holding only ca.pem, like a mounted certConfigMap
    ca_key: str = ""


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_and_cert(directory: str | os.PathLike[str]) -> Certs:
    """Create ca.pem/ca.key, server.pem/server.key and configmap/ca.pem under ``directory``."""
    d = os.fspath(directory)
    os.makedirs(d, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=pycdi-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)  # fmt: skip
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "3650", "-extfile", "ext.cnf", "-out", "server.pem", cwd=d)  # fmt: skip
    cert_dir = os.path.join(d, "configmap")
    os.makedirs(cert_dir, exist_ok=True)
    with open(os.path.join(d, "ca.pem"), "rb") as src, open(os.path.join(cert_dir, "ca.pem"), "wb") as dst:
        dst.write(src.read())
    return Certs(
        ca_pem=os.path.join(d, "ca.pem"),
        server_pem=os.path.join(d, "server.pem"),
        server_key=os.path.join(d, "server.key"),
        cert_dir=cert_dir,
        ca_key=os.path.join(d, "ca.key"),
    )
