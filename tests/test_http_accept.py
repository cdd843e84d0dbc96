"""Accept negotiation (RFC 9110 12.5.1) between a listing's HTML and JSON."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsfront.http.accept import MAX_ELEMENTS, MAX_HEADER_LENGTH, choose, parse_accept

OFFERS = ("text/html", "application/json")
HTML, JSON = OFFERS


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, HTML),
        ("", HTML),
        ("application/json", JSON),
        # q-values decide, whatever the order.
        ("application/json, text/html;q=0.1", JSON),
        ("text/html;q=0.1, application/json", JSON),
        ("text/html;q=0.5, application/json;q=0.9", JSON),
        ("text/html;q=0.9, application/json;q=0.5", HTML),
        ("APPLICATION/JSON;Q=0.9, Text/HTML;q=0.8", JSON),
        ("text/html ; q=0.1 , application/json ; q=0.2", JSON),
        ("application/json;q=0.001", JSON),
        # q=0 is "not acceptable".
        ("text/html;q=0, application/json", JSON),
        ("text/html;q=0.000, */*", JSON),
        ("application/json;q=0, */*", HTML),
        ("*/*;q=0.1, application/json;q=0", HTML),
        # Wildcards.
        ("*/*", HTML),
        ("application/*", JSON),
        ("text/*;q=0.2, application/*;q=0.5", JSON),
        ("text/*, application/json;q=0.3", HTML),
        # Equal quality: the type named exactly beats a wildcard, then the
        # server's order.
        ("application/json, */*", JSON),
        ("application/json, */*;q=1", JSON),
        ("application/json, text/html", HTML),
        ("text/*, application/json", JSON),
        # A browser's and curl's.
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", HTML),
        ("application/json, text/plain, */*", JSON),
        # Parameters other than q, and accept-ext after it, are no part of the match.
        ("application/json; charset=utf-8", JSON),
        ("text/html;q=0.1;level=1, application/json;q=0.2", JSON),
        # Nothing acceptable: the default, not a 406.
        ("image/png", HTML),
        ("application/json;q=0", HTML),
        # Malformed elements are skipped.
        ("application/json;q=abc, text/html;q=0.1", HTML),
        ("application/json;q=1.5", HTML),
        ("application/json;q=0.0001", HTML),
        ("application/json;q=-1, text/html;q=0.1", HTML),
        ("application/json;q", HTML),
        ("json, text/html;q=0.1", HTML),
        ("*/json", HTML),
        (",,;, application/json", JSON),
    ],
)
def test_the_preferred_listing_type(header, expected):
    assert choose(header, OFFERS) == expected
    if header is not None:
        assert choose(header.encode("latin-1"), OFFERS) == expected


def test_an_oversized_header_is_ignored():
    many = ", ".join(["text/plain"] * MAX_ELEMENTS) + ", application/json"
    assert choose(many, OFFERS) == HTML
    long = "application/json;" + " " * MAX_HEADER_LENGTH
    assert choose(long, OFFERS) == HTML
    assert parse_accept("text/html;q=0.5") == [("text", "html", 0.5)]


@given(st.text(max_size=200))
def test_any_header_chooses_one_of_the_offers(text):
    assert choose(text, OFFERS) in OFFERS
