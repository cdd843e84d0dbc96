"""Words for why a storage connection ended, TLS failures included.

With TLS endpoints (docs/wire-protocol.md, "TLS") a wrong CA, a plain-TCP
peer on a TLS port or a TLS version below 1.2 all end the connection before
the wsstorage handshake with an ``OpenSSL.SSL.Error`` whose text is a list
of tuples.  Both ends log or report it; this turns it into one line an
operator can act on ("certificate verify failed").
"""

from __future__ import annotations

from twisted.python.failure import Failure

try:
    from OpenSSL.SSL import Error as _TLSError
except ImportError:  # pragma: no cover - Twisted[tls] is a dependency
    _TLSError = None


def describe_loss(reason: Failure) -> str:
    """Why a connection ended: ``TLS error: ...`` with OpenSSL's reasons,
    else the failure's own message."""
    value = reason.value
    if _TLSError is not None and isinstance(value, _TLSError):
        parts = value.args[0] if value.args and isinstance(value.args[0], list) else []
        reasons = [str(p[-1]) for p in parts if isinstance(p, tuple) and p and p[-1]]
        return "TLS error: " + ("; ".join(reasons) or str(value))
    return reason.getErrorMessage()
