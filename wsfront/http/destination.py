"""The Destination header of a MOVE (RFC 4918, 10.3): which user path it names.

A Destination is an absolute URI or an absolute path.  One that names
another server (another scheme, host or port than the request's own) is not
ours to move to: 502 Bad Gateway, as RFC 4918 (9.9.4) says, rather than a
local move the client never asked for.  The query and the fragment are not
part of the path (``/a#b`` names ``/a``), so neither becomes part of a file
name.  The request's own authority is the one it was sent to: the
absolute-form target's, else the Host header's, else the listening socket's.
"""

from __future__ import annotations

from urllib.parse import SplitResultBytes, urlsplit

from wsfront import paths
from wsfront.http.errors_map import HttpError, http_error
from wsfront.http.request import StreamingRequest
from wsfront.netaddr import canonical_ip

DEFAULT_PORTS = {b"http": 80, b"https": 443}


def destination(request: StreamingRequest) -> paths.HttpTarget:
    """The user path the request's Destination header names.

    400 for a missing or malformed header or a path under ``/-/``; 502 for
    a URI on another server.
    """
    header = request.getHeader(b"Destination")
    if not header:
        raise HttpError(400, "MOVE needs a Destination header")
    if any(b < 0x20 or b == 0x7F for b in header):
        # urlsplit would silently drop a tab, turning "a\tb" into "ab".
        raise HttpError(400, "the Destination header is not a URL")
    try:
        split = urlsplit(header)
        port = split.port
    except ValueError:  # a broken IPv6 host, a non-ASCII byte, a bad port
        raise HttpError(400, "the Destination header is not a URL") from None
    if split.scheme or split.netloc:
        _check_same_server(request, split, port)
    raw = split.path
    if not raw.startswith(b"/") or raw == b"/-" or raw.startswith(b"/-/"):
        raise HttpError(400, "the Destination must be a user path on this server")
    return paths.resolve_http(raw)


def destination_error(error: BaseException, dest: paths.HttpTarget) -> HttpError:
    """The answer to an error about the destination (a component of its path
    that is a file, a name the policy refuses): ``errors_map``'s, naming the
    destination's path instead of the request's (the source)."""
    raw = paths.to_url_path(dest.path, directory=dest.trailing_slash)
    return http_error(error, raw.encode("ascii"))


def _check_same_server(
    request: StreamingRequest, split: SplitResultBytes, port: int | None
) -> None:
    """502 unless ``split`` (with a scheme or an authority) is on this server."""
    own_scheme = b"https" if request.isSecure() else b"http"
    scheme = split.scheme.lower() or own_scheme
    if scheme != own_scheme:
        raise HttpError(502, "the Destination is on another server (scheme)")
    if not split.netloc:
        raise HttpError(400, "the Destination header is not a URL")
    wanted = (_host(split.hostname or b""), port or DEFAULT_PORTS[scheme])
    own = own_authority(request, own_scheme)
    if own is None or wanted != (_host(own[0]), own[1]):
        raise HttpError(502, "the Destination is on another server")


def _host(host: bytes) -> bytes:
    """A host as compared: an IP literal in its one canonical form
    (``netaddr.canonical_ip``), a name as given."""
    try:
        return str(canonical_ip(host.decode("ascii"))).encode("ascii")
    except (UnicodeDecodeError, ValueError):
        return host


def own_authority(request: StreamingRequest, scheme: bytes) -> tuple[bytes, int] | None:
    """The (host, port) the request was sent to, lowercase; None if unknown."""
    target = request.uri
    if target[:8].lower().startswith((b"http://", b"https://")):
        authority = urlsplit(target).netloc
    else:
        authority = request.getHeader(b"Host") or b""
    if authority:
        try:
            split = urlsplit(b"//" + authority)
            return (split.hostname or b"", split.port or DEFAULT_PORTS[scheme])
        except ValueError:
            return None
    local = request.getHost()
    host = getattr(local, "host", None)
    if host is None:
        return None
    return (host.lower().encode("ascii", "replace"), local.port)
