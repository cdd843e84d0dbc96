"""Text for one line of a log, a reply or a status table."""

from __future__ import annotations


def one_line(text: str, limit: int | None = None, *, controls: bool = False) -> str:
    """``text`` on one line: each run of white space (line breaks included)
    becomes one space, none left at either end.  With ``controls``, every
    other character that is not printable (an escape, a C1 control) counts
    as white space too: for text someone else wrote.  Longer than ``limit``
    characters, it is cut to ``limit`` ending in ``...``."""
    if controls:
        text = "".join(c if c.isprintable() else " " for c in text)
    flat = " ".join(text.split())
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 3] + "..."
    return flat
