"""Certificates made on the fly for TLS between front ends and storage servers.

``make_tls(dir)`` creates a CA and a server certificate it signs for
127.0.0.1 and localhost, laid out the way the endpoint strings want them
(docs/wire-protocol.md, "TLS"): the CA alone in a directory of ``*.pem``
(``trustRoots=``), the server's key and certificate as two PEM files
(``privateKey=``, ``certKey=``).  Used by the TLS tests and by
``bench/storage_throughput.py --tls``.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@attrs.frozen
class TlsFiles:
    """A CA directory and one server key and certificate signed by that CA."""

    ca_dir: Path
    key: Path
    cert: Path

    @property
    def ca_pem(self) -> Path:
        return self.ca_dir / "ca.pem"

    def listen(self, port: int, interface: str = "127.0.0.1") -> str:
        """Server endpoint string for ``wsstorage --listen``."""
        return f"ssl:{port}:interface={interface}:privateKey={self.key}:certKey={self.cert}"

    def connect(self, port: int, host: str = "127.0.0.1") -> str:
        """Client endpoint string for ``--storage NAME=...``."""
        return f"tls:{host}:{port}:trustRoots={self.ca_dir}"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls(
    directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), label: str = "test"
) -> TlsFiles:
    """A fresh CA and a server certificate for ``hosts``, under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"wsfs {label} CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(
        ca_dir=directory / "ca", key=directory / "server.key", cert=directory / "server.pem"
    )
    files.ca_dir.mkdir(exist_ok=True)
    files.ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files
