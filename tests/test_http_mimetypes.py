"""Content-Type comes from the extension, identically on every host."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsfront.http.mimetypes import DEFAULT, content_type


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("notes.txt", "text/plain; charset=utf-8"),
        ("/docs/INDEX.HTML", "text/html; charset=utf-8"),
        ("photo.JPG", "image/jpeg"),
        ("archive.tar.gz", "application/gzip"),
        ("data.json", "application/json"),
        ("movie.mp4", "video/mp4"),
        ("README", DEFAULT),
        (".bashrc", DEFAULT),
        ("..", DEFAULT),
        ("trailing.", DEFAULT),
        ("weird.exe", DEFAULT),
        ("/dir.txt/file", DEFAULT),
    ],
)
def test_content_type_by_extension(name, expected):
    assert content_type(name) == expected


def test_does_not_depend_on_the_host_mime_database(monkeypatch):
    import mimetypes

    monkeypatch.setattr(mimetypes, "guess_type", lambda *a, **k: ("text/x-wrong", None))
    assert content_type("a.txt") == "text/plain; charset=utf-8"


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_every_name_gets_a_header_safe_type(name):
    value = content_type(name)
    assert "/" in value
    value.encode("ascii")
    assert "\r" not in value and "\n" not in value
