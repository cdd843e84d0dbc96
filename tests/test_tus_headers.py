"""The tus header vocabulary and where metadata puts a file, without a socket."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsfront.http.errors_map import HttpError
from wsfront.http.tus import target_path
from wsfront.http.tus_headers import (
    check_offset_content_type,
    check_resumable,
    format_metadata,
    parse_checksum,
    parse_metadata,
    parse_number,
    tus_link,
)
from wsfront.paths import PathError
from wsfront.transfer.service import FileInfo

keys = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=","),
    min_size=1,
    max_size=12,
)


@given(st.dictionaries(keys, st.text(min_size=1, max_size=40), max_size=6))
def test_metadata_round_trips_through_its_header(meta):
    assert parse_metadata(format_metadata(meta).encode("latin-1")) == meta


def test_metadata_key_without_value_is_empty_text():
    assert parse_metadata(b"is_confidential,filename " + base64.b64encode(b"a b")) == {
        "is_confidential": "",
        "filename": "a b",
    }


@pytest.mark.parametrize(
    "raw",
    [
        b"filename !!!",
        b"a YQ==,a YQ==",
        b"k " + base64.b64encode(b"\xff"),
        b",",
        b"a b c",
        b"filename \x80",
    ],
)
def test_malformed_metadata_is_a_bad_request(raw):
    with pytest.raises(HttpError) as e:
        parse_metadata(raw)
    assert e.value.status == 400


def test_checksum_header_is_parsed_for_sha1_and_sha256():
    for name in ("sha1", "sha256"):
        digest = hashlib.new(name, b"x").digest()
        parsed = parse_checksum(f"{name} {base64.b64encode(digest).decode()}".encode())
        assert (parsed.algorithm, parsed.digest) == (name, digest)
    assert parse_checksum(None) is None


@pytest.mark.parametrize(
    "raw", [b"md5 AAAA", b"sha1 not-base64!", b"sha1 AAAA", b"sha256", b"sha1 \xe9"]
)
def test_unsupported_or_malformed_checksums_are_bad_requests(raw):
    with pytest.raises(HttpError) as e:
        parse_checksum(raw)
    assert e.value.status == 400


def test_numbers_must_be_plain_non_negative_decimals():
    assert parse_number("Upload-Offset", b" 42 ") == 42
    assert parse_number("Upload-Offset", None) is None
    for raw in (b"-1", b"1e3", b"0x10", b"", b"9" * 30):
        with pytest.raises(HttpError):
            parse_number("Upload-Offset", raw)


def test_version_and_content_type_checks_answer_412_and_415():
    check_resumable(b"1.0.0")
    with pytest.raises(HttpError) as e:
        check_resumable(b"0.2.2")
    assert e.value.status == 412 and ("Tus-Version", "1.0.0") in e.value.headers
    with pytest.raises(HttpError) as e:
        check_resumable(None)
    assert e.value.status == 412
    check_offset_content_type(b"application/offset+octet-stream")
    with pytest.raises(HttpError) as e:
        check_offset_content_type(b"application/octet-stream")
    assert e.value.status == 415


def test_metadata_decides_the_target_path():
    assert target_path({"filename": "a.bin"}) == "/a.bin"
    assert target_path({"name": "uppy.jpg"}) == "/uppy.jpg"
    assert target_path({"path": "docs/b.bin", "filename": "ignored"}) == "/docs/b.bin"
    assert target_path({"path": "/docs/", "filename": "c.bin"}) == "/docs/c.bin"
    assert target_path({"path": "/docs/./x/../d.bin"}) == "/docs/d.bin"


@pytest.mark.parametrize(
    "meta",
    [{}, {"filename": "a/b"}, {"filename": ".."}, {"path": "/"}, {"path": "/../x"}],
)
def test_metadata_that_names_no_file_in_the_tree_is_refused(meta):
    with pytest.raises((HttpError, PathError)):
        target_path(meta)


def test_link_header_points_the_owner_at_the_pending_upload():
    pending = FileInfo("/a", False, 3, 0.0, None, 7, pending=True, upload_id="u1")
    committed = FileInfo("/a", False, 3, 0.0, "e", 7)
    assert tus_link(pending) == ("Link", '</-/uploads/u1>; rel="tus-upload"')
    assert tus_link(committed) is None
    assert tus_link(None) is None


def test_reserved_top_level_filename_is_a_bad_request():
    with pytest.raises(HttpError) as e:
        target_path({"filename": "-"})
    assert e.value.status == 400
