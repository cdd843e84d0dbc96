"""RFC 9110 byte ranges: the Range request header, Content-Range, multipart/byteranges.

Downloads resume (curl ``-C -``, wget ``-c``) and split (aria2c) through
Range, and resumable PUT says where its body goes with Content-Range.  The
rules here are pure, so the HTTP adapter only maps results to statuses:

- ``evaluate_range(header, size)`` gives ``WholeBody`` (answer 200: no Range,
  a malformed one, another unit, or too many ranges), ``Partial`` (206, one
  or more coalesced ranges) or ``NotSatisfiable`` (416 with
  ``Content-Range: bytes */size``).
- A suffix range larger than the file means the whole file, never an error
  (twisted.web's static.File answers ``bytes=-20`` on 10 bytes with a 500).
- An empty file can satisfy no byte range.  ``bytes=-N`` on it gets
  ``WholeBody`` (RFC 9110 14.1.1 calls it satisfiable, yet a 206 cannot
  describe zero bytes), every other range 416.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

from attrs import field, frozen

MAX_RANGES = 64
"""More ranges than this in one header and the header is ignored (RFC 9110
14.2 lets a server ignore abusive range sets); cheap to check before any
arithmetic, so ``bytes=0-0,0-0,...`` costs nothing."""

MAX_HEADER_LENGTH = 8192
"""A Range header longer than this is ignored rather than parsed."""

_DIGITS = re.compile(r"[0-9]{1,40}\Z")
_OWS = " \t"


@frozen
class ByteRange:
    """Bytes ``first`` to ``last`` inclusive, as Content-Range counts them."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        """The Content-Range value of this range of a ``size``-byte representation."""
        return format_content_range(self.first, self.last, size)


@frozen
class RangeSpec:
    """One range-spec as the client wrote it, before the size is known.

    ``first`` and ``last`` for ``bytes=first-last`` (``last`` None when open);
    ``suffix`` alone for ``bytes=-suffix``.
    """

    first: int | None = None
    last: int | None = None
    suffix: int | None = None

    def resolve(self, size: int) -> ByteRange | None:
        """The bytes this spec selects in ``size`` bytes, or None if none."""
        if self.suffix is not None:
            if self.suffix == 0 or size == 0:
                return None
            return ByteRange(max(0, size - self.suffix), size - 1)
        assert self.first is not None
        if self.first >= size:
            return None
        last = size - 1 if self.last is None else min(self.last, size - 1)
        return ByteRange(self.first, last)


@frozen
class WholeBody:
    """Send the whole representation with 200 (Range absent or ignored)."""


@frozen
class Partial:
    """Send 206 with these ranges: one as a plain body, several as multipart."""

    ranges: tuple[ByteRange, ...] = field(converter=tuple)

    @property
    def is_multipart(self) -> bool:
        return len(self.ranges) > 1


@frozen
class NotSatisfiable:
    """Send 416 with ``Content-Range: bytes */size``."""

    size: int

    @property
    def content_range(self) -> str:
        return format_unsatisfied_range(self.size)


RangeOutcome = WholeBody | Partial | NotSatisfiable


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _int(text: str) -> int | None:
    return int(text) if _DIGITS.match(text) else None


def parse_range_header(
    header: str | bytes | None, *, max_ranges: int = MAX_RANGES
) -> list[RangeSpec] | None:
    """The range-specs of a Range header, or None when it must be ignored.

    Ignored means: absent, too long, a unit other than ``bytes``, any
    malformed spec (``5-2``, ``-``, ``a-b``, signs), no spec at all, or more
    than ``max_ranges`` specs.  Empty list elements are skipped (RFC 9110
    5.6.1).
    """
    if header is None:
        return None
    text = _text(header)
    if len(text) > MAX_HEADER_LENGTH:
        return None
    unit, eq, rest = text.strip(_OWS).partition("=")
    if not eq or unit.strip(_OWS).lower() != "bytes":
        return None
    elements = [e.strip(_OWS) for e in rest.split(",")]
    elements = [e for e in elements if e]
    if not elements or len(elements) > max_ranges:
        return None
    specs = []
    for element in elements:
        first_text, dash, last_text = element.partition("-")
        if not dash:
            return None
        if first_text == "":
            suffix = _int(last_text)
            if suffix is None:
                return None
            specs.append(RangeSpec(suffix=suffix))
            continue
        first = _int(first_text)
        if first is None:
            return None
        if last_text == "":
            specs.append(RangeSpec(first=first))
            continue
        last = _int(last_text)
        if last is None or last < first:
            return None
        specs.append(RangeSpec(first=first, last=last))
    return specs


def coalesce(ranges: list[ByteRange]) -> tuple[ByteRange, ...]:
    """Sort ``ranges`` and merge those that overlap or touch.

    A client asking for ``0-9,5-14,15-20`` gets one part ``0-20``: fewer
    parts, no byte sent twice (RFC 9110 14.2 allows it).
    """
    merged: list[ByteRange] = []
    for r in sorted(ranges, key=lambda r: r.first):
        if merged and r.first <= merged[-1].last + 1:
            if r.last > merged[-1].last:
                merged[-1] = ByteRange(merged[-1].first, r.last)
        else:
            merged.append(r)
    return tuple(merged)


def evaluate_range(
    header: str | bytes | None, size: int, *, max_ranges: int = MAX_RANGES
) -> RangeOutcome:
    """What to send for a GET with this Range header on ``size`` bytes.

    Call it only when the preconditions allow a range (see
    ``wsfront.http.conditional``: a failed If-Range means ``WholeBody``).
    """
    if size < 0:
        raise ValueError(f"negative size {size}")
    specs = parse_range_header(header, max_ranges=max_ranges)
    if specs is None:
        return WholeBody()
    if size == 0 and any(s.suffix for s in specs):
        return WholeBody()
    satisfiable = [r for r in (s.resolve(size) for s in specs) if r is not None]
    if not satisfiable:
        return NotSatisfiable(size)
    return Partial(coalesce(satisfiable))


def format_content_range(first: int, last: int, size: int | None) -> str:
    """``bytes first-last/size`` (``/*`` when the size is unknown)."""
    if not 0 <= first <= last or (size is not None and last >= size):
        raise ValueError(f"bad range {first}-{last}/{size}")
    return f"bytes {first}-{last}/{'*' if size is None else size}"


def format_unsatisfied_range(size: int) -> str:
    """``bytes */size``, the Content-Range of a 416 answer."""
    return f"bytes */{size}"


# -- multipart/byteranges ------------------------------------------------------


def new_boundary() -> str:
    """A random multipart boundary: it must not occur in the body, and 32 random
    hex digits make that a matter of chance no file can arrange."""
    return "wsfs-" + secrets.token_hex(16)


@frozen
class MultipartByteranges:
    """A multipart/byteranges body laid out in advance, to be streamed.

    ``parts()`` yields each part's header bytes with the range whose data
    follows it; after the last part comes ``epilogue()``.  The total length
    is known before a byte is sent (``content_length``), so the response
    carries Content-Length and the ranges stream straight from storage.
    """

    ranges: tuple[ByteRange, ...] = field(converter=tuple)
    size: int
    content_type: str = "application/octet-stream"
    boundary: str = field(factory=new_boundary)

    @property
    def content_type_header(self) -> str:
        """The response's Content-Type header value."""
        return f"multipart/byteranges; boundary={self.boundary}"

    def part_header(self, index: int) -> bytes:
        """The bytes that precede the data of part ``index``."""
        r = self.ranges[index]
        lead = "" if index == 0 else "\r\n"
        return (
            f"{lead}--{self.boundary}\r\n"
            f"Content-Type: {self.content_type}\r\n"
            f"Content-Range: {r.content_range(self.size)}\r\n\r\n"
        ).encode("latin-1")

    def parts(self) -> Iterator[tuple[bytes, ByteRange]]:
        """(header bytes, range) for each part, in order."""
        for index, r in enumerate(self.ranges):
            yield self.part_header(index), r

    def epilogue(self) -> bytes:
        """The closing delimiter, sent after the last part's data."""
        return f"\r\n--{self.boundary}--\r\n".encode("latin-1")

    @property
    def content_length(self) -> int:
        """The exact length of the whole body, headers and data."""
        headers = sum(len(self.part_header(i)) for i in range(len(self.ranges)))
        data = sum(r.length for r in self.ranges)
        return headers + data + len(self.epilogue())


# -- Content-Range on requests (resumable PUT) ---------------------------------


class ContentRangeError(ValueError):
    """A request's Content-Range cannot be used; the message says why (HTTP 400/416)."""


@frozen
class RequestContentRange:
    """Where a PUT body goes: bytes ``first``..``last`` of a ``total``-byte file.

    ``total`` is None for ``bytes a-b/*`` (the client doesn't know it yet).
    """

    first: int
    last: int
    total: int | None

    @property
    def length(self) -> int:
        """How many body bytes the request must carry."""
        return self.last - self.first + 1


_CONTENT_RANGE = re.compile(r"bytes[ ]+([0-9]{1,40})-([0-9]{1,40})/([0-9]{1,40}|\*)\Z", re.I)

MAX_POSITION = (1 << 63) - 1
"""The largest byte position or total a request's Content-Range may name:
the catalog stores sizes and offsets as signed 64-bit integers (SQLite
INTEGER, PostgreSQL BIGINT), so a larger one must be refused here (400),
not fail as it is stored (a 500)."""


def parse_content_range(value: str | bytes) -> RequestContentRange:
    """Parse a request's ``Content-Range: bytes first-last/total`` (or ``/*``).

    Raises ``ContentRangeError`` for other units, ``bytes */total`` (that
    form only describes a 416 answer), ``last < first``, a range that
    ends at or beyond ``total``, or a number above ``MAX_POSITION``.
    """
    text = _text(value).strip(_OWS)
    if text.lower().startswith("bytes") and text[5:].lstrip(" ").startswith("*"):
        raise ContentRangeError("Content-Range 'bytes */total' names no bytes to write")
    match = _CONTENT_RANGE.match(text)
    if match is None:
        raise ContentRangeError(
            f"Content-Range must be 'bytes first-last/total' or 'bytes first-last/*', "
            f"not {text[:80]!r}"
        )
    first, last = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if max(first, last, total or 0) > MAX_POSITION:
        raise ContentRangeError(f"Content-Range names a position beyond {MAX_POSITION}")
    if last < first:
        raise ContentRangeError(f"Content-Range ends ({last}) before it starts ({first})")
    if total is not None and last >= total:
        raise ContentRangeError(f"Content-Range ends at {last}, beyond the total {total}")
    return RequestContentRange(first, last, total)
