"""Content negotiation on the Accept header (RFC 9110 12.5.1).

A directory listing comes as HTML or JSON; which one is the client's
choice, weighed by q-values: ``application/json, text/html;q=0.1`` wants
JSON, ``text/html;q=0, */*`` anything but HTML.  Each offer gets the
quality of the most specific media range that matches it (``text/html``
before ``text/*`` before ``*/*``); a quality of 0 means "not acceptable".
The best quality wins; on a tie, the offer named exactly beats one only a
wildcard matched (``application/json, */*`` is a JSON client with a
fallback), then the server's order.  A header that accepts none of the
offers gets the first (the server's default), never a 406: a listing in
the default format is more use than no listing.  Malformed elements are
skipped (a bad q-value drops its element), and the whole header past
``MAX_HEADER_LENGTH`` or ``MAX_ELEMENTS``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_HEADER_LENGTH = 4096
"""An Accept header longer than this is ignored (the default is served)."""

MAX_ELEMENTS = 64
"""An Accept header with more media ranges than this is ignored."""

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_RANGE = re.compile(rf"({_TOKEN})/({_TOKEN})\Z")
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")


def parse_accept(header: str) -> list[tuple[str, str, float]]:
    """The media ranges of ``header``: (type, subtype, quality), lower-cased;
    malformed elements left out.  Media-type parameters (``charset=utf-8``)
    are skipped: the offers here have none a client would ask for."""
    if len(header) > MAX_HEADER_LENGTH:
        return []
    elements = header.split(",")
    if len(elements) > MAX_ELEMENTS:
        return []
    ranges = []
    for element in elements:
        parts = [p.strip(" \t") for p in element.split(";")]
        match = _RANGE.match(parts[0].lower())
        if match is None:
            continue
        kind, sub = match.groups()
        if kind == "*" and sub != "*":
            continue  # "*/json" is no media range
        quality: float | None = 1.0
        for param in parts[1:]:
            name, eq, value = param.partition("=")
            if name.strip(" \t").lower() == "q":
                value = value.strip(" \t")
                quality = float(value) if eq and _QVALUE.match(value) else None
                break  # what follows q is accept-ext, not the media type's
        if quality is not None:
            ranges.append((kind, sub, quality))
    return ranges


def choose(header: str | bytes | None, offers: Sequence[str]) -> str:
    """The offer (``type/subtype``) the Accept ``header`` prefers; the first
    offer when there is no header or it accepts none of them."""
    if header is None:
        return offers[0]
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    ranges = parse_accept(header)
    best, best_key = offers[0], (0.0, -1)
    for offer in offers:
        quality, specificity = _quality(offer.lower(), ranges)
        key = (quality, specificity)
        if quality > 0 and key > best_key:
            best, best_key = offer, key
    return best


def _quality(offer: str, ranges: list[tuple[str, str, float]]) -> tuple[float, int]:
    """``offer``'s quality from the most specific range that matches it (the
    highest of equally specific ones), and that specificity (0 for ``*/*``,
    1 for ``type/*``, 2 for the type itself); (0, -1) when none matches."""
    kind, _, sub = offer.partition("/")
    found = (0.0, -1)
    for rkind, rsub, quality in ranges:
        if rkind == "*":
            specificity = 0
        elif rkind != kind:
            continue
        elif rsub == "*":
            specificity = 1
        elif rsub == sub:
            specificity = 2
        else:
            continue
        if (specificity, quality) > (found[1], found[0]):
            found = (quality, specificity)
    return found
