"""FTP replies are unambiguous to a client reading them line by line."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsfront.ftp.replies import (
    TEXTS,
    quote_path,
    reply,
    reply_257,
    standard,
    unquote_path,
)


def read_reply(data: bytes) -> tuple[int, list[str], bytes]:
    """What an RFC 959 client reads: the code, the lines, and what follows."""
    lines = data.split(b"\r\n")
    first = lines[0].decode("utf-8", "surrogateescape")
    code = int(first[:3])
    if first[3] == " ":
        return code, [first[4:]], b"\r\n".join(lines[1:])
    assert first[3] == "-"
    texts = [first[4:]]
    for i, raw in enumerate(lines[1:], 1):
        line = raw.decode("utf-8", "surrogateescape")
        if line.startswith(f"{code} "):
            texts.append(line[4:])
            return code, texts, b"\r\n".join(lines[i + 1 :])
        texts.append(line)
    raise AssertionError("reply never ended")


def test_single_line_reply():
    assert reply(200, "OK") == b"200 OK\r\n"
    assert reply(226) == b"226 Closing data connection; transfer complete\r\n"
    assert standard(530) == b"530 Not logged in\r\n"


def test_multi_line_reply():
    assert reply(211, ["Features:", " MDTM", " SIZE", "End"]) == (
        b"211-Features:\r\n MDTM\r\n SIZE\r\n211 End\r\n"
    )


def test_intermediate_lines_starting_with_digits_are_indented():
    data = reply(214, ["Help:", "226 looks like an end", "2xx", "End"])
    assert data == b"214-Help:\r\n 226 looks like an end\r\n 2xx\r\n214 End\r\n"
    assert read_reply(data)[1] == ["Help:", " 226 looks like an end", " 2xx", "End"]


def test_line_breaks_inside_text_cannot_inject_a_reply():
    data = reply(550, "no such file\r\n230 User logged in")
    code, _lines, rest = read_reply(data)
    assert code == 550 and rest == b""
    assert b"\r\n230 " not in data


def test_text_is_utf8():
    assert reply(550, "caf\u00e9: not found") == "550 caf\u00e9: not found\r\n".encode()


def test_codes_outside_100_599_are_refused():
    for code in (99, 600, 0):
        with pytest.raises(ValueError):
            reply(code, "x")


def test_table_has_the_codes_the_server_sends():
    for code in (
        150,
        200,
        213,
        220,
        221,
        226,
        227,
        229,
        230,
        250,
        257,
        331,
        350,
        421,
        425,
        426,
        450,
        451,
        452,
        500,
        501,
        502,
        503,
        504,
        522,
        530,
        550,
        552,
        553,
        554,
    ):
        assert TEXTS[code]
        assert all(100 <= c <= 599 for c in TEXTS)


def test_257_doubles_quotes_in_paths():
    assert reply_257("/") == b'257 "/" is the current directory\r\n'
    assert reply_257('/say "hi"', "created") == b'257 "/say ""hi""" created\r\n'
    assert reply_257("/a", "") == b'257 "/a"\r\n'
    with pytest.raises(ValueError):
        reply_257("/a\nb")


def test_unquote_path_refuses_unterminated_and_unquoted_text():
    for bad in ("/a", '"/a', '"a""'):
        with pytest.raises(ValueError):
            unquote_path(bad)


@settings(max_examples=300)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")))
def test_257_paths_round_trip(path):
    line = reply_257(path).decode("utf-8")
    assert line.startswith("257 ") and line.endswith("\r\n")
    assert unquote_path(line[4:-2]) == path
    assert quote_path(path).count('"') == 2 + 2 * path.count('"')


@settings(max_examples=300)
@given(
    st.integers(100, 599),
    st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=30), max_size=6),
    st.integers(100, 599),
)
def test_any_reply_is_read_back_whole_and_nothing_more(code, lines, next_code):
    data = reply(code, lines) + reply(next_code, "next")
    read_code, texts, rest = read_reply(data)
    assert read_code == code
    assert rest == f"{next_code} next\r\n".encode()
    assert all(not re.match(r"\d{3} ", t) for t in texts[1:-1])
