"""The name policy: what FTP and HTTP both accept and refuse."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsfront.catalog.errors import InvalidName
from wsfront.catalog.names import check_name, split_path

FORBIDDEN = "\x00\r\n/"


def test_root_splits_to_nothing():
    assert split_path("/") == ()


def test_components_are_kept_as_given_and_case_sensitive():
    assert split_path("/Docs/résumé.PDF") == ("Docs", "résumé.PDF")
    assert split_path("/a/b/") == ("a", "b")


@pytest.mark.parametrize(
    "path",
    ["", "a/b", "//", "/a//b", "/./a", "/a/..", "/a\x00b", "/a\rb", "/a\nb", "/-", "/-/x"],
)
def test_bad_paths_are_refused(path):
    with pytest.raises(InvalidName):
        split_path(path)


def test_dash_is_reserved_only_at_the_root():
    assert split_path("/a/-") == ("a", "-")


def test_255_bytes_is_the_limit_counted_in_utf8():
    assert check_name("é" * 127 + "x") == "é" * 127 + "x"  # 255 bytes
    with pytest.raises(InvalidName):
        check_name("é" * 128)  # 256 bytes, 128 characters


def test_lone_surrogates_are_not_utf8():
    with pytest.raises(InvalidName):
        check_name("a\udcffb")


@given(st.text(alphabet=st.characters(blacklist_characters=FORBIDDEN), min_size=1))
def test_any_clean_name_round_trips_or_is_refused_for_a_stated_reason(name):
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        encoded = None
    ok = encoded is not None and len(encoded) <= 255 and name not in (".", "..")
    if ok:
        assert split_path("/x/" + name) == ("x", name)
    else:
        with pytest.raises(InvalidName):
            check_name(name)


@given(st.text(min_size=1), st.sampled_from(FORBIDDEN), st.text())
def test_a_forbidden_character_anywhere_is_refused(before, bad, after):
    with pytest.raises(InvalidName):
        check_name(before + bad + after)
