"""TYPE A line-end conversion, streamed chunk by chunk in both directions.

Data arrives and leaves in arbitrary chunks, so a CR at the end of one chunk
may belong to an LF at the start of the next.  Each converter keeps the one
byte of state it needs, so its output never depends on how the input was cut,
and memory stays constant whatever the file size.

- ``ToNetwork`` (RETR): a LF not already preceded by CR becomes CRLF; an
  existing CRLF passes unchanged, so a file with Windows line ends is not
  doubled.
- ``FromNetwork`` (STOR): CRLF becomes LF; a CR not followed by LF is kept.

A stored Unix text file sent with ``ToNetwork`` and received back with
``FromNetwork`` is byte-for-byte what it was.
"""

from __future__ import annotations

_CR = 0x0D
_LF = 0x0A


class ToNetwork:
    """LF -> CRLF for RETR in ASCII mode."""

    def __init__(self) -> None:
        self._after_cr = False

    def feed(self, chunk: bytes) -> bytes:
        """The converted bytes of ``chunk``; nothing is held back."""
        if not chunk:
            return b""
        # Normalising CRLF to LF first leaves existing CRLFs single after the LF -> CRLF.
        out = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._after_cr and chunk[0] == _LF:
            out = out[1:]
        self._after_cr = chunk[-1] == _CR
        return out

    def flush(self) -> bytes:
        """The end of the stream: nothing is ever pending, so always empty."""
        self._after_cr = False
        return b""


class FromNetwork:
    """CRLF -> LF for STOR in ASCII mode; a CR ending a chunk waits for the next."""

    def __init__(self) -> None:
        self._held_cr = False

    def feed(self, chunk: bytes) -> bytes:
        """The converted bytes of ``chunk``, less a trailing CR held back."""
        if not chunk:
            return b""
        if self._held_cr:
            chunk = b"\r" + chunk
        self._held_cr = chunk[-1] == _CR
        if self._held_cr:
            chunk = chunk[:-1]
        return chunk.replace(b"\r\n", b"\n")

    def flush(self) -> bytes:
        """The end of the stream: a CR still held is a lone CR, kept as is."""
        held, self._held_cr = self._held_cr, False
        return b"\r" if held else b""
