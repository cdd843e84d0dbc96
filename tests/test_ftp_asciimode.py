"""TYPE A conversion is right both ways, whatever the chunking."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsfront.ftp.asciimode import FromNetwork, ToNetwork


def run(converter, chunks):
    out = b"".join(converter.feed(c) for c in chunks)
    return out + converter.flush()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b""),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"\n\n", b"\r\n\r\n"),
        (b"dos\r\nfile\r\n", b"dos\r\nfile\r\n"),
        (b"lone\rcr", b"lone\rcr"),
        (b"\r\r\n\n", b"\r\r\n\r\n"),
        (b"no line end", b"no line end"),
    ],
)
def test_to_network_turns_lf_into_crlf(data, expected):
    assert run(ToNetwork(), [data]) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b""),
        (b"a\r\nb\r\n", b"a\nb\n"),
        (b"bare\nlf", b"bare\nlf"),
        (b"lone\rcr", b"lone\rcr"),
        (b"\r\r\n", b"\r\n"),
        (b"ends with cr\r", b"ends with cr\r"),
    ],
)
def test_from_network_turns_crlf_into_lf(data, expected):
    assert run(FromNetwork(), [data]) == expected


def test_crlf_split_across_chunks_on_stor():
    conv = FromNetwork()
    assert conv.feed(b"line\r") == b"line"
    assert conv.feed(b"\nnext") == b"\nnext"
    assert conv.flush() == b""


def test_cr_held_at_a_chunk_end_is_released_by_flush():
    conv = FromNetwork()
    assert conv.feed(b"x\r") == b"x"
    assert conv.flush() == b"\r"


def test_crlf_split_across_chunks_on_retr_is_not_doubled():
    conv = ToNetwork()
    assert conv.feed(b"dos\r") == b"dos\r"
    assert conv.feed(b"\nunix\n") == b"\nunix\r\n"


def test_empty_chunks_change_nothing():
    assert run(FromNetwork(), [b"a\r", b"", b"\n"]) == b"a\n"
    assert run(ToNetwork(), [b"a\r", b"", b"\n"]) == b"a\r\n"


line_ish = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"bc", b"\x00\xff"]), max_size=40)


def chunked(data, cuts):
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(data[pos : pos + cut])
        pos += cut
    pieces.append(data[pos:])
    return pieces


@settings(max_examples=300)
@given(line_ish.map(b"".join), st.lists(st.integers(0, 5), max_size=30))
def test_chunking_never_changes_the_output(data, cuts):
    for make in (ToNetwork, FromNetwork):
        assert run(make(), chunked(data, cuts)) == run(make(), [data])


@settings(max_examples=300)
@given(line_ish.map(b"".join), st.lists(st.integers(0, 5), max_size=30))
def test_streaming_matches_the_whole_buffer_rule(data, cuts):
    assert run(FromNetwork(), chunked(data, cuts)) == data.replace(b"\r\n", b"\n")
    sent = run(ToNetwork(), chunked(data, cuts))
    assert sent == data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert b"\n" not in sent.replace(b"\r\n", b"")


@settings(max_examples=300)
@given(st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"")), st.lists(st.integers(0, 9)))
def test_unix_text_survives_a_round_trip(data, cuts):
    sent = run(ToNetwork(), chunked(data, cuts))
    assert sent.count(b"\r\n") == data.count(b"\n")
    assert run(FromNetwork(), chunked(sent, list(reversed(cuts)))) == data
