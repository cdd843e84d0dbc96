"""wsfront.text.one_line: what a log line, an FTP reply and the storage
server table make of a message."""

from wsfront.text import one_line


def test_line_breaks_and_runs_of_white_space_become_one_space():
    assert one_line("  a\r\nb\t\tc \x0bd\n") == "a b c d"
    assert one_line(" \r\n ") == ""


def test_control_characters_are_kept_unless_asked():
    assert one_line("a\x1b[2Jb\x00c") == "a\x1b[2Jb\x00c"
    assert one_line("a\x1b[2Jb\x00c\x85d", controls=True) == "a [2Jb c d"


def test_a_longer_text_is_cut_to_the_limit_with_an_ellipsis():
    assert one_line("abcdef", 6) == "abcdef"
    assert one_line("abcdefg", 6) == "abc..."
    assert one_line("ab\n\n\ncd", 5) == "ab cd"  # measured once flattened
    assert one_line("x" * 10_000) == "x" * 10_000  # no limit, no cut
