"""Client paths resolve inside the user's root, whatever the encoding of the attack."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsfront.paths import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    HttpTarget,
    PathError,
    PathErrorKind,
    basename,
    check_name,
    is_virtual_path,
    parent,
    resolve,
    resolve_http,
    to_storage_path,
    to_url_path,
    to_virtual_path,
)


def kind_of(call, *args, **kwargs) -> PathErrorKind:
    with pytest.raises(PathError) as info:
        call(*args, **kwargs)
    return info.value.kind


# -- FTP-style resolution -------------------------------------------------------


@pytest.mark.parametrize(
    ("cwd", "path", "expected"),
    [
        ("/", "a.txt", "/a.txt"),
        ("/docs", "a.txt", "/docs/a.txt"),
        ("/docs", "/a.txt", "/a.txt"),
        ("/docs", "", "/docs"),
        ("/docs", ".", "/docs"),
        ("/docs", "..", "/"),
        ("/a/b/c", "../../x", "/a/x"),
        ("/a", "b/./c/../d", "/a/b/d"),
        ("/", "//etc//passwd//", "/etc/passwd"),
        ("/a", "b/", "/a/b"),
        ("/", "/", "/"),
        ("/", "caf\u00e9 menu.txt", "/caf\u00e9 menu.txt"),
        ("/", " leading and trailing spaces ", "/ leading and trailing spaces "),
        ("/", "...", "/..."),
        ("/", "a/-", "/a/-"),
    ],
)
def test_resolve_normalizes_paths(cwd, path, expected):
    assert resolve(cwd, path) == expected


@pytest.mark.parametrize("path", ["..", "../etc/passwd", "/../x", "a/../../x", "/a/b/../../.."])
def test_dotdot_above_root_is_refused(path):
    assert kind_of(resolve, "/", path) is PathErrorKind.OUTSIDE_ROOT


def test_dotdot_above_root_can_be_clamped_like_chroot():
    assert resolve("/", "..", clamp_at_root=True) == "/"
    assert resolve("/a", "../../../etc", clamp_at_root=True) == "/etc"


@pytest.mark.parametrize("path", ["a\x00b", "a\rb", "a\nb", "dir/x\n", "\x00"])
def test_nul_cr_lf_are_refused(path):
    assert kind_of(resolve, "/", path) is PathErrorKind.INVALID_NAME


@pytest.mark.parametrize("path", ["..\\..\\etc", "a\\b", "\\", "C:\\Windows"])
def test_backslashes_are_refused(path):
    assert kind_of(resolve, "/", path) is PathErrorKind.INVALID_NAME


def test_component_length_limit_counts_utf8_bytes():
    assert resolve("/", "a" * MAX_NAME_BYTES) == "/" + "a" * MAX_NAME_BYTES
    assert kind_of(resolve, "/", "a" * (MAX_NAME_BYTES + 1)) is PathErrorKind.INVALID_NAME
    two_byte = "\u00e9" * (MAX_NAME_BYTES // 2)
    assert resolve("/", two_byte) == "/" + two_byte
    assert kind_of(resolve, "/", two_byte + "\u00e9") is PathErrorKind.INVALID_NAME


def test_whole_path_length_is_capped():
    assert kind_of(resolve, "/", "a/" * (MAX_PATH_BYTES // 2 + 1)) is PathErrorKind.TOO_LONG


def test_undecodable_bytes_from_the_ftp_parser_are_refused():
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert kind_of(resolve, "/", name) is PathErrorKind.MALFORMED


@pytest.mark.parametrize("path", ["-", "/-/metrics", "-/uploads/x"])
def test_reserved_root_name_is_refused(path):
    assert kind_of(resolve, "/", path) is PathErrorKind.RESERVED


def test_relative_path_into_reserved_name_from_root_is_refused_but_not_elsewhere():
    assert kind_of(resolve, "/a", "../-") is PathErrorKind.RESERVED
    assert resolve("/a", "-") == "/a/-"


def test_cwd_must_be_a_virtual_path():
    with pytest.raises(ValueError):
        resolve("relative", "x")
    with pytest.raises(ValueError):
        resolve("/a/../b", "x")


def test_errors_map_to_ftp_and_http_replies():
    error = PathError(PathErrorKind.OUTSIDE_ROOT, "no")
    assert (error.ftp_code, error.http_status) == (550, 400)
    assert PathErrorKind.INVALID_NAME.ftp_code == 553
    assert PathErrorKind.RESERVED.http_status == 404
    assert str(error) == "no"


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_check_name_refuses_empty_and_dot_names(name):
    assert kind_of(check_name, name) is PathErrorKind.INVALID_NAME


# -- HTTP request paths --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/", HttpTarget("/", False)),
        (b"/docs/a.txt", HttpTarget("/docs/a.txt", False)),
        (b"/docs/", HttpTarget("/docs", True)),
        (b"/caf%C3%A9", HttpTarget("/caf\u00e9", False)),
        (b"/a%20b", HttpTarget("/a b", False)),
        (b"/a/%2e%2e/b", HttpTarget("/b", False)),
        (b"/a/%2E%2E/%2e/b", HttpTarget("/b", False)),
        (b"//a//b", HttpTarget("/a/b", False)),
        (b"/%252e%252e", HttpTarget("/%2e%2e", False)),
        (b"/100%25", HttpTarget("/100%", False)),
        ("/docs/a.txt", HttpTarget("/docs/a.txt", False)),
        ("/caf\u00e9/%C3%A9", HttpTarget("/caf\u00e9/\u00e9", False)),
    ],
)
def test_resolve_http_decodes_each_component_once(raw, expected):
    assert resolve_http(raw) == expected


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"/%2e%2e/etc/passwd", PathErrorKind.OUTSIDE_ROOT),
        (b"/..%2f..%2fetc", PathErrorKind.MALFORMED),
        (b"/a%2Fb", PathErrorKind.MALFORMED),
        (b"/a%00b", PathErrorKind.MALFORMED),
        (b"/a\x00b", PathErrorKind.MALFORMED),
        (b"/a%0d%0aSet-Cookie:x", PathErrorKind.INVALID_NAME),
        (b"/..%5c..%5cetc", PathErrorKind.INVALID_NAME),
        (b"/a\\b", PathErrorKind.INVALID_NAME),
        (b"/%zz", PathErrorKind.MALFORMED),
        (b"/%4", PathErrorKind.MALFORMED),
        (b"/caf%E9", PathErrorKind.MALFORMED),
        (b"/caf\xe9", PathErrorKind.MALFORMED),
        (b"relative", PathErrorKind.MALFORMED),
        (b"http://host/x", PathErrorKind.MALFORMED),
        (b"/-/metrics", PathErrorKind.RESERVED),
        (b"/%2d/metrics", PathErrorKind.RESERVED),
        (b"/x/../-/status", PathErrorKind.RESERVED),
        (b"/" + b"a" * MAX_PATH_BYTES, PathErrorKind.TOO_LONG),
    ],
)
def test_resolve_http_refuses_traversal_and_bad_encodings(raw, kind):
    assert kind_of(resolve_http, raw) is kind


# -- root joining and display ----------------------------------------------------


def test_storage_path_joins_root_and_virtual_path():
    assert to_storage_path("/alice", "/docs/a.txt") == "/alice/docs/a.txt"
    assert to_storage_path("/alice", "/") == "/alice"
    assert to_storage_path("/", "/x") == "/x"


def test_storage_path_refuses_unnormalized_input():
    with pytest.raises(ValueError):
        to_storage_path("/alice", "/../bob")
    with pytest.raises(ValueError):
        to_storage_path("/alice/", "/x")


def test_storage_path_checks_the_root_once_and_the_path_every_time():
    """A root accepted once is kept (``_checked_root``), a refused one is
    refused again; a kept root never lets an unnormalized path through."""
    from wsfront import paths

    root = "/checked-once"
    assert to_storage_path(root, "/a") == "/checked-once/a"
    hits = paths._checked_root.cache_info().hits
    assert to_storage_path(root, "/") == root
    assert paths._checked_root.cache_info().hits == hits + 1
    for bad in ("/../x", "/a/../../x", "a", "/a/", "//a", "/-/x", "", "/a\\b", "/a\x00"):
        with pytest.raises(ValueError):
            to_storage_path(root, bad)
    for _ in range(2):
        misses = paths._checked_root.cache_info().misses
        with pytest.raises(ValueError):
            to_storage_path("/unchecked/", "/x")
        assert paths._checked_root.cache_info().misses == misses + 1


def test_full_path_is_to_storage_path():
    """The transfer layer's catalog paths are ``to_storage_path``'s: the
    same joins, the same refusals, whether the root was seen before."""
    from wsfront.catalog.records import User
    from wsfront.transfer.service import Transfers

    def user(root):
        return User("u", False, root, frozenset(), None, None, 0, 0, 0.0)

    expected = {
        ("/", "/"): "/", ("/", "/x"): "/x", ("/", "/x/y"): "/x/y",
        ("/alice", "/"): "/alice", ("/alice", "/x"): "/alice/x",
        ("/alice", "/x/y"): "/alice/x/y",
        ("/a/b", "/"): "/a/b", ("/a/b", "/x"): "/a/b/x", ("/a/b", "/x/y"): "/a/b/x/y",
    }  # fmt: skip
    for _ in range(2):  # the second time, every root is cached
        for (root, vpath), path in expected.items():
            assert Transfers.full_path(user(root), vpath) == path
        for bad in ("/..", "/x/../..", "x", "/x/"):
            with pytest.raises(ValueError):
                Transfers.full_path(user(root), bad)
    with pytest.raises(ValueError):
        Transfers.full_path(user("/alice/../bob"), "/x")


def test_virtual_path_strips_the_root_and_refuses_siblings():
    assert to_virtual_path("/alice", "/alice/docs/a.txt") == "/docs/a.txt"
    assert to_virtual_path("/alice", "/alice") == "/"
    assert kind_of(to_virtual_path, "/alice", "/alicex/a") is PathErrorKind.OUTSIDE_ROOT
    assert kind_of(to_virtual_path, "/alice", "/") is PathErrorKind.OUTSIDE_ROOT


def test_parent_and_basename():
    assert parent("/a/b") == "/a"
    assert parent("/a") == "/"
    assert parent("/") == "/"
    assert basename("/a/b") == "b"
    assert basename("/") == ""


def test_url_path_quotes_components():
    assert to_url_path("/a b/c%d#e?f") == "/a%20b/c%25d%23e%3Ff"
    assert to_url_path("/docs", directory=True) == "/docs/"
    assert to_url_path("/", directory=True) == "/"


def test_is_virtual_path():
    assert is_virtual_path("/")
    assert is_virtual_path("/a/b")
    for bad in ("", "a", "/a/", "//a", "/a/./b", "/a/../b", "/-/x", "/a\x00"):
        assert not is_virtual_path(bad)


# -- properties ----------------------------------------------------------------

names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00\r\n"),
    min_size=1,
    max_size=20,
).filter(lambda n: n not in (".", "..") and n != "-")
hostile = st.lists(
    st.sampled_from(["..", ".", "", "a", "b", "-", "%2e%2e", "%2f", "\\", "%00", "%2e"]),
    max_size=12,
).map("/".join)


@settings(max_examples=200)
@given(st.text(max_size=60), st.sampled_from(["/", "/a", "/a/b"]))
def test_resolve_result_is_always_a_virtual_path_or_an_error(path, cwd):
    try:
        result = resolve(cwd, path)
    except PathError:
        return
    assert is_virtual_path(result)


@settings(max_examples=200)
@given(hostile)
def test_resolve_http_never_leaves_the_root(path):
    try:
        target = resolve_http("/" + path)
    except PathError:
        return
    assert is_virtual_path(target.path)
    stored = to_storage_path("/alice", target.path)
    assert stored == "/alice" or stored.startswith("/alice/")
    assert to_virtual_path("/alice", stored) == target.path


@settings(max_examples=300)
@given(st.sampled_from(["/", "/alice", "/a/b", "/alice/", "alice", "/a/../b", "/-"]), hostile)
def test_storage_path_is_the_join_of_both_paths_components(root, path):
    """Joined as strings, once both are checked, as the components would
    be: every time (the root's check kept or not), never out of ``root``."""

    def parts(p):
        return [] if p == "/" else p[1:].split("/")

    for vpath in (path, "/" + path):
        ok = is_virtual_path(root) and is_virtual_path(vpath)
        for _ in range(2):
            if not ok:
                with pytest.raises(ValueError):
                    to_storage_path(root, vpath)
                continue
            stored = to_storage_path(root, vpath)
            assert stored == "/" + "/".join(parts(root) + parts(vpath))
            assert to_virtual_path(root, stored) == vpath


@settings(max_examples=200)
@given(st.lists(names, max_size=5))
def test_url_path_round_trips_through_resolve_http(parts):
    vpath = "/" + "/".join(parts)
    try:
        check = [check_name(p) for p in parts]
    except PathError:
        return
    assert len(check) == len(parts)
    assert resolve_http(to_url_path(vpath)).path == vpath
    assert resolve("/", vpath) == vpath
