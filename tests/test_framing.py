"""Frames of the wire protocol: encoding, decoding, caps, malformed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsstorage import framing
from wsstorage.errors import ProtocolError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
control_bodies = st.dictionaries(st.text(max_size=10), json_values, max_size=6)
control_types = st.sampled_from(sorted(framing.CONTROL_TYPES))
request_ids = st.integers(0, framing.MAX_REQUEST_ID)


def decode_all(data: bytes) -> list[tuple[int, int, object]]:
    return list(framing.FrameDecoder().frames(data))


@pytest.mark.parametrize("ftype", sorted(framing.CONTROL_TYPES))
def test_every_control_frame_type_round_trips(ftype: int) -> None:
    frame = framing.encode_control(ftype, 7, {"op": "stat", "blob": "b1"})
    assert decode_all(frame) == [(ftype, 7, {"op": "stat", "blob": "b1"})]


@given(control_bodies)
def test_a_control_body_is_encoded_as_compact_json_for_older_peers(body) -> None:
    """The wire's bytes stay what they were (``json.dumps`` with compact
    separators) now that one encoder is made once for every frame."""
    import json

    payload = framing.encode_control(framing.REPLY, 3, body)[framing.HEADER_SIZE :]
    assert payload == json.dumps(body, separators=(",", ":")).encode("utf-8")


def test_data_frames_cut_large_chunks_at_the_cap() -> None:
    data = bytes(range(256)) * ((framing.MAX_DATA * 2 + 1000) // 256)
    wire = b"".join(bytes(p) for p in framing.data_frames(3, data))
    frames = decode_all(wire)
    assert [len(b) for _, _, b in frames] == [
        framing.MAX_DATA,
        framing.MAX_DATA,
        len(data) - 2 * framing.MAX_DATA,
    ]
    assert all(t == framing.DATA and rid == 3 for t, rid, _ in frames)
    assert b"".join(b for _, _, b in frames) == data
    # The bodies are views of the caller's bytes: however many replicas
    # frame one chunk, nothing is copied before the transport sends it.
    bodies = list(framing.data_frames(3, data))[1::2]
    assert all(isinstance(b, memoryview) and b.obj is data for b in bodies)


@given(control_types, request_ids, control_bodies, st.binary(max_size=3000), st.integers(1, 50))
def test_frames_survive_any_split_of_the_byte_stream(ftype, rid, body, data, step) -> None:
    wire = framing.encode_control(ftype, rid, body) + b"".join(
        bytes(p) for p in framing.data_frames(rid, data)
    )
    decoder = framing.FrameDecoder()
    frames = []
    for i in range(0, len(wire), step):
        frames.extend(decoder.frames(wire[i : i + step]))
    expected = [(ftype, rid, body)] + ([(framing.DATA, rid, data)] if data else [])
    assert frames == expected
    assert decoder.buffered == 0


@given(control_types, request_ids, control_bodies, st.binary(max_size=3000), st.integers(1, 50))
def test_partial_data_hands_out_bodies_piece_by_piece(ftype, rid, body, data, step) -> None:
    """With ``partial_data`` a DATA body comes out as it arrives, in pieces
    that each lie in one fed chunk, while control frames stay whole."""
    wire = (
        b"".join(bytes(p) for p in framing.data_frames(rid, data))
        + framing.encode_control(ftype, rid, body)
        + b"".join(bytes(p) for p in framing.data_frames(rid, data[:7]))
    )
    decoder = framing.FrameDecoder(partial_data=True)
    pieces, controls = [], []
    for i in range(0, len(wire), step):
        for t, r, b in decoder.frames(wire[i : i + step]):
            assert r == rid
            if t == framing.DATA:
                assert 0 < len(b) <= step
                pieces.append(b)
            else:
                controls.append((t, b))
    assert controls == [(ftype, body)]
    assert b"".join(pieces) == data + data[:7]
    assert decoder.buffered == 0


def test_partial_data_passes_a_chunk_inside_a_body_on_uncopied() -> None:
    header = framing.encode_header(framing.DATA, 5, 3000)
    decoder = framing.FrameDecoder(partial_data=True)
    decoder.feed(header + b"a" * 1000)
    assert decoder.next_frame() == (framing.DATA, 5, b"a" * 1000)
    assert decoder.next_frame() is None
    middle = b"b" * 1500
    decoder.feed(middle)
    assert decoder.next_frame()[2] is middle
    decoder.feed(b"c" * 500 + framing.encode_control(framing.END, 5, {}))
    assert decoder.next_frame() == (framing.DATA, 5, b"c" * 500)
    assert decoder.next_frame() == (framing.END, 5, {})
    assert decoder.next_frame() is None and decoder.buffered == 0


@given(control_types, request_ids, control_bodies, st.binary(max_size=3000), st.integers(1, 50))
def test_reading_what_the_decoder_wants_hands_out_the_received_bytes(
    ftype, rid, body, data, step
) -> None:
    """A reader that receives at most ``wanted()`` bytes at a time (the
    storage client's, ``step`` standing for what the socket holds) gets
    every DATA piece back as the very object it received, whole frames
    otherwise, and leaves nothing buffered between frames."""
    wire = (
        b"".join(bytes(p) for p in framing.data_frames(rid, data))
        + framing.encode_control(ftype, rid, body)
        + framing.encode_header(framing.DATA, rid, 0)
        + b"".join(bytes(p) for p in framing.data_frames(rid, data[:7]))
    )
    decoder = framing.FrameDecoder(partial_data=True)
    pieces, controls, pos = [], [], 0
    while pos < len(wire):
        in_body = decoder.in_body
        chunk = wire[pos : pos + min(step, decoder.wanted())]
        pos += len(chunk)
        if in_body:
            frame = decoder.body_piece(chunk)
            assert frame[2] is chunk
            frames = [frame]
        else:
            frames = list(decoder.frames(chunk))
        for t, r, b in frames:
            assert r == rid
            if t == framing.DATA:
                assert b is chunk or not b
                pieces.append(b)
            else:
                controls.append((t, b))
    assert controls == [(ftype, body)]
    assert b"".join(pieces) == data + data[:7]
    assert decoder.buffered == 0 and not decoder.in_body and decoder.wanted() == 12


def test_wanted_counts_the_rest_of_a_header_a_control_frame_and_a_body() -> None:
    decoder = framing.FrameDecoder(partial_data=True)
    assert decoder.wanted() == framing.HEADER_SIZE
    reply = framing.encode_control(framing.REPLY, 1, {"length": 5})
    decoder.feed(reply[:5])
    assert decoder.wanted() == framing.HEADER_SIZE - 5
    decoder.feed(reply[5:14])
    assert decoder.next_frame() is None
    assert decoder.wanted() == len(reply) - 14 and not decoder.in_body
    decoder.feed(reply[14:] + framing.encode_header(framing.DATA, 1, 5))
    assert decoder.next_frame() == (framing.REPLY, 1, {"length": 5})
    assert decoder.next_frame() is None
    assert decoder.in_body and decoder.wanted() == 5
    assert decoder.body_piece(b"ab") == (framing.DATA, 1, b"ab")
    assert decoder.wanted() == 3
    with pytest.raises(ValueError):
        decoder.body_piece(b"cdef")  # more than the body has left
    decoder.feed(b"cd")
    assert not decoder.in_body  # buffered bytes come first, through next_frame
    with pytest.raises(ValueError):
        decoder.body_piece(b"e")
    assert decoder.next_frame() == (framing.DATA, 1, b"cd")
    assert decoder.body_piece(b"e") == (framing.DATA, 1, b"e")
    assert not decoder.in_body and decoder.wanted() == framing.HEADER_SIZE


def test_partial_data_still_refuses_an_oversized_frame_from_its_header() -> None:
    decoder = framing.FrameDecoder(partial_data=True)
    decoder.feed(struct.pack("!2sBBII", b"WS", 1, framing.DATA, 1, framing.MAX_DATA + 1))
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_truncated_frame_waits_for_more_bytes() -> None:
    wire = framing.encode_control(framing.REQUEST, 1, {"op": "health"})
    decoder = framing.FrameDecoder()
    assert list(decoder.frames(wire[:5])) == []
    assert list(decoder.frames(wire[5:-1])) == []
    assert decoder.buffered == len(wire) - 1
    assert list(decoder.frames(wire[-1:])) == [(framing.REQUEST, 1, {"op": "health"})]


def test_bad_magic_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="magic"):
        decode_all(b"XX" + framing.encode_control(framing.REQUEST, 1, {})[2:])


def test_wrong_version_is_a_protocol_error() -> None:
    wire = struct.pack("!2sBBII", b"WS", 9, framing.REQUEST, 1, 2) + b"{}"
    with pytest.raises(ProtocolError, match="version 9"):
        decode_all(wire)


def test_unknown_frame_type_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unknown frame type 99"):
        decode_all(framing.encode_header(99, 1, 0))


def test_oversized_data_frame_is_refused_from_its_header_alone() -> None:
    decoder = framing.FrameDecoder()
    decoder.feed(framing.encode_header(framing.DATA, 1, framing.MAX_DATA + 1))
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.next_frame()


def test_oversized_control_frame_is_refused_from_its_header_alone() -> None:
    decoder = framing.FrameDecoder()
    decoder.feed(framing.encode_header(framing.REQUEST, 1, framing.MAX_CONTROL + 1))
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.next_frame()


def test_encoding_an_oversized_control_body_fails() -> None:
    with pytest.raises(ProtocolError):
        framing.encode_control(framing.REPLY, 1, {"x": "a" * framing.MAX_CONTROL})


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe", b'"text"'])
def test_control_body_must_be_a_json_object(body: bytes) -> None:
    wire = framing.encode_header(framing.REQUEST, 1, len(body)) + body
    with pytest.raises(ProtocolError):
        decode_all(wire)


def test_data_is_not_a_control_type() -> None:
    with pytest.raises(ProtocolError):
        framing.encode_control(framing.DATA, 1, {})


def test_preauth_limit_refuses_any_frame_over_it_from_its_header() -> None:
    decoder = framing.FrameDecoder(limit=framing.MAX_PREAUTH)
    decoder.feed(framing.encode_header(framing.HELLO, 0, framing.MAX_PREAUTH + 1))
    with pytest.raises(ProtocolError, match="before the handshake is complete"):
        decoder.next_frame()


def test_preauth_limit_lets_frames_up_to_it_through_and_can_be_lifted() -> None:
    decoder = framing.FrameDecoder(limit=framing.MAX_PREAUTH)
    body = {"pad": "x" * (framing.MAX_PREAUTH - 20)}
    small = framing.encode_control(framing.HELLO, 0, body)
    assert len(small) - framing.HEADER_SIZE <= framing.MAX_PREAUTH
    assert list(decoder.frames(small)) == [(framing.HELLO, 0, body)]
    big = framing.encode_control(framing.REQUEST, 1, {"pad": "y" * 100_000})
    decoder.limit = None  # what the protocols do once the handshake is done
    [(_, _, body)] = decoder.frames(big)
    assert body["pad"] == "y" * 100_000


def test_data_frame_iov_holds_views_that_decode_to_the_bytes() -> None:
    data = bytes(range(256)) * 2049  # two full frames and a bit
    iov = framing.data_frame_iov(7, [data, b"tail"])
    assert [type(p) for p in iov[1::2]] == [memoryview] * 4  # bodies are not copied
    assert b"".join(iov) == framing.join_data_frames(7, [data, b"tail"])
    frames = list(framing.FrameDecoder().frames(b"".join(iov)))
    assert b"".join(body for _, _, body in frames) == data + b"tail"
    assert {(t, rid) for t, rid, _ in frames} == {(framing.DATA, 7)}


def test_only_a_plain_tcp_transport_is_sent_on_directly() -> None:
    from twisted.internet.testing import StringTransport

    assert framing.direct_socket(StringTransport()) is None

    class Wrapper:  # what a TLS protocol looks like to the server: not the socket's transport
        transport = StringTransport()

    assert framing.direct_socket(Wrapper()) is None


def test_data_views_decoder_hands_out_views_of_the_fed_chunks() -> None:
    """With ``data_views`` a DATA body is views into the bytes fed (one per
    chunk it spans), so the storage server copies no payload byte."""
    body = bytes(range(256)) * 40
    wire = framing.encode_header(framing.DATA, 7, len(body)) + body
    first, second = wire[:5000], wire[5000:]
    decoder = framing.FrameDecoder(data_views=True)
    decoder.feed(first)
    decoder.feed(second)
    ftype, rid, views = decoder.next_frame()
    assert (ftype, rid) == (framing.DATA, 7)
    assert [v.obj for v in views] == [first, second]
    assert b"".join(views) == body
    assert decoder.buffered == 0


def test_data_views_decoder_still_parses_control_frames() -> None:
    decoder = framing.FrameDecoder(data_views=True)
    frames = list(decoder.frames(framing.encode_control(framing.REQUEST, 3, {"op": "stat"})))
    assert frames == [(framing.REQUEST, 3, {"op": "stat"})]
    assert list(decoder.frames(framing.encode_header(framing.DATA, 3, 0))) == [
        (framing.DATA, 3, [])
    ]
