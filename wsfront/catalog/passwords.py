"""Password hashing with scrypt (hashlib), per-user salt, parameters kept
with the hash so they can be raised later without breaking old accounts.

Format: ``scrypt$N$r$p$salt_hex$hash_hex``.
"""

from __future__ import annotations

import hashlib
import hmac
import os

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
DKLEN = 32
SALT_BYTES = 16


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=DKLEN, maxmem=256 * 1024 * 1024
    )


def hash_password(password: str) -> str:
    """A new hash with a fresh random salt."""
    salt = os.urandom(SALT_BYTES)
    digest = _derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = _derive(password, bytes.fromhex(salt), int(n), int(r), int(p))
        return hmac.compare_digest(computed, bytes.fromhex(digest))
    except (ValueError, TypeError):
        return False


_DUMMY: list[str] = []


def dummy_hash() -> str:
    """A hash to verify against for unknown users, so that answering "no such
    user" costs the same scrypt work as "wrong password"."""
    if not _DUMMY:
        _DUMMY.append(hash_password(os.urandom(16).hex()))
    return _DUMMY[0]
