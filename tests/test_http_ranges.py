"""Range requests resolve as RFC 9110 says, and multipart bodies stream exactly."""

import email.parser
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsfront.http.ranges import (
    MAX_RANGES,
    ByteRange,
    ContentRangeError,
    MultipartByteranges,
    NotSatisfiable,
    Partial,
    RangeSpec,
    RequestContentRange,
    WholeBody,
    coalesce,
    evaluate_range,
    format_content_range,
    format_unsatisfied_range,
    new_boundary,
    parse_content_range,
    parse_range_header,
)


def partial(*pairs):
    return Partial(tuple(ByteRange(a, b) for a, b in pairs))


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, partial((0, 9))),
        ("bytes=10-", 100, partial((10, 99))),
        ("bytes=-10", 100, partial((90, 99))),
        ("bytes=-20", 10, partial((0, 9))),
        ("bytes=0-999", 100, partial((0, 99))),
        ("bytes=99-99", 100, partial((99, 99))),
        ("BYTES = 0-0", 100, partial((0, 0))),
        (b"bytes=5-6", 100, partial((5, 6))),
        ("bytes=0-1, 5-6", 100, partial((0, 1), (5, 6))),
        ("bytes=5-6,0-1", 100, partial((0, 1), (5, 6))),
        ("bytes=0-9,5-14,15-20", 100, partial((0, 20))),
        ("bytes=0-1,,3-4", 100, partial((0, 1), (3, 4))),
        ("bytes=200-300,0-0", 100, partial((0, 0))),
        ("bytes=0-0,-1", 1, partial((0, 0))),
    ],
)
def test_satisfiable_ranges_give_partial_content(header, size, expected):
    assert evaluate_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),
        ("bytes=100-200", 100),
        ("bytes=-0", 100),
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
        ("bytes=10-20,200-", 10),
    ],
)
def test_unsatisfiable_ranges_give_416_with_the_size(header, size):
    outcome = evaluate_range(header, size)
    assert outcome == NotSatisfiable(size)
    assert outcome.content_range == f"bytes */{size}"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes=-",
        "bytes=5-2",
        "bytes=a-b",
        "bytes=+1-2",
        "bytes=1--2",
        "bytes=0-1;2-3",
        "bytes=0-1,x",
        "bytes=0x10-",
        "items=0-1",
        "0-1",
        "bytes=" + "1" * 41 + "-",
        "bytes=" + ",".join(["0-0"] * (MAX_RANGES + 1)),
        "bytes=0-1" + " " * 9000,
        "bytes=\u0661-\u0662",
    ],
)
def test_malformed_or_abusive_ranges_are_ignored(header):
    assert evaluate_range(header, 100) == WholeBody()


def test_suffix_range_on_an_empty_file_sends_the_empty_whole_body():
    assert evaluate_range("bytes=-5", 0) == WholeBody()


def test_range_cap_is_configurable():
    assert evaluate_range("bytes=0-0,2-2,4-4", 10, max_ranges=2) == WholeBody()
    assert evaluate_range("bytes=0-0,2-2", 10, max_ranges=2).is_multipart


def test_parse_keeps_the_specs_unresolved():
    assert parse_range_header("bytes=1-2,3-,-4") == [
        RangeSpec(first=1, last=2),
        RangeSpec(first=3),
        RangeSpec(suffix=4),
    ]


def test_negative_size_is_a_programming_error():
    with pytest.raises(ValueError):
        evaluate_range("bytes=0-1", -1)


def test_content_range_formatting():
    assert format_content_range(0, 9, 100) == "bytes 0-9/100"
    assert format_content_range(0, 9, None) == "bytes 0-9/*"
    assert ByteRange(5, 5).content_range(6) == "bytes 5-5/6"
    assert format_unsatisfied_range(0) == "bytes */0"
    for bad in ((5, 4, 10), (0, 10, 10), (-1, 2, 10)):
        with pytest.raises(ValueError):
            format_content_range(*bad)


# -- multipart -----------------------------------------------------------------


def multipart_body(mp: MultipartByteranges, data: bytes) -> bytes:
    out = b""
    for header, r in mp.parts():
        out += header + data[r.first : r.last + 1]
    return out + mp.epilogue()


def test_multipart_body_parses_as_mime_with_each_range():
    data = bytes(range(256)) * 4
    mp = MultipartByteranges(
        [ByteRange(0, 9), ByteRange(500, 520)], len(data), "text/plain", boundary="XYZ"
    )
    body = multipart_body(mp, data)
    assert mp.content_length == len(body)
    assert mp.content_type_header == "multipart/byteranges; boundary=XYZ"
    assert body.startswith(b"--XYZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-9/1024")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + mp.content_type_header.encode() + b"\r\n\r\n" + body
    )
    parts = list(message.iter_parts())
    assert [p["Content-Range"] for p in parts] == ["bytes 0-9/1024", "bytes 500-520/1024"]
    assert [p.get_payload(decode=True) for p in parts] == [data[0:10], data[500:521]]


def test_boundaries_are_random_and_distinct():
    assert new_boundary() != new_boundary()
    assert MultipartByteranges([ByteRange(0, 0)], 1).boundary.startswith("wsfs-")


# -- Content-Range on PUT --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-99/1000", RequestContentRange(0, 99, 1000)),
        ("bytes 100-999/1000", RequestContentRange(100, 999, 1000)),
        ("bytes 100-199/*", RequestContentRange(100, 199, None)),
        (b"Bytes 0-0/1", RequestContentRange(0, 0, 1)),
        (" bytes 5-9/10 ", RequestContentRange(5, 9, 10)),
        (
            f"bytes 0-{2**63 - 2}/{2**63 - 1}",
            RequestContentRange(0, 2**63 - 2, 2**63 - 1),
        ),
    ],
)
def test_request_content_range_parses(value, expected):
    parsed = parse_content_range(value)
    assert parsed == expected
    assert parsed.length == expected.last - expected.first + 1


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("bytes */1000", "names no bytes"),
        ("bytes 9-5/10", "before it starts"),
        ("bytes 0-10/10", "beyond the total"),
        ("items 0-1/2", "must be"),
        ("bytes 0-1", "must be"),
        ("bytes=0-1/2", "must be"),
        ("bytes -1-2/3", "must be"),
        ("", "must be"),
        # What the catalog's 64-bit integers cannot hold (an OverflowError,
        # a 500, when it stored them).
        (f"bytes 0-1/{2**63}", "beyond 9223372036854775807"),
        (f"bytes 0-{2**63}/*", "beyond"),
        (f"bytes {2**63}-{2**63}/*", "beyond"),
        ("bytes 0-1/" + "9" * 40, "beyond"),
    ],
)
def test_bad_request_content_range_says_why(value, needle):
    with pytest.raises(ContentRangeError, match=needle):
        parse_content_range(value)


# -- properties ----------------------------------------------------------------

sizes = st.integers(0, 10_000)
specs = st.one_of(
    st.tuples(st.integers(0, 12_000), st.integers(0, 12_000)).map(lambda t: f"{min(t)}-{max(t)}"),
    st.integers(0, 12_000).map(lambda n: f"{n}-"),
    st.integers(0, 12_000).map(lambda n: f"-{n}"),
)
headers = st.lists(specs, min_size=1, max_size=8).map(lambda s: "bytes=" + ",".join(s))


@settings(max_examples=300)
@given(headers, sizes)
def test_partial_ranges_are_sorted_disjoint_within_the_file_and_cover_the_request(header, size):
    outcome = evaluate_range(header, size)
    wanted = set()
    for spec in parse_range_header(header):
        r = spec.resolve(size)
        if r is not None:
            wanted.update(range(r.first, r.last + 1))
    if isinstance(outcome, Partial):
        covered = set()
        for a, b in zip(outcome.ranges, outcome.ranges[1:]):
            assert a.last + 1 < b.first
        for r in outcome.ranges:
            assert 0 <= r.first <= r.last < size
            covered.update(range(r.first, r.last + 1))
        assert covered == wanted
    elif isinstance(outcome, NotSatisfiable):
        assert not wanted and size == outcome.size
    else:
        assert size == 0


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 50)), min_size=1, max_size=10))
def test_coalesce_is_idempotent_and_order_independent(pairs):
    ranges = [ByteRange(a, a + n) for a, n in pairs]
    once = coalesce(ranges)
    assert coalesce(list(once)) == once
    assert coalesce(list(reversed(ranges))) == once


@settings(max_examples=100)
@given(
    st.lists(st.tuples(st.integers(0, 999), st.integers(0, 999)), min_size=1, max_size=6),
    st.sampled_from(["application/octet-stream", "text/html; charset=utf-8"]),
)
def test_multipart_content_length_is_exact(pairs, content_type):
    ranges = coalesce([ByteRange(min(p), max(p)) for p in pairs])
    mp = MultipartByteranges(ranges, 1000, content_type)
    assert mp.content_length == len(multipart_body(mp, bytes(1000)))


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_range_parser_never_raises(text):
    outcome = evaluate_range(text, 50)
    assert isinstance(outcome, WholeBody | Partial | NotSatisfiable)
