"""A self-signed certificate made on the fly, for FTPS and HTTPS tests.

``self_signed(directory)`` writes ``cert.pem`` and ``key.pem`` for
``localhost`` and 127.0.0.1 (an EC P-256 key: quick to make) and returns
their paths and the combined PEM that ``FrontendConfig.tls_pem()`` would
give.  Clients in tests either skip verification or trust ``cert.pem`` as
their CA file (it is its own issuer).
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


@frozen
class TestCertificate:
    cert_path: Path
    key_path: Path
    pem: bytes


def self_signed(directory: Path, name: str = "localhost") -> TestCertificate:
    """A fresh key and self-signed certificate valid for a day."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return TestCertificate(cert_path, key_path, cert_pem + b"\n" + key_pem)
