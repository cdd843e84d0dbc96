"""Unit tests of the FTPS state machine and of HASH's algorithm table."""

from __future__ import annotations

import hashlib

import pytest

from wsfront.ftp import hashing
from wsfront.ftp.replies import Reply
from wsfront.ftp.security import Protection


def _code(call, *args) -> int:
    with pytest.raises(Reply) as caught:
        call(*args)
    return caught.value.code


def test_auth_is_refused_without_a_certificate_or_for_other_mechanisms():
    assert _code(Protection(available=False).check_auth, "TLS") == 431
    p = Protection(available=True)
    assert _code(p.check_auth, "KERBEROS_V4") == 504
    for mechanism in ("TLS", "tls", "TLS-C", "SSL"):
        p.check_auth(mechanism)  # no Reply: may start TLS
    p.started()
    assert _code(p.check_auth, "TLS") == 503  # only once


def test_pbsz_and_prot_follow_auth_in_order():
    p = Protection(available=True)
    assert _code(p.set_pbsz, "0") == 503
    assert _code(p.set_prot, "C") == 503
    p.started()
    assert _code(p.set_prot, "P") == 503  # PBSZ first
    assert p.set_prot("C") == "Protection level set to C"  # ftplib's prot_c sends no PBSZ
    assert _code(p.set_pbsz, "zero") == 501
    assert p.set_pbsz("1024") == "PBSZ=0"  # TLS ignores the size (RFC 4217 9)
    assert _code(p.set_prot, "S") == 536
    assert _code(p.set_prot, "E") == 536
    assert _code(p.set_prot, "X") == 504
    assert not p.private
    p.set_prot("p")
    assert p.private
    p.set_prot("C")
    assert not p.private


def test_implicit_tls_starts_protected():
    p = Protection.implicit()
    assert p.active and p.pbsz and p.private
    assert _code(p.check_auth, "TLS") == 503


def test_hash_algorithms_select_and_feat():
    assert hashing.select(" sha-256 ") == "SHA-256"
    assert hashing.select("md5") == "MD5"
    with pytest.raises(hashing.UnknownAlgorithm):
        hashing.select("CRC32")
    assert hashing.feat_line("SHA-256") == "HASH SHA-256*;SHA-1;MD5"
    assert hashing.feat_line("SHA-1") == "HASH SHA-256;SHA-1*;MD5"
    consumer = hashing.HashingConsumer("SHA-1")
    for chunk in (b"ab", b"", b"c" * 100_000):
        consumer.write(chunk)
    whole = b"ab" + b"c" * 100_000
    assert consumer.hexdigest() == hashlib.sha1(whole).hexdigest()
    assert consumer.length == len(whole)
    assert hashing.reply_text("SHA-1", 3, "ff", "a b") == "SHA-1 0-3 ff a b"


def test_an_implicit_ftps_factory_shares_the_limits_of_the_ftp_one():
    """Two ports of one front end: guesses and connections count once."""
    from twisted.internet.task import Clock

    from wsfront.ftp.factory import FTPFactory, FTPSettings

    clock = Clock()
    plain = FTPFactory(clock, None, None, FTPSettings(login_failures_per_address=2))
    implicit = FTPFactory(clock, None, None, FTPSettings(), share_limits_with=plain)
    plain.throttle.failed("alice", "192.0.2.1")
    implicit.throttle.failed("bob", "192.0.2.1")
    assert plain.throttle.retry_after("carol", "192.0.2.1") is not None
    assert implicit.connections is plain.connections


def test_tls_options_send_the_chain_and_share_one_context(tmp_path):
    """Intermediates after the certificate go out as the chain (as HTTPS
    does); one OpenSSL context serves every connection (session reuse)."""
    from OpenSSL import SSL

    from tests.tls_support import self_signed
    from wsfront.ftp.security import server_tls_options

    leaf, other = self_signed(tmp_path / "leaf"), self_signed(tmp_path / "other")
    pem = leaf.cert_path.read_bytes() + other.cert_path.read_bytes() + leaf.key_path.read_bytes()
    options = server_tls_options(pem)
    assert len(options.extraCertChain) == 1
    assert options.getContext() is options.getContext()
    assert options._options & SSL.OP_NO_TICKET == 0  # tickets on: sessions resume
