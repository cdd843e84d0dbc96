"""What the ``wsfs`` CLI writes for a person to read, made safe to show:
names with their control characters escaped (a file or user name is
chosen by whoever uploads or is added, and ESC or BEL in it would drive
the operator's terminal; a bidirectional override or a line separator
would make a name read as another, or end a line where none is), a
catalog URL without its password (error messages end up in terminals,
scroll-back, tickets and CI logs).  ``--json`` output needs neither
escape: JSON escapes control characters itself."""

from __future__ import annotations

import re

from wsfront.urls import MASK, masked_url

__all__ = ["MASK", "masked_url", "printable", "without_password"]

#: C0 controls, DEL and C1 controls: what a terminal may act on.  Then
#: the marks and overrides of bidirectional text (LRM, RLM, ALM, the
#: embeddings, overrides and isolates: "evil\u202etxt.exe" reads as
#: "evilexe.txt"), and the line and paragraph separators some terminals
#: and most log viewers break lines at.
_SHOWN_ESCAPED = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
_CONTROL = re.compile(f"[\x00-\x1f\x7f-\x9f{_SHOWN_ESCAPED}]")
_CONTROL_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f\x7f-\x9f{_SHOWN_ESCAPED}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, newlines: bool = False) -> str:
    """``text`` with each control character shown as ``\\xNN`` (ESC as
    ``\\x1b``), each bidirectional control or line separator as
    ``\\uNNNN`` (RLO as ``\\u202e``); with ``newlines``, line ends are
    kept (a whole message of several lines, whose names were escaped where
    they were put in)."""
    return (_CONTROL_BUT_NEWLINE if newlines else _CONTROL).sub(_escape, text)


def without_password(text: str, url: str) -> str:
    """``text`` with every occurrence of ``url`` masked, as typed or as
    ``repr`` escapes it (a ``\\`` or quote in the password): the net under
    all the CLI's messages, whichever way one came to quote the URL."""
    shown = masked_url(url)
    if shown == url:
        return text
    text = text.replace(url, shown)
    return text.replace(repr(url)[1:-1], repr(shown)[1:-1])
