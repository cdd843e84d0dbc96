"""The cluster secret file and the HMAC proofs of the handshake."""

from __future__ import annotations

import os

import pytest

from wsstorage import auth


def test_missing_secret_file_is_created_private_and_then_reused(tmp_path) -> None:
    path = tmp_path / "secret"
    secret, created = auth.ensure_secret(path)
    assert created and len(secret) >= auth.MIN_SECRET_BYTES
    assert os.stat(path).st_mode & 0o777 == 0o600
    again, created_again = auth.ensure_secret(path)
    assert (again, created_again) == (secret, False)


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"", "is empty"), (b"  \n", "is empty"), (b"short\n", "shorter than")],
)
def test_unusable_secret_files_are_clear_errors(tmp_path, content, why) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(auth.SecretError, match=why):
        auth.ensure_secret(path)


def test_unreadable_secret_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(auth.SecretError, match="cannot read secret file"):
        auth.load_secret(tmp_path)  # a directory


def test_proofs_depend_on_direction_secret_and_both_nonces() -> None:
    cn, sn = auth.new_nonce(), auth.new_nonce()
    secret = b"s" * 32
    base = auth.client_proof(secret, cn, sn)
    assert base != auth.server_proof(secret, cn, sn)
    assert base != auth.client_proof(b"t" * 32, cn, sn)
    assert base != auth.client_proof(secret, auth.new_nonce(), sn)
    assert base != auth.client_proof(secret, cn, auth.new_nonce())
    assert auth.proofs_match(base, auth.client_proof(secret, cn, sn))
    assert not auth.proofs_match(base, None)


def test_nonces_are_fresh_and_validated() -> None:
    assert auth.new_nonce() != auth.new_nonce()
    assert auth.valid_nonce(auth.new_nonce())
    for bad in (None, 5, "ab", "zz" * auth.NONCE_BYTES, "a" * (2 * auth.NONCE_BYTES + 2)):
        assert not auth.valid_nonce(bad)
