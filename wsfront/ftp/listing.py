"""Directory listings for FTP: LIST (``ls -l``), NLST and RFC 3659 MLST/MLSD.

Clients parse these lines (FileZilla, lftp and curl read LIST like ``ls -l``;
``lftp mirror`` compares MLSD's ``modify`` and ``size``), so the formats are
exact.  Every function takes an iterable of ``Entry`` and yields one encoded
line at a time: a directory of 100,000 entries streams to the data
connection without the whole listing ever being built.

Dates are UTC and month names English whatever the locale.  Permissions use
the catalog's vocabulary (read, write, delete, rename, mkdir: see
``wsfront.catalog.records.PERMISSIONS``) and show in LIST's mode string and
MLST's ``perm`` fact.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from attrs import field, frozen

from wsfront.ftp.parsing import format_time_value

ALL_PERMS = frozenset({"read", "write", "delete", "rename", "mkdir"})

SIX_MONTHS = 15778476
"""Half a Gregorian year in seconds: GNU ls shows the time of files this recent,
the year of older (and of future) ones."""

MLST_FACTS = ("type", "size", "modify", "perm", "unique")
"""The facts wsfs supports, in the order they are written."""

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@frozen
class Entry:
    """One directory entry as listings show it.

    ``mtime`` is POSIX seconds; ``inode`` becomes MLST's ``unique`` fact;
    ``perms`` are what the listing user may do with it.
    """

    name: str
    is_dir: bool
    size: int
    mtime: float
    inode: int
    perms: frozenset[str] = field(default=ALL_PERMS, converter=frozenset)


# -- LIST ----------------------------------------------------------------------


def mode_string(entry: Entry) -> str:
    """The ``ls -l`` mode column, e.g. ``-rw-r--r--`` or ``dr-xr-xr-x``."""
    readable = "read" in entry.perms
    writable = "write" in entry.perms
    r = "r" if readable else "-"
    x = "x" if entry.is_dir and readable else "-"
    owner = r + ("w" if writable else "-") + x
    others = r + "-" + x
    return ("d" if entry.is_dir else "-") + owner + others + others


def list_date(mtime: float, now: float) -> str:
    """``Mon dd HH:MM`` for a time in the six months up to ``now``, else
    ``Mon dd  YYYY`` (UTC), as GNU ls: a time in the future shows its year,
    however near (ls allows no skew).  Shown without one, a date up to six
    months ahead read as the past year's: a client has no year but the
    current or last to put on ``Mon dd HH:MM`` (wget set local files a
    year early)."""
    t = time.gmtime(int(mtime // 1))
    head = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d}"
    if now - SIX_MONTHS < mtime <= now:
        return f"{head} {t.tm_hour:02d}:{t.tm_min:02d}"
    return f"{head}  {t.tm_year}"


def list_line(entry: Entry, now: float, *, owner: str = "wsfs", group: str = "wsfs") -> str:
    """One LIST line without its CRLF."""
    links = 2 if entry.is_dir else 1
    return (
        f"{mode_string(entry)} {links:>3} {owner:<8} {group:<8} {entry.size:>13} "
        f"{list_date(entry.mtime, now)} {entry.name}"
    )


def _encode(line: str) -> bytes:
    return line.encode("utf-8", "surrogateescape") + b"\r\n"


def list_lines(
    entries: Iterable[Entry],
    now: float,
    *,
    owner: str = "wsfs",
    group: str = "wsfs",
    clock: Callable[[], float] | None = None,
) -> Iterator[bytes]:
    """LIST output: one CRLF-terminated UTF-8 line per entry, lazily.

    ``now`` is read once per listing; an entry that looks newer than it
    (written while the listing ran) makes ``clock`` read again before it
    is called the future, as GNU ls does: else a file written a moment ago
    showed its year, not its time."""
    for entry in entries:
        if clock is not None and entry.mtime > now:
            now = max(now, clock())
        yield _encode(list_line(entry, now, owner=owner, group=group))


def nlst_lines(entries: Iterable[Entry]) -> Iterator[bytes]:
    """NLST output: the bare names, one CRLF-terminated line each, lazily."""
    for entry in entries:
        yield _encode(entry.name)


# -- MLST / MLSD ---------------------------------------------------------------


def perm_fact(entry: Entry) -> str:
    """RFC 3659 7.5.5 ``perm`` letters for what the user may do.

    Files: a (APPE), d (DELE), f (rename), r (RETR), w (STOR).  Directories:
    c (create files), d (RMD), e (CWD), f (rename), l (LIST), m (MKD),
    p (delete entries).
    """
    p = entry.perms
    letters = set()
    if "delete" in p:
        letters.add("d")
    if "rename" in p:
        letters.add("f")
    if entry.is_dir:
        if "read" in p:
            letters |= {"e", "l"}
        if "write" in p:
            letters.add("c")
        if "mkdir" in p:
            letters.add("m")
        if "delete" in p:
            letters.add("p")
    else:
        if "read" in p:
            letters.add("r")
        if "write" in p:
            letters |= {"a", "w"}
    return "".join(sorted(letters))


def mlst_facts(
    entry: Entry,
    facts: Sequence[str] = MLST_FACTS,
    *,
    name: str | None = None,
    kind: str | None = None,
) -> str:
    """``fact=value;...; name`` for MLST (prefix a space there) and MLSD.

    ``facts`` are the selected ones (OPTS MLST); ``name`` replaces the
    entry's name (MLST shows the path asked for); ``kind`` overrides the
    ``type`` value (``cdir``, ``pdir``).  ``size`` is given for files only.
    """
    out = []
    for fact in MLST_FACTS:
        if fact not in facts:
            continue
        if fact == "type":
            out.append(f"type={kind or ('dir' if entry.is_dir else 'file')};")
        elif fact == "size" and not entry.is_dir:
            out.append(f"size={entry.size};")
        elif fact == "modify":
            out.append(f"modify={format_time_value(entry.mtime)};")
        elif fact == "perm":
            out.append(f"perm={perm_fact(entry)};")
        elif fact == "unique":
            out.append(f"unique={entry.inode:x};")
    return "".join(out) + " " + (entry.name if name is None else name)


def mlsd_lines(
    entries: Iterable[Entry],
    facts: Sequence[str] = MLST_FACTS,
    *,
    this_dir: Entry | None = None,
    parent_dir: Entry | None = None,
) -> Iterator[bytes]:
    """MLSD output, lazily; ``this_dir``/``parent_dir`` add ``cdir``/``pdir`` lines."""
    if this_dir is not None:
        yield _encode(mlst_facts(this_dir, facts, kind="cdir"))
    if parent_dir is not None:
        yield _encode(mlst_facts(parent_dir, facts, kind="pdir"))
    for entry in entries:
        yield _encode(mlst_facts(entry, facts))


def parse_opts_mlst(argument: str) -> tuple[str, ...]:
    """The facts selected by ``OPTS MLST type;size;...`` (unknown ones dropped).

    Fact names are case-insensitive; an empty argument selects none
    (RFC 3659 7.9).
    """
    wanted = {f.strip(" ").lower() for f in argument.split(";")}
    return tuple(f for f in MLST_FACTS if f in wanted)


def opts_mlst_reply_text(selected: Sequence[str]) -> str:
    """The text of the 200 reply to OPTS MLST: ``MLST OPTS type;size;``."""
    return "MLST OPTS " + "".join(f"{f};" for f in selected)


def feat_mlst_line(selected: Sequence[str]) -> str:
    """The FEAT line for MLST: every supported fact, selected ones starred."""
    return "MLST " + "".join(f"{f}{'*' if f in selected else ''};" for f in MLST_FACTS)


_LIST_OPTION = re.compile(r"-[A-Za-z0-9]+\Z")


def parse_list_argument(argument: str) -> tuple[frozenset[str], str]:
    """(option letters, path) of a LIST/NLST/STAT argument such as ``-la docs``.

    Clients send ``ls`` options (``LIST -a``, ``LIST -la dir``) that the
    server should accept and mostly ignore, as vsftpd and pyftpdlib do.
    Leading words of the form ``-letters`` (digits too: ``ls -1``) are
    options; the rest is the path, kept as given.  A file whose name looks
    like options (``-la``) must be named with a path (``./-la``); one with
    anything else in it (``-old*``, ``-2024-backup``) is a name.  Without
    options the argument is the path exactly as sent, spaces at either end
    included, as RETR and MLSD take it: ``LIST trail `` lists the directory
    ``trail `` (stripped, it named nothing, and lftp's ``ls`` of it failed).
    """
    options: set[str] = set()
    rest = argument
    while True:
        word, _, after = rest.lstrip(" ").partition(" ")
        if not _LIST_OPTION.match(word):
            return frozenset(options), rest.lstrip(" ") if options else argument
        options.update(word[1:])
        rest = after
