"""Fuzz HTTP Range / Content-Range handling, preconditions and HTTP dates.

Invariants: ``evaluate_range`` never raises for a size >= 0 and a 206 lists
at most ``MAX_RANGES`` sorted, disjoint, non-touching ranges inside the
file, whose multipart body is exactly ``content_length`` bytes;
``parse_content_range`` raises only ``ContentRangeError``;
``conditional.evaluate`` and ``parse_http_date`` never raise.
"""

from __future__ import annotations

import sys

import _harness
import atheris

HEADERS = ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range")


def test_one_input(data: bytes) -> None:
    from wsfront.http import conditional, ranges

    fdp = atheris.FuzzedDataProvider(data)
    size = fdp.ConsumeIntInRange(0, 2**40)
    method = fdp.PickValueInList(["GET", "HEAD", "PUT", "DELETE"])
    etag = fdp.PickValueInList([None, '"abc"', 'W/"abc"', "bare"])
    modified = fdp.PickValueInList([None, 0.0, 784111777.0, 1.7e9])
    headers = {name: fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)) for name in HEADERS}
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    headers["Range"] = raw

    outcome = ranges.evaluate_range(raw, size)
    if isinstance(outcome, ranges.Partial):
        assert 1 <= len(outcome.ranges) <= ranges.MAX_RANGES
        previous = None
        for r in outcome.ranges:
            assert 0 <= r.first <= r.last < size
            r.content_range(size)
            if previous is not None:
                assert r.first > previous.last + 1
            previous = r
        if len(outcome.ranges) > 1:
            body = ranges.MultipartByteranges(outcome.ranges, size)
            parts = sum(len(h) + r.length for h, r in body.parts())
            assert parts + len(body.epilogue()) == body.content_length
    else:
        assert isinstance(outcome, ranges.WholeBody | ranges.NotSatisfiable)

    try:
        cr = ranges.parse_content_range(raw)
    except ranges.ContentRangeError:
        pass
    else:
        assert 0 <= cr.first <= cr.last and (cr.total is None or cr.last < cr.total)

    verdict = conditional.evaluate(method, headers, etag, modified)
    assert isinstance(verdict, conditional.Verdict)
    date = conditional.parse_http_date(raw)
    assert date is None or isinstance(date, int)


if __name__ == "__main__":
    _harness.run(test_one_input, ("wsfront.http.ranges", "wsfront.http.conditional"))
    sys.exit(0)
