"""Catalog URLs made safe to show: the password masked.  Neutral ground
(stdlib only) for the CLI's messages (``cli_output``), the catalog's
(``catalog.opening``) and the front end's options (``config``)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: What a password is shown as.
MASK = "***"


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: the one in
    ``user:password@host`` and a ``password=`` query parameter
    (``postgresql://host/db?password=...``).  A URL that does not parse is
    shown as ``***`` whole rather than risk echoing a secret."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key == "password" for key, _ in pairs):
        query = urlencode(
            [(k, MASK if k == "password" else v) for k, v in pairs], safe="*", doseq=False
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing to hide (and ``sqlite:////path`` kept as typed)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
