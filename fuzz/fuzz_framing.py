"""Fuzz the wsstorage wire-protocol decoder (``wsstorage.framing``).

Invariants: ``FrameDecoder`` raises only ``ProtocolError`` (the server
drops the peer on it), never returns a body over its cap, never buffers
more than it was fed, and decodes the same frames however the bytes are
cut.  Known bug (``WSFS_FUZZ_KNOWN=allow`` skips it): deeply nested JSON
in a control body raises RecursionError
(tests/test_fuzz_parsers.py::test_deeply_nested_control_json_is_a_protocol_error).
"""

from __future__ import annotations

import sys

import _harness
import atheris


def _decode(stream: bytes, step: int):
    from wsstorage import framing

    decoder = framing.FrameDecoder()
    frames = []
    for start in range(0, len(stream), step):
        decoder.feed(stream[start : start + step])
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
        assert decoder.buffered <= len(stream)
    return frames


def test_one_input(data: bytes) -> None:
    from wsstorage import framing
    from wsstorage.errors import ProtocolError

    fdp = atheris.FuzzedDataProvider(data)
    step = fdp.ConsumeIntInRange(1, 64)
    # Mostly well-formed headers so the fuzzer gets past the magic quickly.
    stream = b""
    while fdp.remaining_bytes() > 0:
        if fdp.ConsumeBool():
            ftype = fdp.ConsumeIntInRange(0, 11)
            body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80))
            length = fdp.PickValueInList([len(body), len(body), framing.MAX_DATA + 1, 2**32 - 1])
            stream += framing.encode_header(ftype, fdp.ConsumeIntInRange(0, 9), length) + body
        else:
            stream += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
    results = []
    for cut in (len(stream) or 1, step):
        try:
            frames = _decode(stream, cut)
        except ProtocolError as e:
            results.append(("error", str(e)[:0]))
            continue
        except RecursionError:
            if _harness.allow_known():
                return
            raise
        for ftype, _rid, body in frames:
            assert ftype in framing.FRAME_NAMES
            if ftype == framing.DATA:
                assert isinstance(body, bytes) and len(body) <= framing.MAX_DATA
            else:
                assert isinstance(body, dict)
        results.append(("ok", frames))
    # Chunking must not change what is decoded (an error may come earlier or
    # later in the stream, but frames before it are the same).
    if results[0][0] == results[1][0] == "ok":
        assert results[0] == results[1]


if __name__ == "__main__":
    _harness.run(test_one_input, ("wsstorage.framing",))
    sys.exit(0)
