"""What the ``wsfs`` CLI writes for a person to read, made safe to show:
names with their control characters escaped (a file or user name is
chosen by whoever uploads or is added, and ESC or BEL in it would drive
the operator's terminal), a catalog URL without its password (error
messages end up in terminals, scroll-back, tickets and CI logs).  ``--json``
output needs neither escape: JSON escapes control characters itself."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: C0 controls, DEL and C1 controls: what a terminal may act on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: str, newlines: bool = False) -> str:
    """``text`` with each control character shown as ``\\xNN`` (ESC as
    ``\\x1b``); with ``newlines``, line ends are kept (a whole message
    of several lines, whose names were escaped where they were put in)."""
    return (_CONTROL_BUT_NEWLINE if newlines else _CONTROL).sub(_escape, text)


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
