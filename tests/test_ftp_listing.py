"""LIST, NLST and MLSD lines are exact, and listings stream entry by entry."""

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsfront.ftp.listing import (
    MLST_FACTS,
    SIX_MONTHS,
    Entry,
    feat_mlst_line,
    list_date,
    list_line,
    list_lines,
    mlsd_lines,
    mlst_facts,
    mode_string,
    nlst_lines,
    opts_mlst_reply_text,
    parse_list_argument,
    parse_opts_mlst,
    perm_fact,
)
from wsfront.ftp.parsing import parse_time_value

NOW = parse_time_value("20261127000000")
FILE = Entry("notes.txt", False, 1234, parse_time_value("20261101093005"), 0x2A)
DIR = Entry("docs", True, 0, parse_time_value("20240229235959"), 7)
READ_ONLY = frozenset({"read"})


def test_list_line_looks_like_ls_l():
    assert list_line(FILE, NOW) == (
        "-rw-r--r--   1 wsfs     wsfs              1234 Nov  1 09:30 notes.txt"
    )
    assert list_line(DIR, NOW, owner="alice", group="users") == (
        "drwxr-xr-x   2 alice    users                0 Feb 29  2024 docs"
    )


def test_list_line_is_what_ls_parsers_expect():
    pattern = re.compile(
        r"([-d][-rwx]{9}) +\d+ +\S+ +\S+ +(\d+) +(\w{3} [ \d]\d (?:\d\d:\d\d| \d{4})) (.+)"
    )
    match = pattern.fullmatch(list_line(Entry("a b.txt", False, 5, NOW - 60, 1), NOW))
    assert match is not None
    assert match.group(2, 4) == ("5", "a b.txt")


@pytest.mark.parametrize(
    ("mtime", "expected"),
    [
        (NOW - 60, "Nov 26 23:59"),
        (NOW - SIX_MONTHS + 60, "May 28 09:06"),
        (NOW - SIX_MONTHS - 86400, "May 27  2026"),
        (NOW, "Nov 27 00:00"),
        # The future shows its year, however near (GNU ls): without one a
        # client reads "Nov 27 01:00" as last year's.
        (NOW + 1, "Nov 27  2026"),
        (NOW + 3600, "Nov 27  2026"),
        (NOW + SIX_MONTHS - 86400, "May 27  2027"),
        (NOW + SIX_MONTHS + 86400, "May 29  2027"),
        (0, "Jan  1  1970"),
    ],
)
def test_list_date_shows_the_time_in_the_last_six_months_and_the_year_otherwise(mtime, expected):
    assert list_date(mtime, NOW) == expected


def test_mode_string_follows_permissions():
    assert mode_string(Entry("f", False, 0, 0, 1, READ_ONLY)) == "-r--r--r--"
    assert mode_string(Entry("d", True, 0, 0, 1, READ_ONLY)) == "dr-xr-xr-x"
    assert mode_string(Entry("f", False, 0, 0, 1, {"write"})) == "--w-------"
    assert mode_string(Entry("d", True, 0, 0, 1, set())) == "d---------"


def test_perm_fact_letters():
    assert perm_fact(FILE) == "adfrw"
    assert perm_fact(DIR) == "cdeflmp"
    assert perm_fact(Entry("f", False, 0, 0, 1, READ_ONLY)) == "r"
    assert perm_fact(Entry("d", True, 0, 0, 1, READ_ONLY)) == "el"
    assert perm_fact(Entry("d", True, 0, 0, 1, set())) == ""


def test_mlst_facts_line():
    assert mlst_facts(FILE) == (
        "type=file;size=1234;modify=20261101093005;perm=adfrw;unique=2a; notes.txt"
    )
    assert mlst_facts(DIR) == "type=dir;modify=20240229235959;perm=cdeflmp;unique=7; docs"
    assert mlst_facts(FILE, ("size",), name="/x/notes.txt") == "size=1234; /x/notes.txt"
    assert mlst_facts(FILE, ()) == " notes.txt"


def test_mlsd_lines_with_cdir_and_pdir():
    lines = list(mlsd_lines([FILE], ("type",), this_dir=DIR, parent_dir=DIR))
    assert lines == [b"type=cdir; docs\r\n", b"type=pdir; docs\r\n", b"type=file; notes.txt\r\n"]


def test_opts_mlst_selects_known_facts_in_canonical_order():
    assert parse_opts_mlst("Size;TYPE;bogus;") == ("type", "size")
    assert parse_opts_mlst("") == ()
    assert opts_mlst_reply_text(("type", "size")) == "MLST OPTS type;size;"
    assert opts_mlst_reply_text(()) == "MLST OPTS "
    assert feat_mlst_line(("type", "modify")) == "MLST type*;size;modify*;perm;unique;"


def test_a_file_newer_than_the_listings_clock_reading_reads_the_clock_again():
    """``now`` is read once per listing: a file written while it ran looks
    newer and showed its year as if in the future.  Its time is shown once
    the clock, read again (as GNU ls does), has passed it; still ahead of
    the clock, it keeps its year.  The clock is read only then."""
    readings = iter([NOW + 30, NOW + 30])
    calls = []

    def clock() -> float:
        calls.append(1)
        return next(readings)

    entries = [
        Entry("old", False, 1, NOW - 60, 1),
        Entry("just-written", False, 1, NOW + 20, 2),
        Entry("ahead", False, 1, NOW + 3600, 3),
    ]
    lines = [line.decode() for line in list_lines(entries, NOW, clock=clock)]
    assert "Nov 26 23:59 old" in lines[0]
    assert "Nov 27 00:00 just-written" in lines[1]
    assert "Nov 27  2026 ahead" in lines[2]
    assert len(calls) == 2


def test_lines_are_utf8_with_crlf():
    entry = Entry("caf\u00e9.txt", False, 1, NOW, 1)
    assert list(nlst_lines([entry])) == ["caf\u00e9.txt\r\n".encode()]
    assert next(list_lines([entry], NOW)).endswith(" caf\u00e9.txt\r\n".encode())


def test_a_huge_listing_streams_without_being_built():
    consumed = 0

    def entries():
        nonlocal consumed
        for i in itertools.count():
            consumed += 1
            yield Entry(f"file{i}", False, i, NOW, i)

    for producer in (
        list_lines(entries(), NOW),
        nlst_lines(entries()),
        mlsd_lines(entries()),
    ):
        consumed = 0
        first = list(itertools.islice(producer, 3))
        assert len(first) == 3 and consumed == 3


def test_one_hundred_thousand_entries_list_in_order():
    lines = nlst_lines(Entry(f"f{i}", False, 0, NOW, i) for i in range(100_000))
    count = 0
    for i, line in enumerate(lines):
        assert line == f"f{i}\r\n".encode()
        count += 1
    assert count == 100_000


names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(
    lambda n: n.strip() == n and n
)


@settings(max_examples=200)
@given(names, st.booleans(), st.integers(0, 2**50), st.integers(0, 2**34), st.integers(0, 2**62))
def test_mlsd_facts_parse_back(name, is_dir, size, mtime, inode):
    entry = Entry(name, is_dir, size, mtime, inode)
    (line,) = mlsd_lines([entry])
    text = line.decode("utf-8")
    assert text.endswith("\r\n")
    facts_text, _, shown = text[:-2].partition(" ")
    assert shown == name
    facts = dict(f.split("=", 1) for f in facts_text.split(";") if f)
    assert facts["type"] == ("dir" if is_dir else "file")
    assert parse_time_value(facts["modify"]) == mtime
    assert int(facts["unique"], 16) == inode
    assert ("size" in facts) == (not is_dir)
    assert set(facts) <= set(MLST_FACTS)


@settings(max_examples=200)
@given(st.integers(0, 2**34), st.integers(0, 2**34))
def test_list_date_has_one_of_two_fixed_widths(mtime, now):
    date = list_date(mtime, now)
    assert len(date) == 12
    assert re.fullmatch(r"\w{3} [ \d]\d (\d\d:\d\d| \d{4})", date)


@pytest.mark.parametrize(
    ("argument", "options", "path"),
    [
        ("", set(), ""),
        ("docs", set(), "docs"),
        ("-la", {"l", "a"}, ""),
        ("-l -a docs", {"l", "a"}, "docs"),
        ("-la my dir", {"l", "a"}, "my dir"),
        ("./-la", set(), "./-la"),
        ("-", set(), "-"),
        ("--", set(), "--"),
        ("-1 x", {"1"}, "x"),  # ls -1: one name a line
        ("-1a", {"1", "a"}, ""),
        ("-2024-backup", set(), "-2024-backup"),
        ("-old*", set(), "-old*"),
        ("a -l", set(), "a -l"),
        (" lead", set(), " lead"),  # names may begin or end with spaces
        ("trail ", set(), "trail "),
        ("-la trail ", {"l", "a"}, "trail "),
        ("  ", set(), "  "),  # no name: the cwd
    ],
)
def test_list_argument_splits_ls_options_from_the_path(argument, options, path):
    assert parse_list_argument(argument) == (frozenset(options), path)
