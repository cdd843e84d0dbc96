"""CSRF tokens for the status page's admin actions.

The page authenticates with Basic credentials, which a browser attaches to
any request for the origin, including a form another site posts.  An admin
action therefore also needs a token the attacker cannot know: an HMAC of the
user name under a secret this front end draws at start.  The page reads it
from the JSON feed (same-origin only) and sends it back in a request header,
which a cross-site form cannot set either.
"""

from __future__ import annotations

import hashlib
import hmac
import os


class CsrfTokens:
    """Issue and check per-user tokens (valid until the front end restarts)."""

    HEADER = b"X-CSRF-Token"

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or os.urandom(32)

    def token(self, user_name: str) -> str:
        return hmac.new(self._secret, user_name.encode("utf-8"), hashlib.sha256).hexdigest()

    def valid(self, user_name: str, token: bytes | str | None) -> bool:
        if not token:
            return False
        if isinstance(token, bytes):
            token = token.decode("latin-1")
        return hmac.compare_digest(self.token(user_name), token)
