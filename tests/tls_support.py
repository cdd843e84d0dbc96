"""Self-signed certificates made on the fly for the TLS tests.

``make_certificate(dir)`` writes ``cert.pem`` and ``key.pem`` for
``127.0.0.1`` and ``localhost`` (subjectAltName, so curl and Python verify
them with the certificate itself as the trust root) and returns their paths.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_certificate(
    directory: Path,
    *,
    valid_from: datetime.timedelta = -datetime.timedelta(minutes=5),
    valid_until: datetime.timedelta = datetime.timedelta(days=90),
) -> tuple[Path, Path]:
    """The certificate is valid from ``valid_from`` to ``valid_until`` after
    now (by default from 5 minutes ago for 90 days: long enough for
    wsfront's start-up not to warn that it expires soon)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wsfs test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + valid_from)
        .not_valid_after(now + valid_until)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@frozen
class TestCertificate:
    """``make_certificate``'s files and the PEM blob ``FrontendConfig.tls_pem()``
    would read from them (what ``wsfront.ftp.security.server_tls_options``
    takes)."""

    cert_path: Path
    key_path: Path
    pem: bytes


def self_signed(directory: Path) -> TestCertificate:
    """A fresh certificate in ``directory`` (made if missing), for FTPS tests."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = make_certificate(directory)
    return TestCertificate(cert_path, key_path, cert_path.read_bytes() + key_path.read_bytes())
