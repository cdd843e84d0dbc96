"""The cluster secret and the mutual HMAC challenge-response of the handshake.

Both sides send a fresh random nonce; each proves knowledge of the secret by
an HMAC-SHA256 over both nonces, with a different label per direction so a
proof cannot be reflected back.  Because the server's nonce is new on every
connection, a captured client proof is useless on the next one (no replay);
because the client's nonce is new too, a fake server cannot replay a real
server's proof to a client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import secrets
from pathlib import Path
from typing import Any

NONCE_BYTES = 32
SECRET_BYTES = 32
MIN_SECRET_BYTES = 16
MAX_SECRET_FILE = 4096

CLIENT_LABEL = b"wsfs-storage-v1 client"
SERVER_LABEL = b"wsfs-storage-v1 server"


class SecretError(Exception):
    """The secret file is missing, unreadable, empty or too short."""


def new_nonce() -> str:
    """A fresh random nonce, hex-encoded for the JSON handshake frames."""
    return secrets.token_hex(NONCE_BYTES)


def proof(secret: bytes, label: bytes, client_nonce: str, server_nonce: str) -> str:
    """HMAC-SHA256(secret, label | client nonce | server nonce), hex."""
    msg = b"|".join([label, client_nonce.encode("ascii"), server_nonce.encode("ascii")])
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def client_proof(secret: bytes, client_nonce: str, server_nonce: str) -> str:
    return proof(secret, CLIENT_LABEL, client_nonce, server_nonce)


def server_proof(secret: bytes, client_nonce: str, server_nonce: str) -> str:
    return proof(secret, SERVER_LABEL, client_nonce, server_nonce)


def proofs_match(expected: str, given: object) -> bool:
    """Constant-time comparison that tolerates a non-string from the wire."""
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())


def valid_nonce(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 2 * NONCE_BYTES:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """Read the cluster secret; surrounding whitespace is ignored.

    Raises SecretError with a message an operator can act on.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_SECRET_FILE + 1)
    except OSError as e:
        raise SecretError(f"cannot read secret file {p}: {e.strerror or e}") from None
    if len(raw) > MAX_SECRET_FILE:
        raise SecretError(f"secret file {p} is larger than {MAX_SECRET_FILE} bytes")
    secret = raw.strip()
    if not secret:
        raise SecretError(f"secret file {p} is empty")
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(f"secret in {p} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


def ensure_secret(path: str | os.PathLike[str]) -> tuple[bytes, bool]:
    """Load the secret, creating the file (mode 0600) with a random one if absent.

    Returns ``(secret, created)`` so the caller can log the creation.
    """
    p = Path(path)
    created = False
    if not p.exists():
        value = base64.b64encode(secrets.token_bytes(SECRET_BYTES)) + b"\n"
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError as e:
            raise SecretError(f"cannot create secret file {p}: {e.strerror or e}") from None
        else:
            try:
                os.write(fd, value)
                os.fsync(fd)
            finally:
                os.close(fd)
            created = True
    return load_secret(p), created


class LogBudget:
    """At most ``lines`` log lines per ``interval`` seconds for one kind of
    event, so a client retrying with the wrong secret every second cannot
    flood the server's log; what was held back is counted and reported with
    the next line that is let through."""

    def __init__(self, clock: Any, lines: int = 5, interval: float = 60.0) -> None:
        self._clock = clock
        self.lines = lines
        self.interval = interval
        self._window_start = -math.inf
        self._used = 0
        self._held_back = 0

    def take(self) -> int | None:
        """None: do not log this one.  Else the number of events not logged
        since the last line (0 usually), for the caller to mention."""
        now = self._clock.seconds()
        if now >= self._window_start + self.interval:
            self._window_start = now
            self._used = 0
        if self._used >= self.lines:
            self._held_back += 1
            return None
        self._used += 1
        held, self._held_back = self._held_back, 0
        return held
