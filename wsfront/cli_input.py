"""What the ``wsfs`` CLI reads from the operator, checked before the
catalog is touched: a password (stdin, a terminal or ``--password-file``)
and whole-number options.  Each refusal is one ``wsfs: ...`` line, never a
traceback from deep in a driver."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable

#: The largest value a catalog column holds (SQLite INTEGER, PostgreSQL
#: bigint): larger quotas or limits are refused here, not as an
#: OverflowError (SQLite) or "bigint out of range" (PostgreSQL) later.
INT64_MAX = 2**63 - 1

#: Characters no FTP client can send in PASS (the command line ends at CR
#: LF; NUL ends a C string): a password with one could never log in.
UNSENDABLE = {"\x00": "NUL", "\r": "CR", "\n": "LF"}


def _from_file(path: str) -> str:
    """The first line of ``path``, which must be UTF-8 (as stdin's is)."""
    with open(path, "rb") as f:
        line = f.readline()
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise SystemExit(f"wsfs: the password in {path} is not valid UTF-8") from None
    return text.rstrip("\r\n")


def check_password(password: str) -> str:
    """Refuse a password no client could log in with."""
    if not password:
        raise SystemExit("wsfs: an empty password is not allowed")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        # stdin decodes undecodable bytes to surrogates; hashing them would fail.
        raise SystemExit("wsfs: the password is not valid UTF-8") from None
    found = [name for char, name in UNSENDABLE.items() if char in password]
    if found:
        raise SystemExit(
            f"wsfs: the password contains {', '.join(found)}, which no FTP client can "
            "send: choose another"
        )
    return password


def read_password(args: argparse.Namespace) -> str:
    """The new password, from ``--password-file``, a terminal (asked
    twice) or the first line of stdin."""
    if getattr(args, "password_file", None):
        password = _from_file(args.password_file)
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise SystemExit("wsfs: the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    return check_password(password)


def whole(least: int, most: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse type: a whole number from ``least`` to ``most``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{text} is less than {least}")
        if value > most:
            raise argparse.ArgumentTypeError(f"{text} is more than the largest allowed, {most}")
        return value

    return parse
