"""Frames of the wsstorage wire protocol (docs/wire-protocol.md).

Every frame is a fixed 12-byte header followed by a body::

    magic "WS" (2) | version (1) | type (1) | request id (4) | body length (4)

Control frames (HELLO, CHALLENGE, AUTH, READY, REQUEST, REPLY, ERROR, END,
KEEPALIVE) carry a UTF-8 JSON object of at most ``MAX_CONTROL`` bytes; DATA
frames carry raw blob bytes, at most ``MAX_DATA``.  The caps are checked from
the header, before the body is buffered, so a hostile peer cannot make us
hold more than one frame's worth of bytes.

This module only encodes and decodes; it knows nothing about operations.
"""

from __future__ import annotations

import json
import socket
import struct
from collections import deque
from collections.abc import Iterator
from typing import Any

from twisted.internet.abstract import FileDescriptor

from wsstorage.errors import ProtocolError
from wsstorage.fsops import IOV_MAX

MAGIC = b"WS"
VERSION = 1
HEADER = struct.Struct("!2sBBII")
HEADER_SIZE = HEADER.size

#: Hard caps on a frame body, checked from the header before buffering it.
MAX_CONTROL = 1024 * 1024
MAX_DATA = 256 * 1024
#: Cap on any frame before the handshake is complete: HELLO, CHALLENGE,
#: AUTH and READY are a few hundred bytes, and a peer that has not proved
#: the secret must not make us buffer a 1 MiB frame.
MAX_PREAUTH = 4 * 1024
#: Socket read size and send limit for stream connections (tune_transport).
TRANSPORT_BUFFER = 1024 * 1024
#: SO_SNDBUF asked for on a UNIX stream socket (tune_transport); Linux
#: doubles it (to 4 MiB) and caps it at twice ``net.core.wmem_max``.
UNIX_SEND_BUFFER = 2 * TRANSPORT_BUFFER

HELLO = 1
CHALLENGE = 2
AUTH = 3
READY = 4
REQUEST = 5
REPLY = 6
ERROR = 7
DATA = 8
END = 9
KEEPALIVE = 10

FRAME_NAMES = {
    HELLO: "HELLO",
    CHALLENGE: "CHALLENGE",
    AUTH: "AUTH",
    READY: "READY",
    REQUEST: "REQUEST",
    REPLY: "REPLY",
    ERROR: "ERROR",
    DATA: "DATA",
    END: "END",
    KEEPALIVE: "KEEPALIVE",
}
CONTROL_TYPES = frozenset(FRAME_NAMES) - {DATA}
MAX_REQUEST_ID = 2**32 - 1


def encode_header(frame_type: int, request_id: int, length: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, frame_type, request_id, length)


#: ``json.dumps(body, separators=(",", ":"))`` with one encoder made once:
#: ``dumps`` with any option builds a new one per call (2 us of every
#: request and reply, on both ends).
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


def encode_control(frame_type: int, request_id: int, body: dict[str, Any]) -> bytes:
    """One control frame; raises ProtocolError if the body is over the cap."""
    if frame_type not in CONTROL_TYPES:
        raise ProtocolError(f"frame type {frame_type} is not a control frame")
    payload = _encode_json(body).encode("utf-8")
    if len(payload) > MAX_CONTROL:
        raise ProtocolError(f"control frame of {len(payload)} bytes exceeds {MAX_CONTROL}")
    return encode_header(frame_type, request_id, len(payload)) + payload


def data_frames(request_id: int, data: bytes) -> list[bytes | memoryview]:
    """Header and body pieces of DATA frames carrying ``data``, for writeSequence.

    Bodies are views of ``data`` cut at ``MAX_DATA`` (``data_frame_iov``):
    no copy until the transport joins them, however many replicas frame the
    same chunk.  ``bytes()`` copies only a caller's mutable buffer.
    """
    return data_frame_iov(request_id, [bytes(data)]) if data else []


def data_frame_iov(request_id: int, pieces: list[bytes]) -> list[bytes | memoryview]:
    """DATA frames of ``MAX_DATA`` bytes carrying ``pieces``, as a list of
    headers and views of the pieces (no byte of data copied), for a
    scatter-gather ``sendmsg``."""
    parts: list[bytes | memoryview] = []
    for data in pieces:
        view = memoryview(data)
        for start in range(0, len(view), MAX_DATA):
            body = view[start : start + MAX_DATA]
            parts.append(encode_header(DATA, request_id, len(body)))
            parts.append(body)
    return parts


def join_data_frames(request_id: int, pieces: list[bytes]) -> bytes:
    """DATA frames of ``MAX_DATA`` bytes carrying ``pieces``, as one bytes.

    The storage server builds a read batch this way in its read-ahead
    thread when it cannot send the frames with ``sendmsg`` (under TLS): a
    transport given one bytes object sends it without copying, so the one
    copy (joining headers and bodies) is made off the reactor.
    """
    return b"".join(data_frame_iov(request_id, pieces))


def direct_socket(transport: Any) -> Any:
    """The socket under ``transport`` if frames may be sent on it directly
    (``sendmsg``, bypassing the transport's buffer while that is empty), else
    None: only a plain TCP transport (not TLS, whose protocol wraps the
    socket's transport, nor a TCP transport after startTLS, whose writes
    encrypt) that is connected and not closing."""
    if not isinstance(transport, FileDescriptor) or tcp_transport(transport) is not transport:
        return None
    if getattr(transport, "TLS", False):
        return None
    sock = getattr(transport, "socket", None)
    if sock is None or not hasattr(sock, "sendmsg"):
        return None
    return sock


def transport_idle(transport: Any) -> bool:
    """True if a TCP transport holds no unsent bytes, so a direct send on its
    socket cannot overtake anything written through it before."""
    return (
        transport.connected
        and not transport.disconnecting
        and not getattr(transport, "_writeDisconnected", False)
        # abortConnection() leaves connected/disconnecting as they were
        # until the next reactor turn: nothing may go out after it.
        and not getattr(transport, "_aborting", False)
        and len(transport.dataBuffer) == transport.offset
        and not transport._tempDataLen
    )


def send_iov(transport: Any, sock: Any, iov: list[bytes | memoryview]) -> bool:
    """Send ``iov`` with one ``sendmsg`` on ``sock`` (``direct_socket``)
    while ``transport`` holds nothing unsent, so nothing is overtaken; what
    the socket does not take goes to the transport joined into one bytes
    (the only copy).  Returns whether anything was left to the transport.

    Shared by the server's read streams and the client's writes: both send
    headers and views of the bytes they hold, and must agree on order."""
    sent = 0
    if iov and sock is not None and transport_idle(transport):
        try:
            sent = sock.sendmsg(iov[:IOV_MAX])
        except OSError:
            sent = 0  # would block, or an error the transport's write will see
    rest = unsent(iov, sent)
    if rest:
        transport.write(b"".join(rest))
    return bool(rest)


def send_now(transport: Any, data: bytes) -> None:
    """Send a small message (a reply the peer waits for) into the socket at
    once when ``transport`` is plain TCP holding nothing unsent, else
    through the transport (TLS, a PROXY wrapper, a full socket): a
    transport write would wait for the reactor's next turn to send it."""
    send_iov(transport, direct_socket(transport), [data])


def unsent(iov: list[bytes | memoryview], sent: int) -> list[bytes | memoryview]:
    """What of ``iov`` is left after its first ``sent`` bytes (views, no copy)."""
    for i, part in enumerate(iov):
        if sent < len(part):
            rest = iov[i:]
            if sent:
                rest[0] = memoryview(part)[sent:]
            return rest
        sent -= len(part)
    return []


def pause_until_drained(transport: Any) -> None:
    """Pause ``transport``'s streaming producer as the transport itself does
    when its buffer is full, so that its ``doWrite`` resumes it once what
    ``send_iov`` left there is sent: the next piece then goes straight into
    the socket again instead of queueing behind the rest."""
    producer = getattr(transport, "producer", None)
    if producer is None or not transport.streamingProducer or transport.producerPaused:
        return
    transport.producerPaused = True
    producer.pauseProducing()


def decode_control(body: bytes) -> dict[str, Any]:
    """Parse a control body; anything but a JSON object is a ProtocolError."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"control frame is not JSON: {e}") from None
    except RecursionError:
        raise ProtocolError("control frame nests too deeply") from None
    if not isinstance(value, dict):
        raise ProtocolError("control frame is not a JSON object")
    return value


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, then take frames with ``next_frame``.

    A frame comes out as ``(type, request_id, body)``: control bodies parsed
    (a dict), DATA bodies as bytes (or, with ``data_views``, a list of
    memoryviews).  Any violation (bad magic, unknown version
    or type, a body over its cap, undecodable JSON) raises ProtocolError; the
    caller then drops the connection, so the decoder need not recover.
    Taking frames one at a time lets a protocol stop mid-buffer (a paused
    consumer, a pending fsync) and resume later without losing bytes; the
    buffer never holds more than what was fed and not yet taken.

    Fed chunks are kept as they are (no growing buffer); a body is one slice
    of a chunk, or one join when it spans chunks, so each byte is copied once.
    """

    def __init__(
        self, limit: int | None = None, data_views: bool = False, partial_data: bool = False
    ) -> None:
        self._chunks: deque[bytes] = deque()
        self._off = 0  # consumed bytes of self._chunks[0]
        self._len = 0  # unconsumed bytes in total
        #: When set, a cap on every frame's body whatever its type (the
        #: protocols set MAX_PREAUTH until the handshake is done, then None).
        self.limit = limit
        #: With ``data_views`` a DATA body comes out as a list of memoryviews
        #: into the fed chunks (one per chunk it spans), copying nothing: the
        #: storage server writes them to disk with one ``pwritev`` per batch.
        #: The views keep their chunks alive only as long as the caller
        #: holds them.
        self.data_views = data_views
        #: With ``partial_data`` a DATA body comes out in pieces as its bytes
        #: arrive (several DATA frames with the same request id, each piece
        #: lying in one fed chunk: a chunk wholly inside a body is passed on
        #: as it is, uncopied).  A reader then never holds a whole 256 KiB
        #: body waiting for its last byte: what it buffers is bounded by its
        #: socket read size, not the frame size (the storage client's reads).
        self.partial_data = partial_data
        self._data_left = 0  # undelivered bytes of the DATA body begun
        self._data_rid = 0

    @property
    def buffered(self) -> int:
        return self._len

    def feed(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._len += len(data)

    def wanted(self) -> int:
        """How many more bytes finish what the decoder is in the middle of
        once ``next_frame`` returned None: the rest of the DATA body begun
        (``partial_data``), else the rest of the header, else the rest of
        the frame whose header is buffered.

        A reader that receives no more than this at a time (the storage
        client's) never has a fed chunk span two frames, so every DATA
        piece comes out as the very bytes object received: no slice, no
        copy.  At least 1 (a socket read of 0 bytes means end of stream)."""
        if self._data_left:
            return max(1, self._data_left - self._len)
        if self._len < HEADER_SIZE:
            return HEADER_SIZE - self._len
        length = self._peek_header()[4]
        return max(1, HEADER_SIZE + length - self._len)

    @property
    def in_body(self) -> bool:
        """Inside a DATA body (``partial_data``) with nothing buffered: the
        next bytes received are body bytes (``body_piece``)."""
        return bool(self._data_left) and not self._len

    def body_piece(self, data: bytes) -> tuple[int, int, bytes]:
        """``data``, received ``in_body`` and at most ``wanted`` bytes, as
        the piece ``next_frame`` would return once it was fed: the same
        frame, without a trip through the buffer."""
        if self._len or not 0 < len(data) <= self._data_left:
            raise ValueError("body_piece outside a DATA body")
        self._data_left -= len(data)
        return DATA, self._data_rid, data

    def _peek_header(self) -> tuple[bytes, int, int, int, int]:
        first = self._chunks[0]
        if len(first) - self._off >= HEADER_SIZE:
            return HEADER.unpack_from(first, self._off)
        return HEADER.unpack(self._take(HEADER_SIZE, consume=False))

    def _take(self, n: int, consume: bool = True) -> bytes:
        chunks, off = self._chunks, self._off
        first = chunks[0]
        if len(first) - off >= n:
            piece = first if off == 0 and n == len(first) else first[off : off + n]
            if consume:
                self._advance(n)
            return piece
        parts = []
        need = n
        for chunk in chunks:
            part = chunk[off : off + need] if off or need < len(chunk) else chunk
            parts.append(part)
            need -= len(part)
            off = 0
            if not need:
                break
        if consume:
            self._advance(n)
        return b"".join(parts)

    def _take_views(self, n: int) -> list[memoryview]:
        """The next ``n`` bytes as views of the chunks they lie in (no copy)."""
        views: list[memoryview] = []
        off, need = self._off, n
        for chunk in self._chunks:
            view = memoryview(chunk)[off : off + need]
            views.append(view)
            need -= len(view)
            off = 0
            if not need:
                break
        self._advance(n)
        return views

    def _advance(self, n: int) -> None:
        self._len -= n
        chunks = self._chunks
        while n:
            left = len(chunks[0]) - self._off
            if n < left:
                self._off += n
                return
            n -= left
            chunks.popleft()
            self._off = 0

    def next_frame(self) -> tuple[int, int, Any] | None:
        """The next complete frame, or None until more bytes are fed."""
        if self._data_left:
            return self._next_piece()
        if self._len < HEADER_SIZE:
            return None
        magic, version, ftype, request_id, length = self._peek_header()
        check_header(magic, version, ftype, length)
        if self.limit is not None and length > self.limit:
            raise ProtocolError(
                f"{FRAME_NAMES[ftype]} frame of {length} bytes before the handshake is"
                f" complete exceeds the {self.limit}-byte cap"
            )
        if self.partial_data and ftype == DATA and length:
            self._advance(HEADER_SIZE)
            self._data_left, self._data_rid = length, request_id
            return self._next_piece()
        if self._len < HEADER_SIZE + length:
            return None
        self._advance(HEADER_SIZE)
        if ftype == DATA:
            if self.data_views:
                return ftype, request_id, self._take_views(length) if length else []
            return ftype, request_id, self._take(length) if length else b""
        body = self._take(length) if length else b""
        return ftype, request_id, decode_control(body)

    def _next_piece(self) -> tuple[int, int, bytes] | None:
        """What is buffered of the DATA body begun, up to the end of the
        first fed chunk (partial_data)."""
        if not self._len:
            return None
        n = min(self._data_left, len(self._chunks[0]) - self._off)
        self._data_left -= n
        return DATA, self._data_rid, self._take(n)

    def frames(self, data: bytes = b"") -> Iterator[tuple[int, int, Any]]:
        """Feed ``data`` and yield every complete frame (for simple callers)."""
        self.feed(data)
        while (frame := self.next_frame()) is not None:
            yield frame


def tcp_transport(transport: Any) -> Any:
    """The TCP transport under ``transport``, or None if there is none.

    With TLS (``ssl:`` server endpoints, ``tls:`` client endpoints) the
    protocol's transport is Twisted's TLS wrapper; the socket's transport
    is its ``transport``.  The wrapper forwards unknown attribute reads to
    it but keeps attribute writes, so tuning must reach the real one.
    """
    for _ in range(4):  # TLS over TCP is two levels; never loop forever
        if isinstance(transport, FileDescriptor):
            return transport
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def tune_transport(transport: Any) -> None:
    """Raise a TCP transport's read size and send limit, and turn Nagle off.

    Twisted's defaults (64 KiB per read, 128 KiB per send) cost a reactor
    turn per 64 KiB of a stream; 1 MiB cuts that overhead several-fold while
    still bounding a connection's buffers.  Under TLS the TCP transport
    beneath the TLS wrapper is tuned (the wrapper itself reads and sends
    what the TCP transport gives it and pauses with it).
    """
    tcp = tcp_transport(transport)
    if tcp is None:
        return
    tcp.bufferSize = TRANSPORT_BUFFER
    # A read batch is 1 MiB of data plus its frame headers: one send() takes
    # all of it (what the kernel accepts), not 1 MiB and a 48-byte remainder
    # a reactor turn later.
    tcp.SEND_LIMIT = 2 * TRANSPORT_BUFFER
    # Requests and replies are small frames answered one at a time: Nagle's
    # algorithm would hold each back until the previous one is acknowledged
    # (up to 40 ms per round trip with delayed ACKs).
    # A UNIX socket has no Nagle (Twisted's UNIX transport inherits
    # setTcpNoDelay, which fails there): it gets its send buffer instead.
    sock = getattr(tcp, "socket", None)
    if getattr(sock, "family", None) == socket.AF_UNIX:
        tune_unix_socket(sock)
        return
    set_no_delay = getattr(tcp, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass  # not a TCP socket (tests)


def tune_unix_socket(sock: Any) -> None:
    """Give a UNIX stream socket a send buffer of UNIX_SEND_BUFFER.

    TCP grows its buffers as a stream needs (up to ``tcp_wmem``, 4 MiB by
    default); a UNIX stream socket keeps ``net.core.wmem_default``, 208
    KiB, and that alone bounds what is in flight (its receive buffer is
    not used: the sender's is charged for what the peer has not read).
    A 1 MiB ``sendmsg`` of an upload then took a fifth of its bytes and
    left the rest for later reactor turns.  Both ends are tuned: each
    sends (uploads one way, read streams the other).  Any other socket is
    left alone (setting SO_SNDBUF on TCP would end its autotuning)."""
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 2 * UNIX_SEND_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER)
    except OSError:
        pass  # closed meanwhile: the transport will see it


def check_header(magic: bytes, version: int, ftype: int, length: int) -> None:
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks {VERSION})")
    if ftype not in FRAME_NAMES:
        raise ProtocolError(f"unknown frame type {ftype}")
    cap = MAX_DATA if ftype == DATA else MAX_CONTROL
    if length > cap:
        raise ProtocolError(
            f"{FRAME_NAMES[ftype]} frame of {length} bytes exceeds the {cap}-byte cap"
        )
