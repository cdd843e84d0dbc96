"""Conditional requests follow RFC 9110 13.2.2, in order, with the right comparison."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsfront.http.conditional import (
    EntityTag,
    ETagSyntaxError,
    Verdict,
    evaluate,
    format_http_date,
    parse_etag,
    parse_etag_list,
    parse_http_date,
    strong_match,
    weak_match,
)

ETAG = '"v1"'
MTIME = 784111777.5  # Sun, 06 Nov 1994 08:49:37 GMT, with a fraction HTTP can't carry
DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sun, 06 Nov 1994 08:49:36 GMT"
LATER = "Sun, 06 Nov 1994 08:49:38 GMT"


def verdict(method="GET", etag=ETAG, mtime=MTIME, **headers):
    return evaluate(method, {k.replace("_", "-"): v for k, v in headers.items()}, etag, mtime)


# -- entity tags ---------------------------------------------------------------


def test_parse_etag_list_and_star():
    assert parse_etag_list("*") is None
    assert parse_etag_list(' "a", W/"b" ,,"c,d"') == [
        EntityTag("a"),
        EntityTag("b", weak=True),
        EntityTag("c,d"),
    ]
    assert parse_etag('W/"x"') == EntityTag("x", weak=True)
    assert str(EntityTag("x", weak=True)) == 'W/"x"'


@pytest.mark.parametrize("value", ["", "a", '"a" "b"', '"a', 'w/"a"', '"a"b', ",", '"a\\"b"'])
def test_malformed_etag_lists_are_errors(value):
    with pytest.raises(ETagSyntaxError):
        parse_etag_list(value)


def test_strong_and_weak_comparison():
    strong, weak = EntityTag("1"), EntityTag("1", weak=True)
    assert strong_match(strong, strong)
    assert not strong_match(strong, weak)
    assert not strong_match(weak, weak)
    assert weak_match(strong, weak) and weak_match(weak, weak)
    assert not weak_match(strong, EntityTag("2"))


# -- If-Match / If-Unmodified-Since ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"v1"', Verdict.PROCEED),
        ('"v0", "v1"', Verdict.PROCEED),
        ("*", Verdict.PROCEED),
        ('"v2"', Verdict.PRECONDITION_FAILED),
        ('W/"v1"', Verdict.PRECONDITION_FAILED),
        ("garbage", Verdict.PRECONDITION_FAILED),
    ],
)
def test_if_match_uses_strong_comparison(value, expected):
    assert verdict("PUT", if_match=value) is expected
    assert verdict("GET", if_match=value) is expected


def test_if_match_fails_when_there_is_no_resource():
    assert verdict("PUT", etag=None, if_match="*") is Verdict.PRECONDITION_FAILED
    assert verdict("DELETE", etag=None, if_match='"v1"') is Verdict.PRECONDITION_FAILED


def test_get_of_a_missing_resource_ignores_preconditions_so_it_can_be_a_404():
    for method in ("GET", "HEAD"):
        assert verdict(method, etag=None, mtime=None, if_match="*") is Verdict.PROCEED
        assert verdict(method, etag=None, mtime=None, if_none_match="*") is Verdict.PROCEED


def test_weak_current_etag_never_satisfies_if_match():
    assert verdict("PUT", etag='W/"v1"', if_match='"v1"') is Verdict.PRECONDITION_FAILED


def test_if_unmodified_since():
    assert verdict("PUT", if_unmodified_since=DATE) is Verdict.PROCEED
    assert verdict("PUT", if_unmodified_since=LATER) is Verdict.PROCEED
    assert verdict("PUT", if_unmodified_since=EARLIER) is Verdict.PRECONDITION_FAILED
    assert verdict("PUT", if_unmodified_since="yesterday") is Verdict.PROCEED
    assert verdict("PUT", mtime=None, if_unmodified_since=EARLIER) is Verdict.PROCEED


def test_if_match_takes_precedence_over_if_unmodified_since():
    assert verdict("PUT", if_match=ETAG, if_unmodified_since=EARLIER) is Verdict.PROCEED


# -- If-None-Match / If-Modified-Since -------------------------------------------


@pytest.mark.parametrize(
    ("method", "value", "expected"),
    [
        ("GET", '"v1"', Verdict.NOT_MODIFIED),
        ("HEAD", 'W/"v1"', Verdict.NOT_MODIFIED),
        ("GET", "*", Verdict.NOT_MODIFIED),
        ("GET", '"v2"', Verdict.PROCEED),
        ("PUT", '"v1"', Verdict.PRECONDITION_FAILED),
        ("PUT", "*", Verdict.PRECONDITION_FAILED),
        ("DELETE", 'W/"v1"', Verdict.PRECONDITION_FAILED),
        ("PUT", '"v2"', Verdict.PROCEED),
        ("GET", "garbage", Verdict.PROCEED),
        ("PUT", "garbage", Verdict.PRECONDITION_FAILED),
    ],
)
def test_if_none_match_uses_weak_comparison(method, value, expected):
    assert verdict(method, if_none_match=value) is expected


def test_if_none_match_star_lets_a_create_only_put_through():
    assert verdict("PUT", etag=None, mtime=None, if_none_match="*") is Verdict.PROCEED


def test_if_modified_since_gives_304_only_for_get_and_head():
    assert verdict("GET", if_modified_since=DATE) is Verdict.NOT_MODIFIED
    assert verdict("HEAD", if_modified_since=LATER) is Verdict.NOT_MODIFIED
    assert verdict("GET", if_modified_since=EARLIER) is Verdict.PROCEED
    assert verdict("PUT", if_modified_since=DATE) is Verdict.PROCEED
    assert verdict("GET", if_modified_since="not a date") is Verdict.PROCEED
    assert verdict("GET", etag=None, mtime=None, if_modified_since=DATE) is Verdict.PROCEED


def test_if_none_match_takes_precedence_over_if_modified_since():
    assert verdict(if_none_match='"v2"', if_modified_since=LATER) is Verdict.PROCEED


def test_if_match_is_evaluated_before_if_none_match():
    assert verdict(if_match='"v2"', if_none_match='"v1"') is Verdict.PRECONDITION_FAILED


# -- If-Range ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"v1"', Verdict.PROCEED),
        ('"v2"', Verdict.IGNORE_RANGE),
        ('W/"v1"', Verdict.IGNORE_RANGE),
        (DATE, Verdict.PROCEED),
        (LATER, Verdict.IGNORE_RANGE),
        (EARLIER, Verdict.IGNORE_RANGE),
        ("junk", Verdict.IGNORE_RANGE),
        ('"unterminated', Verdict.IGNORE_RANGE),
    ],
)
def test_if_range_needs_a_strong_etag_or_the_exact_date(value, expected):
    assert verdict(range="bytes=5-", if_range=value) is expected


def test_if_range_without_range_or_on_head_changes_nothing():
    assert verdict(if_range='"v2"') is Verdict.PROCEED
    assert verdict("HEAD", range="bytes=5-", if_range='"v2"') is Verdict.PROCEED


def test_header_names_are_case_insensitive_and_values_may_be_bytes():
    headers = {"IF-NONE-MATCH": b'"v1"'}
    assert evaluate("GET", headers, ETAG, MTIME) is Verdict.NOT_MODIFIED


def test_bare_and_entity_tag_current_etags_are_accepted():
    assert evaluate("GET", {"If-None-Match": '"v1"'}, "v1", None) is Verdict.NOT_MODIFIED
    assert evaluate("PUT", {"If-Match": '"v1"'}, EntityTag("v1"), None) is Verdict.PROCEED


def test_no_preconditions_proceed():
    assert verdict() is Verdict.PROCEED
    assert verdict("PUT", etag=None, mtime=None) is Verdict.PROCEED


# -- HTTP dates ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        b"Sun, 06 Nov 1994 08:49:37 GMT",
        "  Sun, 06 Nov 1994 08:49:37 GMT ",
    ],
)
def test_all_three_http_date_formats_parse(value):
    assert parse_http_date(value) == 784111777


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "sun, 06 nov 1994 08:49:37 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Xyz 1994 08:49:37 GMT",
        "1994-11-06T08:49:37Z",
        "Sun, 01 Jan 0000 00:00:00 GMT",
        "Sun Jan  1 00:00:00 0000",
    ],
)
def test_invalid_http_dates_are_none(value):
    assert parse_http_date(value) is None


def test_rfc850_two_digit_years_are_never_more_than_50_years_ahead():
    now = parse_http_date("Sun, 01 Jan 2026 00:00:00 GMT")
    assert time.gmtime(parse_http_date("Monday, 01-Jan-70 00:00:00 GMT", now=now)).tm_year == 2070
    assert time.gmtime(parse_http_date("Monday, 01-Jan-80 00:00:00 GMT", now=now)).tm_year == 1980


def test_format_http_date_is_imf_fixdate():
    assert format_http_date(MTIME) == DATE
    assert format_http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


@settings(max_examples=200)
@given(st.integers(0, 2**35))
def test_http_dates_round_trip(seconds):
    text = format_http_date(seconds + 0.9)
    assert parse_http_date(text) == seconds


@settings(max_examples=200)
@given(
    st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]),
    st.dictionaries(
        st.sampled_from(["If-Match", "If-None-Match", "If-Modified-Since", "If-Range", "Range"]),
        st.sampled_from(["*", '"v1"', 'W/"v1"', '"v2"', DATE, EARLIER, "x", ""]),
    ),
    st.sampled_from([None, '"v1"', 'W/"v1"']),
)
def test_a_304_only_for_safe_methods_and_412_only_when_a_condition_failed(method, headers, etag):
    result = evaluate(method, headers, etag, MTIME if etag else None)
    if result is Verdict.NOT_MODIFIED:
        assert method in ("GET", "HEAD")
    if not any(h in headers for h in ("If-Match", "If-None-Match")):
        assert result is not Verdict.PRECONDITION_FAILED
    if result is Verdict.IGNORE_RANGE:
        assert method == "GET" and "If-Range" in headers


@settings(max_examples=300)
@given(
    st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "get"]),
    st.dictionaries(
        st.sampled_from(
            ["If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"]
        ),
        st.text(max_size=40),
    ),
)
def test_any_header_text_gives_a_verdict_never_an_exception(method, headers):
    headers["Range"] = "bytes=0-"
    assert isinstance(evaluate(method, headers, ETAG, MTIME), Verdict)


@settings(max_examples=300)
@given(
    st.from_regex(
        r"(Sun, [0-9]{2} (Jan|Feb) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
        r"|Sun (Jan|Feb) [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} [0-9]{4}"
        r"|Sunday, [0-9]{2}-(Jan|Feb)-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT)",
        fullmatch=True,
    )
)
def test_date_shaped_text_parses_or_is_none_never_raises(text):
    result = parse_http_date(text)
    assert result is None or isinstance(result, int)
