"""FTP control lines parse into commands, and hostile bytes never break the parser."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wsfront.ftp.parsing import (
    MAX_LINE_BYTES,
    MAX_OFFSET,
    ArgumentError,
    Command,
    LineBuffer,
    LineTooLong,
    Malformed,
    format_time_value,
    parse_allo,
    parse_line,
    parse_mfmt,
    parse_offset,
    parse_time_value,
    strip_telnet,
)

IAC, IP, DM, WILL, SB, SE = 255, 244, 242, 251, 250, 240


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"USER alice\r\n", Command("USER", "alice")),
        (b"user alice\n", Command("USER", "alice")),
        (b"Pwd\r\n", Command("PWD")),
        (b"NOOP", Command("NOOP")),
        (b"STOR  two leading spaces.txt \r\n", Command("STOR", " two leading spaces.txt ")),
        (b"RETR caf\xc3\xa9.txt\r\n", Command("RETR", "caf\u00e9.txt")),
        (b"OPTS UTF8 ON\r\n", Command("OPTS", "UTF8 ON")),
        (b"CWD \r\n", Command("CWD", "")),
        (b"SITE CHMOD 644 x\r\n", Command("SITE", "CHMOD 644 x")),
    ],
)
def test_lines_parse_into_verb_and_argument(line, expected):
    assert parse_line(line) == expected


def test_telnet_interrupt_before_abor_is_stripped():
    line = bytes([IAC, IP, IAC, DM]) + b"ABOR\r\n"
    assert parse_line(line) == Command("ABOR")


def test_a_lone_iac_before_a_command_drops_only_the_iac():
    """ftplib and lftp send IAC IP IAC in-band and DM as urgent data, which
    the kernel may take out of the stream: the verb must survive."""
    assert parse_line(bytes([IAC, IP, IAC]) + b"ABOR\r\n") == Command("ABOR")
    assert strip_telnet(bytes([IAC]) + b"NOOP") == b"NOOP"
    assert strip_telnet(b"RETR a" + bytes([IAC])) == b"RETR a"


def test_telnet_sequences_of_every_shape_are_stripped():
    line = (
        bytes([IAC, WILL, 1])
        + b"RE"
        + bytes([IAC, SB, 24, 0, 65, IAC, SE])
        + b"TR a"
        + bytes([IAC, IAC])
        + b"b"
    )
    assert strip_telnet(line) == b"RETR a\xffb"
    assert strip_telnet(b"plain") == b"plain"
    assert strip_telnet(bytes([IAC])) == b""
    assert strip_telnet(bytes([IAC, SB, 1, 2])) == b""


@pytest.mark.parametrize(
    "line",
    [
        b"STOR bad\xff\xfe.txt",  # IAC DONT '.': was stored as 'badtxt'
        b"STOR bad\xffa.txt",  # a lone IAC: was 'bada.txt'
        b"STOR bad\xff\xf4x",  # IAC IP: was 'badx'
        b"STOR a\xff\xfa\x18x\xff\xf0b",  # subnegotiation
        b"RETR caf\xff",
        b"\xff\xf4\xff\xf2DELE b\xff\xfdc",
    ],
)
def test_a_telnet_sequence_inside_an_argument_is_refused_not_stripped(line):
    """A raw 0xFF of a Latin-1 name, taken as IAC, ate the bytes after it
    and the command acted on another name."""
    parsed = parse_line(line)
    assert isinstance(parsed, Malformed) and parsed.code == 501, parsed
    assert "telnet sequence inside an argument" in parsed.reason


def test_telnet_sequences_before_the_argument_and_doubled_iac_in_it_are_fine():
    assert parse_line(bytes([IAC, WILL, 32, IAC, IP]) + b"STOR x y") == Command("STOR", "x y")
    assert parse_line(b"NO" + bytes([IAC, IP]) + b"OP\xff") == Command("NOOP")
    assert parse_line(b"STOR a\xff\xffb") == Command("STOR", "a\udcffb", False)


def test_invalid_utf8_is_kept_with_surrogateescape_and_reported():
    parsed = parse_line(b"RETR caf\xe9.txt\r\n")
    assert parsed.verb == "RETR"
    assert not parsed.valid_utf8
    assert parsed.argument.encode("utf-8", "surrogateescape") == b"caf\xe9.txt"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\r\n", "empty"),
        (b"   \r\n", "empty"),
        (b"RETR a\x00b\r\n", "NUL"),
        (b"RETR a\rb\r\n", "CR"),
        (b"R3TR x\r\n", "verb"),
        (b"\xc3\xa9 x\r\n", "ASCII"),
        (b"TOOLONGVERB x\r\n", "verb"),
        (b" USER x\r\n", "verb"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc", "NUL"),
        (b"\x16\x03\x01\x02\xfc", "verb"),
    ],
)
def test_garbage_lines_are_malformed_with_a_reason(line, reason):
    parsed = parse_line(line)
    assert isinstance(parsed, Malformed)
    assert reason in parsed.reason


def test_overlong_line_is_distinct():
    assert parse_line(b"A" * (MAX_LINE_BYTES + 1)) == LineTooLong(MAX_LINE_BYTES + 1)


# -- framing -------------------------------------------------------------------


def test_line_buffer_splits_on_crlf_and_bare_lf_across_chunks():
    buf = LineBuffer()
    assert list(buf.feed(b"USER a\r")) == []
    assert buf.pending == 7
    assert list(buf.feed(b"\nPASS b\nNO")) == [b"USER a", b"PASS b"]
    assert list(buf.feed(b"OP\r\n")) == [b"NOOP"]


def test_line_buffer_reports_an_overlong_line_once_and_resynchronises():
    buf = LineBuffer(max_line=16)
    out = list(buf.feed(b"STOR " + b"x" * 30))
    out += list(buf.feed(b"y" * 10_000))
    assert buf.pending == 0
    out += list(buf.feed(b"z\r\nNOOP\r\n"))
    assert out == [LineTooLong(5 + 30 + 10_000 + 3), b"NOOP"]


def test_line_buffer_accepts_a_line_exactly_at_the_cap():
    buf = LineBuffer(max_line=8)
    assert list(buf.feed(b"NOOP 12\n")) == [b"NOOP 12"]
    assert list(buf.feed(b"NOOP 123\n")) == [LineTooLong(9)]


def test_ten_kib_line_then_a_good_command():
    buf = LineBuffer()
    out = list(buf.feed(b"A" * 10 * 1024 + b"\r\nNOOP\r\n"))
    assert isinstance(out[0], LineTooLong)
    assert [parse_line(x) for x in out[1:]] == [Command("NOOP")]


@settings(max_examples=200)
@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=20))
def test_line_buffer_output_does_not_depend_on_chunking(data, cuts):
    whole = list(LineBuffer(max_line=64).feed(data))
    buf = LineBuffer(max_line=64)
    chunked, pos = [], 0
    for cut in cuts:
        chunked += buf.feed(data[pos : pos + cut])
        pos += cut
    chunked += buf.feed(data[pos:])
    assert chunked == whole
    assert buf.pending < 64


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_parse_line_never_raises_on_any_bytes(line):
    parsed = parse_line(line)
    assert isinstance(parsed, Command | Malformed | LineTooLong)
    if isinstance(parsed, Command):
        assert parsed.verb.isupper() and parsed.verb.isalpha()
        assert "\x00" not in parsed.argument and "\r" not in parsed.argument


@settings(max_examples=200)
@given(st.sampled_from(["RETR", "STOR", "CWD"]), st.text(max_size=40))
def test_commands_round_trip_through_their_wire_form(verb, argument):
    if any(c in argument for c in "\x00\r\n"):
        return
    line = f"{verb.lower()} {argument}\r\n".encode()
    assert parse_line(line) == Command(verb, argument)


# -- arguments -----------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("1234", 1234), (" 7 ", 7)])
def test_offsets_parse(text, value):
    assert parse_offset(text) == value


@pytest.mark.parametrize(
    "text", ["", "-1", "+1", "1.5", "1e3", "0x10", "1 2", "\u0661", str(MAX_OFFSET + 1), "9" * 30]
)
def test_bad_offsets_are_argument_errors(text):
    with pytest.raises(ArgumentError):
        parse_offset(text)


def test_largest_offset_is_accepted():
    assert parse_offset(str(MAX_OFFSET)) == MAX_OFFSET


def test_allo_takes_the_size_and_checks_the_record_form():
    assert parse_allo("1000") == 1000
    assert parse_allo("1000 R 512") == 1000
    for bad in ("", "x", "10 Q 5", "10 R", "10 R x"):
        with pytest.raises(ArgumentError):
            parse_allo(bad)


def test_time_values_parse_as_utc_with_fractions():
    assert parse_time_value("19700101000000") == 0
    assert parse_time_value("19941106084937") == 784111777
    assert parse_time_value("19941106084937.250") == 784111777.25
    assert parse_time_value("20161231235960") == parse_time_value("20161231235959")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2020",
        "20200230000000",
        "20201301000000",
        "20200101240000",
        "20200101006000",
        "2020010100000a",
        "20200101000000.",
        "20200101000000Z",
        " 20200101000000",
        "00000101000000",
    ],
)
def test_bad_time_values_are_argument_errors(text):
    with pytest.raises(ArgumentError):
        parse_time_value(text)


def test_time_values_format_truncating_fractions():
    assert format_time_value(784111777.999) == "19941106084937"
    assert format_time_value(784111777.25, fraction_digits=3) == "19941106084937.250"
    assert format_time_value(784111777.9999, fraction_digits=3) == "19941106084937.999"


@settings(max_examples=200)
@given(st.integers(0, 253402300799), st.integers(0, 999))
def test_time_values_round_trip(seconds, millis):
    value = seconds + millis / 1000
    text = format_time_value(value, fraction_digits=3)
    assert text == f"{format_time_value(seconds)}.{millis:03d}"
    assert abs(parse_time_value(text) - value) < 1e-6


def test_mfmt_argument_splits_time_and_path():
    assert parse_mfmt("20200101000000 dir/my file.txt") == (1577836800, "dir/my file.txt")
    for bad in ("20200101000000", "20200101000000 ", "bad name", ""):
        with pytest.raises(ArgumentError):
            parse_mfmt(bad)


@settings(max_examples=300)
@given(st.from_regex(r"[0-9]{14}(\.[0-9]{1,3})?", fullmatch=True))
@example("20161231235960")  # the leap second Hypothesis once found
def test_any_fourteen_digits_parse_or_are_argument_errors(text):
    try:
        value = parse_time_value(text)
    except ArgumentError:
        return
    # A leap second (ss = 60) is accepted and read as :59 (POSIX time has
    # no second 60), so it reads back as :59.
    seconds = "59" if text[12:14] == "60" else text[12:14]
    assert format_time_value(value) == text[:12] + seconds


def test_listing_patterns_match_as_a_shell_does_and_are_not_cached_process_wide():
    """NLST/LIST patterns come from clients: compiled per listing, never
    into fnmatch's process-wide cache (32768 entries a client could fill)."""
    import fnmatch

    from wsfront.ftp.datacmds import _glob_matcher

    cached = fnmatch._compile_pattern.cache_info().currsize
    star = _glob_matcher("*.bin")
    assert star("a.bin") and not star("a.txt") and not star(".hidden.bin")
    assert _glob_matcher(".*")(".hidden") and _glob_matcher("f[0-9]?")("f1x")
    for n in range(200):
        _glob_matcher("*" * n + "x")("x")
    assert fnmatch._compile_pattern.cache_info().currsize == cached
