"""Who may see the status page and the feed: administrators only.

A request without credentials gets 401 with a Basic challenge (so a browser
asks for a login) even when the site lets anonymous users read files: the
anonymous account is never an administrator, and a 403 would leave the
browser no way to log in.  A logged-in user without the admin flag gets 403.
Where TLS is required, a plain-HTTP request gets the site's "TLS required"
403 instead of a challenge: a browser would answer it with the password in
clear.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, maybeDeferred

from wsfront.http.errors_map import HttpError
from wsfront.http.site import authenticate, challenge, tls_required


def require_admin(context, request) -> Deferred:
    """Fire with the administrator ``User`` of ``request``; 401 / 403 otherwise."""
    if request.getHeader(b"Authorization") is None:
        if context.settings.require_tls and not request.isSecure():
            return maybeDeferred(_raise, tls_required(context.settings, request))
        return maybeDeferred(
            _raise, HttpError(401, "administrators only: log in", challenge(context.settings))
        )

    def check(user):
        if not user.admin:
            raise HttpError(403, "administrators only")
        return user

    return maybeDeferred(authenticate, context, request).addCallback(check)


def _raise(error: Exception):
    raise error
