"""The commands the FTP server knows: login needs, arguments, help, FEAT.

One table, so HELP, FEAT and the dispatcher can't disagree: every command
HELP lists has a handler (``FTPControl.ftp_<VERB>``), and a test checks it.
"""

from __future__ import annotations

from attrs import frozen


@frozen
class CommandSpec:
    """``login``: refused with 530 before login; ``needs_arg``: 501 without one.

    ``touches_files``: a logged-in command that acts on files or the
    namespace (a file, a directory, a listing, a transfer).  It first has
    the session's login confirmed with the catalog once the login is older
    than the login cache's TTL (``FTPControl._confirm_then``): an account
    deleted, created again for someone else under the same name, or whose
    password changed, is noticed within the TTL, as over HTTP.  The others
    (TYPE, PASV, REST, ...) run on the login as it is; ABOR and STAT act on
    the session's own transfer, and must stay immediate."""

    login: bool
    needs_arg: bool
    help: str
    touches_files: bool


def _spec(
    login: bool, needs_arg: bool, help: str, touches_files: bool | None = None
) -> CommandSpec:
    """A command's spec; a logged-in command touches files unless it says not."""
    return CommandSpec(login, needs_arg, help, login if touches_files is None else touches_files)


COMMANDS: dict[str, CommandSpec] = {
    "USER": _spec(False, True, "<username>"),
    "PASS": _spec(False, False, "<password>"),
    "QUIT": _spec(False, False, "(end the session)"),
    "NOOP": _spec(False, False, ""),
    "SYST": _spec(False, False, "(system type)"),
    "FEAT": _spec(False, False, "(list extensions)"),
    "HELP": _spec(False, False, "[<command>]"),
    "OPTS": _spec(False, True, "UTF8 ON | MLST <facts> | HASH [<algorithm>]"),
    "TYPE": _spec(True, True, "A | I", touches_files=False),
    "MODE": _spec(True, True, "S", touches_files=False),
    "STRU": _spec(True, True, "F", touches_files=False),
    "ALLO": _spec(
        True, True, "<size> [R <record size>] (the file's size, for placement)", touches_files=False
    ),
    "PWD": _spec(True, False, "(current directory)", touches_files=False),
    "CWD": _spec(True, True, "<directory>"),
    "CDUP": _spec(True, False, "(parent directory)"),
    "MKD": _spec(True, True, "<directory>"),
    "RMD": _spec(True, True, "<directory>"),
    "DELE": _spec(True, True, "<file>"),
    "RNFR": _spec(True, True, "<old name>"),
    "RNTO": _spec(True, True, "<new name>"),
    "SIZE": _spec(True, True, "<file> (binary mode only)"),
    "MDTM": _spec(True, True, "<file>"),
    "MLST": _spec(True, False, "[<path>]"),
    "PASV": _spec(True, False, "(passive data connection)", touches_files=False),
    "EPSV": _spec(True, False, "[1 | 2 | ALL]", touches_files=False),
    "PORT": _spec(True, True, "h1,h2,h3,h4,p1,p2", touches_files=False),
    "EPRT": _spec(True, True, "|proto|address|port|", touches_files=False),
    "REST": _spec(
        True, True, "<offset> (binary mode only; right before RETR/STOR)", touches_files=False
    ),
    "RETR": _spec(True, True, "<file>"),
    "STOR": _spec(True, True, "<file>"),
    "STOU": _spec(True, False, "[<base name> | <directory>/] (store under a unique name)"),
    "APPE": _spec(True, True, "<file>"),
    "LIST": _spec(True, False, "[<path>]"),
    "NLST": _spec(True, False, "[<path>]"),
    "MLSD": _spec(True, False, "[<directory>]"),
    "ABOR": _spec(True, False, "(abort the transfer)", touches_files=False),
    "STAT": _spec(True, False, "(server status)", touches_files=False),
    "ACCT": _spec(False, False, "<account> (not needed)"),
    "MFMT": _spec(True, True, "YYYYMMDDHHMMSS[.sss] <file>"),
    "HASH": _spec(True, True, "<file> (digest, algorithm set with OPTS HASH)"),
    "SITE": _spec(True, True, "HELP | CHMOD <mode> <path>"),
    "AUTH": _spec(False, True, "TLS"),
    "PBSZ": _spec(False, True, "0"),
    "PROT": _spec(False, True, "C | P"),
    # RFC 775's names, which RFC 1123 4.1.3.1 asks servers to accept too:
    # Windows' ftp.exe sends XPWD for pwd, XMKD for mkdir, XRMD for rmdir.
    "XPWD": _spec(True, False, "(same as PWD)", touches_files=False),
    "XCWD": _spec(True, True, "<directory> (same as CWD)"),
    "XCUP": _spec(True, False, "(same as CDUP)"),
    "XMKD": _spec(True, True, "<directory> (same as MKD)"),
    "XRMD": _spec(True, True, "<directory> (same as RMD)"),
}

FEATURES: tuple[str, ...] = (
    "EPRT",
    "EPSV",
    "HASH",
    "MDTM",
    "MFMT",
    "MLST",
    "PASV",
    "REST STREAM",
    "SIZE",
    "TVFS",
    "UTF8",
)
"""FEAT lines; ``MLST`` and ``HASH`` are expanded by the protocol, which
adds the FTPS lines (AUTH TLS, PBSZ, PROT) when a certificate is configured."""


def help_lines() -> list[str]:
    """The 214 reply to HELP: every command, eight a line."""
    verbs = sorted(COMMANDS)
    rows = [" ".join(f"{v:<5}" for v in verbs[i : i + 8]).rstrip() for i in range(0, len(verbs), 8)]
    return ["The following commands are recognized:", *rows, "Help OK"]
