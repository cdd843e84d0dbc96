"""RFC 9110 conditional requests: If-Match, If-None-Match, If-*-Since, If-Range.

Resumed downloads must never splice two versions of a file (If-Range), and
PUT/DELETE honour If-Match / If-None-Match so two writers can't overwrite each
other unawares (DESIGN.md, Files).  ``evaluate`` applies the preconditions in
the order RFC 9110 section 13.2.2 gives and returns what the adapter does:

1. If-Match (strong comparison; ``*`` means "exists") else If-Unmodified-Since:
   false -> 412.
2. If-None-Match (weak comparison) else, for GET/HEAD, If-Modified-Since:
   false -> 304 for GET/HEAD, 412 for other methods.
3. For GET with Range, If-Range (strong ETag, or a date equal to
   Last-Modified): false -> send the whole representation, ignoring Range.

An unparseable If-Match fails (412: a writer must not proceed on a condition
it didn't get across); an unparseable If-None-Match is ignored on GET/HEAD
(serving the body is always safe) and fails on other methods.  Dates that
don't parse make their header ignored, as RFC 9110 requires.

HTTP dates here are integer POSIX seconds: HTTP carries whole seconds, so
last-modified times (floats from the catalog) are truncated before comparing.
"""

from __future__ import annotations

import calendar
import enum
import re
import time
from collections.abc import Mapping

from attrs import frozen


class Verdict(enum.Enum):
    """What a request's preconditions allow."""

    PROCEED = "proceed"
    """Perform the method; honour Range if there is one."""
    IGNORE_RANGE = "ignore-range"
    """Perform the method but send the whole representation (If-Range failed)."""
    NOT_MODIFIED = 304
    PRECONDITION_FAILED = 412


# -- entity tags ---------------------------------------------------------------


@frozen
class EntityTag:
    """An entity-tag: ``opaque`` is the text between the quotes."""

    opaque: str
    weak: bool = False

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'


_ETAG = re.compile(r'[ \t]*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*')


class ETagSyntaxError(ValueError):
    """An entity-tag list that doesn't follow RFC 9110 8.8.3."""


def parse_etag(value: str) -> EntityTag:
    """One entity-tag (``"abc"`` or ``W/"abc"``), e.g. the current ETag or If-Range."""
    match = _ETAG.fullmatch(value)
    if match is None:
        raise ETagSyntaxError(f"not an entity-tag: {value[:80]!r}")
    return EntityTag(match.group(2), weak=match.group(1) is not None)


def parse_etag_list(value: str) -> list[EntityTag] | None:
    """The tags of an If-Match / If-None-Match value; None means ``*``.

    Raises ``ETagSyntaxError`` when the value is neither ``*`` nor a comma
    separated list of entity-tags (empty elements allowed).
    """
    if value.strip(" \t") == "*":
        return None
    tags = []
    pos = 0
    while pos < len(value):
        if value[pos] in " \t,":
            pos += 1
            continue
        match = _ETAG.match(value, pos)
        if match is None:
            raise ETagSyntaxError(f"bad entity-tag list: {value[:80]!r}")
        tags.append(EntityTag(match.group(2), weak=match.group(1) is not None))
        pos = match.end()
        if pos < len(value) and value[pos] != ",":
            raise ETagSyntaxError(f"bad entity-tag list: {value[:80]!r}")
    if not tags:
        raise ETagSyntaxError("empty entity-tag list")
    return tags


def strong_match(a: EntityTag, b: EntityTag) -> bool:
    """Strong comparison: both strong and the same opaque tag."""
    return not a.weak and not b.weak and a.opaque == b.opaque


def weak_match(a: EntityTag, b: EntityTag) -> bool:
    """Weak comparison: the same opaque tag, weakness ignored."""
    return a.opaque == b.opaque


def _as_tag(etag: str | EntityTag) -> EntityTag:
    if isinstance(etag, EntityTag):
        return etag
    if etag.startswith(('"', "W/")):
        return parse_etag(etag)
    return EntityTag(etag)


# -- HTTP dates ----------------------------------------------------------------

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_MONTH = "(" + "|".join(_MONTHS) + ")"
_IMF_FIXDATE = re.compile(
    r"(?:" + "|".join(_DAYS) + r"), ([0-9]{2}) " + _MONTH + r" ([0-9]{4}) " + _TIME + r" GMT"
)
_RFC850 = re.compile(
    r"(?:" + "|".join(_LONG_DAYS) + r"), ([0-9]{2})-" + _MONTH + r"-([0-9]{2}) " + _TIME + " GMT"
)
_ASCTIME = re.compile(
    r"(?:" + "|".join(_DAYS) + r") " + _MONTH + r" ([0-9 ][0-9]) " + _TIME + r" ([0-9]{4})"
)


def _epoch(year: int, month: int, day: int, hh: int, mm: int, ss: int) -> int | None:
    if not (year >= 1 and 1 <= month <= 12 and hh <= 23 and mm <= 59 and ss <= 60):
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return calendar.timegm((year, month, day, hh, mm, min(ss, 59), 0, 0, 0))


def parse_http_date(value: str | bytes, *, now: float | None = None) -> int | None:
    """POSIX seconds of an HTTP-date in any of its three formats, or None.

    IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), RFC 850
    (``Sunday, 06-Nov-94 08:49:37 GMT``, its two-digit year read as the most
    recent past year that isn't more than 50 years ahead of ``now``) and
    asctime (``Sun Nov  6 08:49:37 1994``).  Formats are matched exactly,
    case included (RFC 9110 5.6.7); the weekday name is not checked.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip(" \t")
    if m := _IMF_FIXDATE.fullmatch(text):
        day, month, year = int(m.group(1)), _MONTHS.index(m.group(2)) + 1, int(m.group(3))
        hms = m.group(4, 5, 6)
    elif m := _RFC850.fullmatch(text):
        day, month, yy = int(m.group(1)), _MONTHS.index(m.group(2)) + 1, int(m.group(3))
        current = time.gmtime(time.time() if now is None else now).tm_year
        year = current - current % 100 + yy
        if year > current + 50:
            year -= 100
        hms = m.group(4, 5, 6)
    elif m := _ASCTIME.fullmatch(text):
        month, day, year = _MONTHS.index(m.group(1)) + 1, int(m.group(2)), int(m.group(6))
        hms = m.group(3, 4, 5)
    else:
        return None
    hh, mm, ss = (int(x) for x in hms)
    return _epoch(year, month, day, hh, mm, ss)


def format_http_date(seconds: float) -> str:
    """The IMF-fixdate of POSIX ``seconds`` (truncated), for Last-Modified and Date."""
    t = time.gmtime(int(seconds))
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


# -- evaluation ----------------------------------------------------------------


def _header(headers: Mapping[str, str | bytes], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


def _if_match(value: str, current: EntityTag | None) -> bool:
    try:
        tags = parse_etag_list(value)
    except ETagSyntaxError:
        return False
    if current is None:
        return False
    return tags is None or any(strong_match(t, current) for t in tags)


def _if_none_match(value: str, current: EntityTag | None) -> bool | None:
    try:
        tags = parse_etag_list(value)
    except ETagSyntaxError:
        return None
    if current is None:
        return True
    return tags is not None and not any(weak_match(t, current) for t in tags)


def _if_range(value: str, current: EntityTag | None, modified: int | None) -> bool:
    if current is None:
        return False
    if value.lstrip(" \t").startswith(('"', "W/")):
        try:
            return strong_match(parse_etag(value), current)
        except ETagSyntaxError:
            return False
    date = parse_http_date(value)
    return date is not None and modified is not None and date == modified


def evaluate(
    method: str,
    headers: Mapping[str, str | bytes],
    etag: str | EntityTag | None,
    last_modified: float | None,
) -> Verdict:
    """Evaluate a request's preconditions against the target's current state.

    ``headers`` maps header names (any case) to values; repeated fields must
    be joined with ``", "`` first.  ``etag`` is the current representation's
    entity-tag (``'"abc"'``, ``'W/"abc"'``, a bare opaque string read as
    strong, or an ``EntityTag``), or None when the target does not exist.
    ``last_modified`` is POSIX seconds, None if unknown or absent.

    Preconditions are ignored when the answer would be an error anyway
    (RFC 9110 13.2.1): GET/HEAD on no resource gives ``PROCEED`` so the
    adapter answers 404; for other methods that need an existing target
    (DELETE, MOVE), answer 404 before calling this.
    """
    current = None if etag is None else _as_tag(etag)
    modified = None if last_modified is None or current is None else int(last_modified)
    safe = method in ("GET", "HEAD")
    if safe and current is None:
        # The answer is a 404 whatever the conditions say (RFC 9110 13.2.1).
        return Verdict.PROCEED

    if_match = _header(headers, "if-match")
    if if_match is not None:
        if not _if_match(if_match, current):
            return Verdict.PRECONDITION_FAILED
    else:
        since = _header(headers, "if-unmodified-since")
        date = None if since is None else parse_http_date(since)
        if date is not None and modified is not None and modified > date:
            return Verdict.PRECONDITION_FAILED

    if_none_match = _header(headers, "if-none-match")
    if if_none_match is not None:
        result = _if_none_match(if_none_match, current)
        if result is None and not safe:
            return Verdict.PRECONDITION_FAILED
        if result is False:
            return Verdict.NOT_MODIFIED if safe else Verdict.PRECONDITION_FAILED
    elif safe:
        since = _header(headers, "if-modified-since")
        date = None if since is None else parse_http_date(since)
        if date is not None and modified is not None and modified <= date:
            return Verdict.NOT_MODIFIED

    if method == "GET" and _header(headers, "range") is not None:
        if_range = _header(headers, "if-range")
        if if_range is not None and not _if_range(if_range, current, modified):
            return Verdict.IGNORE_RANGE
    return Verdict.PROCEED
