"""The certificate, chain and private key FTPS and HTTPS serve, read from PEM.

One reader for the start-up check (``wsfront.config.check_certificate``)
and for the TLS options themselves (``pem_parts``, for HTTPS and FTPS alike), so
what passes the check is what the listeners load.

The key is read with ``cryptography`` and no password: an encrypted key
is refused (``EncryptedKey``), never decrypted.  Twisted's
``PrivateCertificate.loadPEM`` passes OpenSSL no passphrase callback, so
OpenSSL's own one asked for the passphrase on the terminal, and a wrong
or empty answer came back as nine OpenSSL error entries; a front end
started by a service manager has no one to answer it anyway.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

EXPIRY_WARNING = datetime.timedelta(days=14)
"""A certificate that expires sooner than this is warned about at start."""

_PRIVATE_KEY = re.compile(
    rb"-----BEGIN ((?:[A-Z]+ )?)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.DOTALL
)


class PemError(ValueError):
    """The PEM does not hold a certificate and its private key TLS can use."""


class NoPrivateKey(PemError):
    """No private key block at all."""


class EncryptedKey(PemError):
    """The private key needs a passphrase."""


@attrs.frozen
class ServerPem:
    """The server's certificate, the intermediates sent after it, its key."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes


def parse_pem(pem: bytes) -> ServerPem:
    """The first certificate in ``pem`` with any others as its chain, and
    the last private key (the ``--tls-key`` file's, which comes after the
    certificate file's).  Raises ``PemError`` (or a subclass) saying why
    TLS could not use them."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:  # its message ("MalformedFraming") says nothing more
        raise PemError("no PEM certificate") from None
    keys = [m.group(0) for m in _PRIVATE_KEY.finditer(pem)]
    if not keys:
        raise NoPrivateKey("no private key")
    try:
        # No password and no callback: cryptography never prompts.
        key = serialization.load_pem_private_key(keys[-1], password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise EncryptedKey("encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise PemError(f"cannot read the private key ({e})") from None
    certificate = certificates[0]
    if _public_der(key.public_key()) != _public_der(certificate.public_key()):
        raise PemError("the private key is not the certificate's")
    return ServerPem(certificate, tuple(certificates[1:]), key)


def pem_parts(pem: bytes) -> dict[str, Any]:
    """The key, certificate and chain of a PEM blob holding the certificate,
    any intermediates after it and the private key
    (``FrontendConfig.tls_pem()``), as ``CertificateOptions`` arguments.
    Read by ``parse_pem``, as the start-up check reads it (so never asking
    for a passphrase)."""
    parsed = parse_pem(pem)
    return {
        "privateKey": parsed.key,
        "certificate": parsed.certificate,
        "extraCertChain": list(parsed.chain),
    }


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def validity_warning(certificate: x509.Certificate, now: datetime.datetime) -> str | None:
    """Why clients will (soon) refuse ``certificate`` at time ``now`` (UTC),
    or None.  Only a warning: an operator may be renewing it right now."""
    after, before = certificate.not_valid_after_utc, certificate.not_valid_before_utc
    if now > after:
        return f"the certificate expired on {_when(after)}: clients will refuse it"
    if now < before:
        return f"the certificate is not valid until {_when(before)}: clients will refuse it"
    if after - now < EXPIRY_WARNING:
        days = (after - now).days
        left = "in less than a day" if days == 0 else f"in {days} day{'s' * (days > 1)}"
        return f"the certificate expires on {_when(after)} ({left})"
    return None


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
