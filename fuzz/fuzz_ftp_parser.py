"""Fuzz the FTP control-line framing and argument parsers.

Invariants: ``LineBuffer`` never holds a line longer than its cap and yields
the same lines however the stream is cut; ``parse_line`` never raises and a
``Command`` carries a clean ASCII verb and no NUL/CR/LF; the argument
parsers raise only ``ArgumentError`` / ``AddressError`` (each a 5xx reply).
"""

from __future__ import annotations

import sys

import _harness
import atheris

MAX = 512


def test_one_input(data: bytes) -> None:
    from wsfront.ftp import addresses, parsing

    fdp = atheris.FuzzedDataProvider(data)
    cut = fdp.ConsumeIntInRange(0, 64)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())

    whole = parsing.LineBuffer(max_line=MAX)
    lines = list(whole.feed(stream))
    pieces = parsing.LineBuffer(max_line=MAX)
    again = []
    for start in range(0, len(stream), cut or 1):
        again.extend(pieces.feed(stream[start : start + (cut or 1)]))
        assert pieces.pending < MAX
    assert again == lines, (again, lines)

    for line in [*lines, stream]:
        if isinstance(line, parsing.LineTooLong):
            assert line.length >= MAX
            continue
        parsed = parsing.parse_line(line)
        if isinstance(parsed, parsing.Command):
            verb = parsed.verb
            assert verb.isascii() and verb.isalpha() and verb.isupper() and len(verb) <= 8
            assert not any(c in parsed.argument for c in "\x00\r\n")
            argument = parsed.argument
        elif isinstance(parsed, parsing.LineTooLong | parsing.Malformed):
            argument = line.decode("latin-1")
        else:
            raise AssertionError(f"parse_line returned {parsed!r}")
        for parse in (
            parsing.parse_offset,
            parsing.parse_allo,
            parsing.parse_time_value,
            parsing.parse_mfmt,
        ):
            try:
                parse(argument)
            except parsing.ArgumentError:
                pass
        for parse in (addresses.parse_port, addresses.parse_eprt, addresses.parse_epsv):
            try:
                target = parse(argument)
            except addresses.AddressError as e:
                assert e.code in (501, 522)
                continue
            if isinstance(target, addresses.HostPort):
                try:
                    addresses.check_active_target(target, "127.0.0.1")
                except addresses.BounceRefused:
                    pass
                else:
                    assert addresses.same_host(target.host, "127.0.0.1") and target.port >= 1024


if __name__ == "__main__":
    _harness.run(test_one_input, ("wsfront.ftp.parsing", "wsfront.ftp.addresses"))
    sys.exit(0)
