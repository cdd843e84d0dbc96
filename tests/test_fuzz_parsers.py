"""Property tests over every parser that reads bytes a hostile peer chose.

Each property says what may come out of a parser (a result that obeys its
invariants, or the one error class its caller maps to a protocol reply) for
any input, so nothing a client sends can surface as an unexpected exception
or an allocation beyond the documented caps.  Bounded in time: a few hundred
examples each.  The atheris harnesses in ``fuzz/`` check the same
invariants with coverage guidance (``tests/test_fuzz_bounded.py``).
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wsfront import paths
from wsfront.catalog import names
from wsfront.ftp import addresses, parsing
from wsfront.http import conditional, ranges
from wsstorage import framing
from wsstorage.errors import ProtocolError

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Text as a front end can see it: any bytes, decoded like the FTP parser does.
wire_text = st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape"))
ascii_noise = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=200)


# -- FTP control lines ---------------------------------------------------------------


@FAST
@given(st.binary(max_size=6000))
@example(b"\xff\xf4\xff\xf2ABOR\r\n")
@example(b"\xff")
@example(b"\xff\xfa" + b"x" * 10)
@example(b"US\xffER x")
def test_parse_line_never_raises_and_commands_are_clean(line):
    parsed = parsing.parse_line(line)
    assert isinstance(parsed, parsing.Command | parsing.LineTooLong | parsing.Malformed)
    if isinstance(parsed, parsing.Command):
        assert parsed.verb.isascii() and parsed.verb.isalpha() and parsed.verb.isupper()
        assert 1 <= len(parsed.verb) <= 8
        for bad in ("\x00", "\r", "\n"):
            assert bad not in parsed.argument
        # The argument survives as bytes: nothing was guessed or dropped.
        assert len(parsed.argument.encode("utf-8", "surrogateescape")) <= len(line)
    if len(line) > parsing.MAX_LINE_BYTES:
        assert isinstance(parsed, parsing.LineTooLong)


@FAST
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=50),
            st.sampled_from([b"\r\n", b"\n", b"\r", b"NOOP", b"x" * 5000]),
        ),
        max_size=20,
    ),
    st.data(),
)
def test_line_buffer_is_bounded_and_independent_of_chunking(pieces, data):
    stream = b"".join(pieces)
    whole = parsing.LineBuffer(max_line=256)
    expected = list(whole.feed(stream))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunked = parsing.LineBuffer(max_line=256)
    got = []
    last = 0
    for cut in [*cuts, len(stream)]:
        got.extend(chunked.feed(stream[last:cut]))
        assert chunked.pending < 256
        last = cut
    assert got == expected
    for line in got:
        if isinstance(line, bytes):
            assert b"\n" not in line and len(line) < 256
        else:
            assert line.length > 256 - 1
    assert whole.pending == chunked.pending


@FAST
@given(ascii_noise)
@example("18446744073709551616")
@example("٣")
@example("+5")
def test_rest_and_allo_arguments_parse_or_give_501(text):
    try:
        value = parsing.parse_offset(text)
    except parsing.ArgumentError:
        pass
    else:
        assert 0 <= value <= parsing.MAX_OFFSET
        assert str(value) == text.strip(" ").lstrip("0") or value == 0
    try:
        size = parsing.parse_allo(text)
    except parsing.ArgumentError:
        pass
    else:
        assert 0 <= size <= parsing.MAX_OFFSET


@FAST
@given(ascii_noise)
@example("20240230000000")
@example("99991231235960.999999999 x")
@example("00000101000000")
def test_time_values_and_mfmt_parse_or_give_501(text):
    for parse in (parsing.parse_time_value, lambda t: parsing.parse_mfmt(t)[0]):
        try:
            seconds = parse(text)
        except parsing.ArgumentError:
            continue
        assert isinstance(seconds, float | int)


@FAST
@given(st.integers(0, 253402300799), st.integers(0, 999))
def test_time_values_round_trip(seconds, millis):
    value = seconds + millis / 1000
    text = parsing.format_time_value(value, fraction_digits=3)
    assert parsing.format_time_value(parsing.parse_time_value(text), fraction_digits=3) == text


@FAST
@given(ascii_noise)
@example("127,0,0,1,0,0")
@example("|2|::ffff:127.0.0.1|21|")
@example("|1|127.0.0.1|99999|")
@example("|2|fe80::1%eth0|2121|")
@example("ALL")
def test_port_eprt_epsv_arguments_parse_or_give_their_reply(text):
    for parse in (addresses.parse_port, addresses.parse_eprt):
        try:
            target = parse(text)
        except addresses.AddressError as e:
            assert e.code in (501, 522)
            continue
        assert 1 <= target.port <= 65535
        # A parsed target must still go through the bounce guard, which only
        # ever refuses with 504.
        try:
            addresses.check_active_target(target, "127.0.0.1")
        except addresses.BounceRefused as e:
            assert e.code == 504
    try:
        addresses.parse_epsv(text)
    except addresses.AddressError as e:
        assert e.code in (501, 522)


@FAST
@given(
    st.one_of(
        st.ip_addresses().map(str),
        st.sampled_from(["::ffff:127.0.0.1", "127.0.0.1", "127.0.0.2", "::1"]),
    ),
    st.integers(1, 65535),
)
def test_active_targets_other_than_the_peer_or_below_1024_are_refused(host, port):
    target = addresses.HostPort(host, port)
    allowed = addresses.same_host(host, "127.0.0.1") and port >= 1024
    if allowed:
        addresses.check_active_target(target, "127.0.0.1")
    else:
        with pytest.raises(addresses.BounceRefused):
            addresses.check_active_target(target, "127.0.0.1")


# -- HTTP Range, Content-Range, preconditions, dates ---------------------------------

range_header = st.one_of(
    ascii_noise,
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(0, 2**70)),
            st.one_of(st.none(), st.integers(0, 2**70)),
        ),
        min_size=1,
        max_size=80,
    ).map(
        lambda specs: (
            "bytes="
            + ",".join(f"{'' if a is None else a}-{'' if b is None else b}" for a, b in specs)
        )
    ),
)


@FAST
@given(range_header, st.integers(0, 10**12))
@example("bytes=" + ",".join(["0-0"] * 65), 10)
@example("bytes=-20", 10)
@example("bytes=-0", 0)
@example("bytes=0-0,-1", 0)
def test_range_outcomes_stay_inside_the_file_and_are_coalesced(header, size):
    outcome = ranges.evaluate_range(header, size)
    assert isinstance(outcome, ranges.WholeBody | ranges.Partial | ranges.NotSatisfiable)
    if isinstance(outcome, ranges.Partial):
        assert 1 <= len(outcome.ranges) <= ranges.MAX_RANGES
        previous = None
        for r in outcome.ranges:
            assert 0 <= r.first <= r.last < size
            r.content_range(size)  # formats without raising
            if previous is not None:
                assert r.first > previous.last + 1  # sorted, no overlap, no touching
            previous = r
        # Lengths are added up, never materialised: a range may be a terabyte.
        body = ranges.MultipartByteranges(outcome.ranges, size)
        laid_out = sum(len(h) + r.length for h, r in body.parts()) + len(body.epilogue())
        assert laid_out == body.content_length
    if isinstance(outcome, ranges.NotSatisfiable):
        assert outcome.content_range == f"bytes */{size}"


@FAST
@given(st.integers(ranges.MAX_RANGES + 1, 500), st.integers(1, 10**9))
def test_oversized_range_lists_are_ignored_not_evaluated(count, size):
    header = "bytes=" + ",".join(f"{i}-{i}" for i in range(count))
    assert ranges.evaluate_range(header, size) == ranges.WholeBody()


@FAST
@given(st.one_of(ascii_noise, st.binary(max_size=100)))
@example("bytes 0-99999999999999999999999999999999999999/*")
@example("bytes */10")
@example("BYTES 5-4/10")
def test_request_content_range_parses_or_gives_400(value):
    try:
        cr = ranges.parse_content_range(value)
    except ranges.ContentRangeError:
        return
    assert 0 <= cr.first <= cr.last
    assert cr.length == cr.last - cr.first + 1
    assert cr.total is None or cr.last < cr.total


header_names = st.sampled_from(
    ["If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range", "Range"]
)


@FAST
@given(
    st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "MOVE"]),
    st.dictionaries(header_names, st.one_of(ascii_noise, st.binary(max_size=60)), max_size=6),
    st.one_of(st.none(), st.just('"abc"'), st.just('W/"abc"'), st.just("bare")),
    st.one_of(st.none(), st.floats(0, 2**40, allow_nan=False)),
)
def test_preconditions_never_raise_on_any_header_values(method, headers, etag, modified):
    verdict = conditional.evaluate(method, headers, etag, modified)
    assert isinstance(verdict, conditional.Verdict)
    if verdict is conditional.Verdict.NOT_MODIFIED:
        assert method in ("GET", "HEAD")
    if verdict is conditional.Verdict.IGNORE_RANGE:
        assert method == "GET"


@FAST
@given(st.one_of(ascii_noise, st.binary(max_size=60)))
@example("Sun, 06 Nov 1994 08:49:37 GMT")
@example("Sunday, 06-Nov-94 08:49:37 GMT")
@example("Sun Nov  0 08:49:37 1994")
@example("Sun, 31 Feb 0000 99:99:99 GMT")
def test_http_dates_parse_or_are_ignored(value):
    result = conditional.parse_http_date(value)
    assert result is None or isinstance(result, int)


@FAST
@given(st.integers(0, 253402300799))
def test_http_dates_round_trip(seconds):
    assert conditional.parse_http_date(conditional.format_http_date(seconds)) == seconds


# -- paths ------------------------------------------------------------------------------

traversal_text = st.lists(
    st.one_of(
        st.sampled_from(["..", ".", "", "-", "a", "b c", "..\\..", "%2e%2e", "\x00", "é"]),
        wire_text,
    ),
    max_size=12,
).map("/".join)


def _assert_inside_root(vpath: str) -> None:
    assert paths.is_virtual_path(vpath)
    parts = [] if vpath == "/" else vpath[1:].split("/")
    for part in parts:
        names.check_name(part)  # the catalog accepts every component
        assert "\\" not in part
    if parts:
        assert parts[0] not in names.RESERVED_ROOT_NAMES
    stored = paths.to_storage_path("/alice", vpath)
    assert stored == "/alice" or stored.startswith("/alice/")
    names.split_path(stored)
    assert paths.to_virtual_path("/alice", stored) == vpath


@FAST
@given(
    st.sampled_from(["/", "/a", "/a/b"]),
    st.one_of(traversal_text, st.sampled_from(["/", "../", "/..", "a/../../b"]).map(str)),
    st.booleans(),
)
def test_ftp_paths_never_leave_the_root_nor_make_a_name_the_catalog_refuses(cwd, path, clamp):
    try:
        vpath = paths.resolve(cwd, path, clamp_at_root=clamp)
    except paths.PathError as e:
        assert e.ftp_code in (550, 553)
        return
    _assert_inside_root(vpath)


http_path = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"..",
                b".",
                b"",
                b"%2e%2e",
                b"%2E.",
                b"%2f",
                b"%5c",
                b"..%5c..",
                b"%00",
                b"%",
                b"%zz",
                b"-",
                b"%2d",
                b"a",
                b"%c3%a9",
                b"%ff",
                b"%252e%252e",
            ]
        ),
        st.binary(max_size=20),
    ),
    max_size=10,
).map(lambda parts: b"/" + b"/".join(parts))


@FAST
@given(http_path)
@example(b"/%2e%2e/etc/passwd")
@example(b"/a/..%2f..%2f")
@example(b"/..%5c..%5cwindows")
@example(b"/%2d/metrics")
def test_http_paths_never_leave_the_root_nor_make_a_name_the_catalog_refuses(raw):
    try:
        target = paths.resolve_http(raw)
    except paths.PathError as e:
        assert e.http_status in (400, 404, 414)
        return
    _assert_inside_root(target.path)
    assert paths.resolve_http(paths.to_url_path(target.path)).path == target.path


@pytest.mark.parametrize(
    "raw",
    [
        b"/../x",
        b"/%2e%2e/x",
        b"/%2E%2e/x",
        b"/a/../../x",
        b"/a/%2e%2e/%2e%2e/x",
        b"/..%2fx",
        b"/%2e%2e%2fx",
        b"/..%5cx",
        b"/..\\x",
        b"/a%00b",
        b"/%2fetc/passwd",
    ],
)
def test_each_http_traversal_encoding_is_refused(raw):
    with pytest.raises(paths.PathError):
        paths.resolve_http(raw)


@pytest.mark.parametrize(
    "path", ["../x", "/../x", "..\\x", "a/../../x", "/..", "\\..\\x", "/a/../../../x"]
)
def test_each_ftp_traversal_encoding_is_refused(path):
    with pytest.raises(paths.PathError):
        paths.resolve("/", path)


def test_percent_encoded_dots_in_ftp_are_a_plain_name_not_a_parent():
    # FTP does no percent-decoding: "%2e%2e" is a file of that name in the cwd.
    assert paths.resolve("/a", "%2e%2e") == "/a/%2e%2e"


# -- wsstorage frames -------------------------------------------------------------------


def _frames(stream: bytes, cuts: list[int]):
    decoder = framing.FrameDecoder()
    out = []
    last = 0
    for cut in [*sorted(cuts), len(stream)]:
        decoder.feed(stream[last:cut])
        last = cut
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
        assert decoder.buffered <= len(stream)
    return out, decoder


header_fields = st.tuples(
    st.sampled_from([b"WS", b"WT", b"\x00\x00"]),
    st.sampled_from([framing.VERSION, 0, 2, 255]),
    st.integers(0, 12),
    st.integers(0, framing.MAX_REQUEST_ID),
    st.one_of(
        st.integers(0, 64),
        st.sampled_from([framing.MAX_DATA + 1, framing.MAX_CONTROL + 1, 2**32 - 1]),
    ),
)


@FAST
@given(
    st.lists(
        st.one_of(st.binary(max_size=40), header_fields.map(lambda h: struct.pack("!2sBBII", *h))),
        max_size=8,
    ),
    st.data(),
)
def test_frame_decoder_raises_only_protocol_errors_and_respects_the_caps(pieces, data):
    stream = b"".join(pieces)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    try:
        frames, _ = _frames(stream, cuts)
    except ProtocolError:
        return
    for ftype, _rid, body in frames:
        assert ftype in framing.FRAME_NAMES
        if ftype == framing.DATA:
            assert isinstance(body, bytes) and len(body) <= framing.MAX_DATA
        else:
            assert isinstance(body, dict)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@FAST
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from(sorted(framing.CONTROL_TYPES)),
                st.integers(0, framing.MAX_REQUEST_ID),
                st.dictionaries(st.text(max_size=10), json_values, max_size=5),
            ),
            st.tuples(
                st.just(framing.DATA),
                st.integers(0, framing.MAX_REQUEST_ID),
                st.binary(min_size=1, max_size=300),
            ),
        ),
        max_size=10,
    ),
    st.data(),
)
def test_valid_frames_decode_to_what_was_sent_however_they_are_cut(frames, data):
    stream = b"".join(
        b"".join(framing.data_frames(rid, body))
        if ftype == framing.DATA
        else framing.encode_control(ftype, rid, body)
        for ftype, rid, body in frames
    )
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    got, decoder = _frames(stream, cuts)
    assert got == [
        (t, r, json.loads(json.dumps(b)) if t != framing.DATA else b) for t, r, b in frames
    ]
    assert decoder.buffered == 0


@FAST
@given(st.sampled_from(sorted(framing.FRAME_NAMES)), st.integers(0, 2**32 - 1))
def test_a_header_over_the_cap_is_refused_before_its_body_arrives(ftype, length):
    cap = framing.MAX_DATA if ftype == framing.DATA else framing.MAX_CONTROL
    decoder = framing.FrameDecoder()
    decoder.feed(framing.encode_header(ftype, 1, length))
    if length > cap:
        with pytest.raises(ProtocolError):
            decoder.next_frame()
    elif length:
        assert decoder.next_frame() is None  # waits for the body, holds only the header
        assert decoder.buffered == framing.HEADER_SIZE


@pytest.mark.parametrize(
    "body",
    [b"1" * 5000, b"\xff\xfe", b"[]", b"null", b"NaN", b'{"a":1', b""],
    ids=["huge-int", "not-utf8", "array", "null", "nan", "truncated", "empty"],
)
def test_control_bodies_that_are_no_json_object_are_protocol_errors(body):
    decoder = framing.FrameDecoder()
    decoder.feed(framing.encode_header(framing.HELLO, 0, len(body)) + body)
    with pytest.raises(ProtocolError):
        decoder.next_frame()


@pytest.mark.parametrize(
    "body", [b"[" * 100_000, b'{"a":' * 100_000], ids=["deep-array", "deep-object"]
)
def test_deeply_nested_control_json_is_a_protocol_error(body):
    decoder = framing.FrameDecoder()
    decoder.feed(framing.encode_header(framing.HELLO, 0, len(body)) + body)
    with pytest.raises(ProtocolError):
        decoder.next_frame()


# -- tus headers and metadata ----------------------------------------------------------

metadata_value = st.one_of(
    st.sampled_from(["-", "..", ".", "a/b", "/", "../x", "a\\b", "", "-/x", "/-", "x/"]),
    st.text(max_size=30),
)


@FAST
@given(st.dictionaries(st.sampled_from(["filename", "name", "path"]), metadata_value, max_size=3))
@example({"filename": "-"})
def test_tus_metadata_names_a_path_inside_the_root_or_is_refused(meta):
    from wsfront.http.errors_map import HttpError
    from wsfront.http.tus import target_path

    try:
        vpath = target_path(meta)
    except (HttpError, paths.PathError):
        return
    _assert_inside_root(vpath)


def _only_http_4xx(parse, raw) -> None:
    from wsfront.http.errors_map import HttpError

    try:
        parse(raw)
    except HttpError as e:
        assert 400 <= e.status < 500


@FAST
@given(st.binary(max_size=200))
@example("٣".encode())
@example(b"1" * 30)
def test_tus_numbers_versions_and_content_types_answer_only_http_errors(raw):
    from wsfront.http import tus_headers

    _only_http_4xx(lambda r: tus_headers.parse_number("Upload-Length", r), raw)
    _only_http_4xx(tus_headers.check_resumable, raw)
    _only_http_4xx(tus_headers.check_offset_content_type, raw)


@FAST
@given(st.binary(max_size=200))
@example(b"filename YQ==,filename Yg==")
@example(b"sha1 " + b"A" * 28)
@example(b"filename \x80")
@example(b"sha1 \xe9")
def test_tus_metadata_and_checksums_answer_only_http_errors(raw):
    from wsfront.http import tus_headers

    _only_http_4xx(tus_headers.parse_metadata, raw)
    _only_http_4xx(tus_headers.parse_checksum, raw)
