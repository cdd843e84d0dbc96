"""FTP control lines into commands, and the numbers and times in their arguments.

The control connection faces hostile clients (issue 6): garbage, NULs, telnet
IAC sequences, invalid UTF-8 and 10 KiB lines must each get a reply and leave
the session usable.  So framing and parsing never raise:

- ``LineBuffer`` splits the byte stream on LF (CRLF or bare LF) and, past
  ``MAX_LINE_BYTES``, yields one ``LineTooLong`` and discards the rest of that
  line, so the server answers 500 and reads the next command.
- ``parse_line`` strips telnet IAC sequences (clients send IAC IP, IAC DM
  before ABOR), refuses NUL and stray CR, and decodes UTF-8, falling back to
  ``surrogateescape`` and saying so: the bytes survive, and the path layer
  refuses such names instead of guessing an encoding.  A telnet sequence
  inside an argument is refused (501), not stripped: it is most likely a
  raw 0xFF of a Latin-1 name that RFC 959 wanted doubled, and stripping it
  with the bytes after it (``bad\xff\xfe.txt`` was stored as ``badtxt``)
  would silently act on another name.

The verb is upper-cased; the argument is everything after the first space,
kept exactly (a filename may begin or end with spaces).
"""

from __future__ import annotations

import calendar
import math
import re
import time
from collections.abc import Iterator

from attrs import frozen

MAX_LINE_BYTES = 4096
"""Longest command line accepted, CRLF included."""

IAC = 255
_DONT, _DO, _WONT, _WILL = 254, 253, 252, 251
_SB, _SE = 250, 240

MAX_OFFSET = 2**63 - 1
"""Largest REST/ALLO value: what a signed 64-bit file offset holds."""

_VERB = re.compile(r"[A-Za-z]{1,8}\Z")


@frozen
class Command:
    """One parsed command: ``verb`` upper-cased, ``argument`` as sent ('' if none).

    ``valid_utf8`` is False when the line was not UTF-8 and the argument was
    decoded with ``surrogateescape``.
    """

    verb: str
    argument: str = ""
    valid_utf8: bool = True


@frozen
class LineTooLong:
    """A line longer than ``MAX_LINE_BYTES``: answer 500 and go on."""

    length: int


@frozen
class Malformed:
    """A line that is no command (empty, NUL, stray CR, bad verb): answer
    ``code`` (500; 501 for a bad argument)."""

    reason: str
    code: int = 500


ParsedLine = Command | LineTooLong | Malformed


class LineBuffer:
    """Splits control-connection bytes into lines, bounded in memory.

    ``feed`` yields each complete line (without its LF or CRLF) as bytes, or
    a ``LineTooLong`` for a line that exceeded the cap.  Memory held is at
    most ``max_line`` bytes whatever the client sends.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max = max_line
        self._buffer = bytearray()
        self._discarding = 0

    def feed(self, data: bytes) -> Iterator[bytes | LineTooLong]:
        """The lines completed by ``data``, in order."""
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if self._discarding:
                self._discarding += len(piece)
            else:
                self._buffer += piece
                if len(self._buffer) + 1 > self._max:
                    self._discarding = len(self._buffer)
                    self._buffer.clear()
            if end < 0:
                return
            start = end + 1
            if self._discarding:
                yield LineTooLong(self._discarding + 1)
                self._discarding = 0
            else:
                line = bytes(self._buffer)
                self._buffer.clear()
                yield line[:-1] if line.endswith(b"\r") else line

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held so far."""
        return len(self._buffer)


def strip_telnet(line: bytes) -> bytes:
    """``line`` without telnet IAC sequences; ``IAC IAC`` becomes one 0xFF byte."""
    return _strip_telnet(line)[0]


def _strip_telnet(line: bytes) -> tuple[bytes, bool]:
    """``line`` without telnet IAC sequences, and whether any but ``IAC IAC``
    stood after the first space (inside the argument).

    Handles two-byte commands (IP, DM, AO, AYT, ...), three-byte option
    negotiation (WILL/WONT/DO/DONT opt) and subnegotiation (SB ... IAC SE).
    An IAC followed by a byte that is no telnet command (below 0xF0), or
    ending the line, is dropped alone: lftp's ABOR sends ``IAC IP IAC``
    in-band and the final DM as urgent data, which the stream loses where
    urgent data is not kept inline, so the server reads ``IAC IP IAC`` +
    ``ABOR``; taking that IAC and the ``A`` as one command left ``BOR``
    (RFC 854 defines no such command; the byte after it is data).
    """
    if IAC not in line:
        return line, False
    out = bytearray()
    i, n = 0, len(line)
    in_argument = inside = False
    while i < n:
        b = line[i]
        if b != IAC:
            out.append(b)
            in_argument = in_argument or b == 0x20
            i += 1
            continue
        nxt = line[i + 1] if i + 1 < n else None
        if nxt == IAC:
            out.append(IAC)
            i += 2
            continue
        inside = inside or in_argument
        if nxt in (_WILL, _WONT, _DO, _DONT):
            i += 3
        elif nxt == _SB:
            end = line.find(bytes([IAC, _SE]), i + 2)
            i = n if end < 0 else end + 2
        elif nxt is None or nxt < _SE:
            i += 1
        else:
            i += 2
    return bytes(out), inside


def parse_line(line: bytes) -> ParsedLine:
    """One control line (with or without its CRLF / LF) as a ``Command``.

    Never raises: a line that can't be a command is a ``Malformed`` saying
    why, one longer than ``MAX_LINE_BYTES`` a ``LineTooLong``.
    """
    if len(line) > MAX_LINE_BYTES:
        return LineTooLong(len(line))
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    line, telnet_in_argument = _strip_telnet(line)
    if telnet_in_argument:
        return Malformed("telnet sequence inside an argument (send a 0xFF byte as IAC IAC)", 501)
    if b"\x00" in line:
        return Malformed("NUL in command line")
    if b"\r" in line or b"\n" in line:
        return Malformed("CR or LF inside command line")
    verb_bytes, _, arg_bytes = line.partition(b" ")
    try:
        verb = verb_bytes.decode("ascii")
    except UnicodeDecodeError:
        return Malformed("command verb is not ASCII")
    if not _VERB.match(verb):
        return Malformed("empty command line" if not line.strip() else "bad command verb")
    try:
        return Command(verb.upper(), arg_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        return Command(verb.upper(), arg_bytes.decode("utf-8", "surrogateescape"), False)


# -- arguments -----------------------------------------------------------------


class ArgumentError(ValueError):
    """A command's argument doesn't parse; the message is fit for a 501 reply."""


def parse_offset(argument: str) -> int:
    """The non-negative decimal of REST (and of ALLO's first field).

    Digits only: no sign, no spaces inside, at most ``MAX_OFFSET``.
    """
    text = argument.strip(" ")
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise ArgumentError(f"expected a non-negative integer, not {argument[:40]!r}")
    value = int(text)
    if value > MAX_OFFSET:
        raise ArgumentError(f"{value} is too large")
    return value


def parse_allo(argument: str) -> int:
    """The size of ``ALLO n`` or ``ALLO n R m`` (the record size is ignored)."""
    first, _, rest = argument.strip(" ").partition(" ")
    size = parse_offset(first)
    rest = rest.strip(" ")
    if rest:
        marker, _, record = rest.partition(" ")
        if marker.upper() != "R":
            raise ArgumentError(f"expected 'ALLO n [R m]', not {argument[:40]!r}")
        parse_offset(record)
    return size


_TIME_VALUE = re.compile(
    r"([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})(\.[0-9]{1,9})?"
)


def parse_time_value(text: str) -> float:
    """POSIX seconds of an RFC 3659 time-val ``YYYYMMDDHHMMSS[.sss]`` (UTC)."""
    match = _TIME_VALUE.fullmatch(text)
    if match is None:
        raise ArgumentError(f"expected YYYYMMDDHHMMSS[.sss], not {text[:40]!r}")
    year, month, day, hh, mm, ss = (int(g) for g in match.groups()[:6])
    if not (year >= 1 and 1 <= month <= 12 and hh <= 23 and mm <= 59 and ss <= 60):
        raise ArgumentError(f"{text} is not a valid time")
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        raise ArgumentError(f"{text} is not a valid date")
    seconds = calendar.timegm((year, month, day, hh, mm, min(ss, 59), 0, 0, 0))
    fraction = float(match.group(7)) if match.group(7) else 0.0
    return seconds + fraction


def format_time_value(seconds: float, *, fraction_digits: int = 0) -> str:
    """``YYYYMMDDHHMMSS[.sss]`` (UTC) of POSIX ``seconds``, as MDTM and MLST show it.

    The fraction is truncated, never rounded up into the next second, so a
    time set with MFMT reads back as it was set.
    """
    whole = math.floor(seconds)
    t = time.gmtime(whole)
    text = (
        f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}{t.tm_hour:02d}{t.tm_min:02d}{t.tm_sec:02d}"
    )
    if fraction_digits:
        scale = 10**fraction_digits
        # A little slack absorbs binary float error (x.001 stored as x.000999...).
        frac = min(math.floor((seconds - whole) * scale + 0.05), scale - 1)
        text += f".{frac:0{fraction_digits}d}"
    return text


def names_directory(argument: str) -> bool:
    """Whether path ``argument`` ends in '/' (or '/.'): such a path can only
    name a directory.  Resolving drops the slash, so without this check
    ``DELE file/`` deleted the file; POSIX refuses it (ENOTDIR)."""
    return argument.endswith(("/", "/."))


def parse_mfmt(argument: str) -> tuple[float, str]:
    """(time, path) of ``MFMT YYYYMMDDHHMMSS path`` (also the MDTM-with-time form).

    The path is everything after the single space, kept as sent.
    """
    stamp, sep, path = argument.partition(" ")
    if not sep or not path:
        raise ArgumentError("expected 'YYYYMMDDHHMMSS path'")
    return parse_time_value(stamp), path
