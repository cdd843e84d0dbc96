"""FTP reply formatting (RFC 959 4.2) and the standard texts wsfs uses.

A client reads a reply until a line starting with the code and a space, so a
multi-line reply must not contain such a line before its end.  ``reply``
guarantees it: every intermediate line that begins with a digit is indented
by a space (RFC 959's advice), and CR or LF inside a text split it into
lines rather than end the reply early or smuggle in a second one.  Paths in
257 replies are quoted with inner quotes doubled (RFC 959 Appendix II).
"""

from __future__ import annotations

from collections.abc import Sequence

TEXTS: dict[int, str] = {
    110: "Restart marker reply",
    120: "Service ready in a few minutes",
    125: "Data connection already open; transfer starting",
    150: "File status okay; about to open data connection",
    200: "Command okay",
    202: "Command not implemented, superfluous at this site",
    211: "System status",
    212: "Directory status",
    213: "File status",
    214: "Help message",
    215: "UNIX Type: L8",
    220: "wsfs FTP server ready",
    221: "Goodbye",
    225: "Data connection open; no transfer in progress",
    226: "Closing data connection; transfer complete",
    227: "Entering Passive Mode",
    229: "Entering Extended Passive Mode",
    230: "User logged in, proceed",
    232: "User logged in, authorized by security data exchange",
    234: "Security data exchange complete",
    250: "Requested file action okay, completed",
    257: "Created",
    331: "User name okay, need password",
    332: "Need account for login",
    350: "Requested file action pending further information",
    421: "Service not available, closing control connection",
    425: "Can't open data connection",
    426: "Connection closed; transfer aborted",
    430: "Invalid username or password",
    450: "Requested file action not taken; file unavailable",
    451: "Requested action aborted: local error in processing",
    452: "Requested action not taken: insufficient storage space",
    500: "Syntax error, command unrecognized",
    501: "Syntax error in parameters or arguments",
    502: "Command not implemented",
    503: "Bad sequence of commands",
    504: "Command not implemented for that parameter",
    521: "Data connection cannot be opened with this PROT setting",
    522: "Network protocol not supported, use (1,2)",
    530: "Not logged in",
    532: "Need account for storing files",
    534: "Request denied for policy reasons",
    550: "Requested action not taken; file unavailable",
    551: "Requested action aborted: page type unknown",
    552: "Requested file action aborted: exceeded storage allocation",
    553: "Requested action not taken; file name not allowed",
    554: "Requested action not taken: invalid REST parameter",
    555: "Requested action not taken: type or structure mismatch",
}
"""Default texts by code, for replies whose wording needs nothing specific."""


class Reply(Exception):
    """A command's answer raised from deep inside it (``501 ...``)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


def _check_code(code: int) -> None:
    if not 100 <= code <= 599:
        raise ValueError(f"FTP reply codes are 100-599, not {code}")


def _lines(text: str | Sequence[str]) -> list[str]:
    pieces = [text] if isinstance(text, str) else list(text)
    lines: list[str] = []
    for piece in pieces:
        lines.extend(piece.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return lines or [""]


def _encode(line: str) -> bytes:
    return line.encode("utf-8", "surrogateescape") + b"\r\n"


def reply(code: int, text: str | Sequence[str] | None = None) -> bytes:
    """The bytes of a reply: ``NNN text`` or a multi-line ``NNN-``...``NNN `` reply.

    ``text`` is one string (CR/LF inside it start new lines) or a sequence
    of lines; None uses ``TEXTS[code]``.  Intermediate lines beginning with
    a digit are indented by one space so no client mistakes them for the
    end; other lines are kept as given (FEAT's lines bring their own space).
    """
    _check_code(code)
    if isinstance(text, str) and "\n" not in text and "\r" not in text:
        # One line (every reply of a transfer): no splitting to do.
        return _encode(f"{code} {text}")
    lines = _lines(TEXTS.get(code, "") if text is None else text)
    if len(lines) == 1:
        return _encode(f"{code} {lines[0]}")
    out = [_encode(f"{code}-{lines[0]}")]
    for line in lines[1:-1]:
        out.append(_encode(" " + line if line[:1].isdigit() else line))
    out.append(_encode(f"{code} {lines[-1]}"))
    return b"".join(out)


def standard(code: int) -> bytes:
    """The reply ``code`` with its standard text from ``TEXTS``."""
    return reply(code, TEXTS[code])


def quote_path(path: str) -> str:
    """``path`` in double quotes with each inner ``"`` doubled (RFC 959 257 replies)."""
    return '"' + path.replace('"', '""') + '"'


def unquote_path(text: str) -> str:
    """The path of a 257 reply text (the client's side, for tests and tools)."""
    if not text.startswith('"'):
        raise ValueError(f"no quoted path in {text[:80]!r}")
    out = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            if text[i + 1 : i + 2] == '"':
                out.append('"')
                i += 2
                continue
            return "".join(out)
        out.append(ch)
        i += 1
    raise ValueError(f"unterminated quoted path in {text[:80]!r}")


def reply_257(path: str, text: str = "is the current directory") -> bytes:
    """``257 "path" text``, for PWD and MKD.

    A path can't hold CR or LF (``wsfront.paths``), so it always fits on the
    one line clients look for it on.
    """
    if "\r" in path or "\n" in path:
        raise ValueError("a path in a 257 reply cannot contain CR or LF")
    return reply(257, f"{quote_path(path)} {text}" if text else quote_path(path))
