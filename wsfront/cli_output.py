"""What the ``wsfs`` CLI writes for a person to read, made safe to show:
a catalog URL without its password (error messages end up in terminals,
scroll-back, tickets and CI logs)."""

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


def without_password(text: str, url: str) -> str:
    """``text`` with every occurrence of ``url`` masked: the net under all
    the CLI's messages, whichever way one came to quote the URL."""
    shown = masked_url(url)
    return text if shown == url else text.replace(url, shown)
