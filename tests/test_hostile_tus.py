"""The tus endpoint (``/-/uploads/``) against hostile requests.

Upload-Metadata names the target path, so it is a second way in for
traversal; upload URLs are capabilities another user must not be able to
use.  Each case asserts the status, that nothing was stored where it must
not be, and that every stored file keeps its sha256.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.security_support import BOB_PASSWORD, Hoard
from tests.tus_env import OCTETS, TUS, b64, start_env


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from twisted.internet import reactor

    async def start():
        env = await start_env(reactor, tmp_path_factory.mktemp("tus"))
        hoard = await Hoard(env.transfer).fill()
        return env, hoard

    env, hoard = pytest_twisted.blockon(defer.ensureDeferred(start()))
    yield env, hoard
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


def _auth(name: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


async def _tus(env, method, path, headers=None, data=None, who=None):
    from twisted.web.client import readBody

    merged = {**TUS, **(headers or {})}
    raw = {k.encode(): [v if isinstance(v, bytes) else str(v).encode()] for k, v in merged.items()}
    if who is None:
        raw.update(env.auth_header)
    else:
        raw.update({k.encode(): [v.encode()] for k, v in _auth(*who).items()})
    kw = {} if data is None else {"data": data}
    response = await env.tus_http.request(method, env.url(path), headers=raw, unbuffered=True, **kw)
    body = await readBody(response)
    return response.code, response.headers, body


def _meta(**values: str) -> str:
    return ",".join(f"{k} {b64(v)}" for k, v in values.items())


METADATA = [
    ("path-climbs-out", _meta(path="../bob/bob.txt"), 400),
    ("path-absolute-climb", _meta(path="/../bob.txt"), 400),
    ("path-backslash", _meta(path="..\\bob.txt"), 400),
    ("path-into-endpoints", _meta(path="/-/metrics"), 404),
    ("filename-with-slash", _meta(filename="../bob.txt"), 400),
    ("filename-dotdot", _meta(filename=".."), 400),
    ("filename-nul", _meta(filename="a\x00b"), 400),
    ("filename-newline", _meta(filename="a\r\nb"), 400),
    ("filename-too-long", _meta(filename="n" * 300), 400),
    ("no-name-at-all", _meta(kind="x"), 400),
    ("value-not-base64", "filename !!!", 400),
    ("value-not-utf8", "filename " + base64.b64encode(b"\xff\xfe").decode(), 400),
    ("duplicate-keys", _meta(filename="a") + "," + _meta(filename="b"), 400),
    ("key-with-two-values", "filename YQ== Yg==", 400),
]


@pytest.mark.parametrize(
    ("metadata", "status"), [m[1:] for m in METADATA], ids=[m[0] for m in METADATA]
)
@pytest_twisted.ensureDeferred
async def test_hostile_upload_metadata_is_refused(site, metadata, status):
    env, hoard = site
    headers = {"Upload-Length": "5", "Upload-Metadata": metadata, **OCTETS}
    code, _, _ = await _tus(env, "POST", "/-/uploads/", headers, data=b"pwned")
    assert code == status
    await hoard.check()


@pytest_twisted.ensureDeferred
async def test_reserved_root_name_as_tus_filename_is_400(site):
    env, hoard = site
    headers = {"Upload-Length": "5", "Upload-Metadata": _meta(filename="-"), **OCTETS}
    code, _, _ = await _tus(env, "POST", "/-/uploads/", headers, data=b"pwned")
    assert code == 400
    await hoard.check()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Upload-Length": "-1"}, 400),
        ({"Upload-Length": "1e3"}, 400),
        ({"Upload-Length": "9" * 40}, 400),
        ({"Upload-Length": str(2**41)}, 413),
        ({"Upload-Length": "5", "Upload-Defer-Length": "1"}, 400),
        ({"Upload-Defer-Length": "2"}, 400),
        ({}, 400),
    ],
    ids=["negative", "exponent", "forty-digits", "over-max-size", "both", "defer-2", "neither"],
)
@pytest_twisted.ensureDeferred
async def test_bad_upload_lengths_are_refused(site, headers, status):
    env, hoard = site
    all_headers = {"Upload-Metadata": _meta(filename="len.bin"), **headers}
    code, _, _ = await _tus(env, "POST", "/-/uploads/", all_headers)
    assert code == status
    await hoard.check()


@pytest_twisted.ensureDeferred
async def test_wrong_tus_version_is_412(site):
    env, _hoard = site
    headers = {
        "Tus-Resumable": "0.2.2",
        "Upload-Length": "1",
        "Upload-Metadata": _meta(filename="v"),
    }
    code, found, _ = await _tus(env, "POST", "/-/uploads/", headers)
    assert code == 412
    assert found.getRawHeaders(b"Tus-Version") == [b"1.0.0"]


async def _new_upload(env, name: str, length: int = 10) -> str:
    headers = {"Upload-Length": str(length), "Upload-Metadata": _meta(filename=name)}
    code, found, _ = await _tus(env, "POST", "/-/uploads/", headers)
    assert code == 201
    return found.getRawHeaders(b"Location")[0].decode()


@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE"])
@pytest_twisted.ensureDeferred
async def test_another_users_upload_url_is_404_to_them(site, method):
    env, hoard = site
    location = await _new_upload(env, f"private-{method.lower()}.bin")
    headers = {"Upload-Offset": "0", **OCTETS} if method == "PATCH" else {}
    data = b"bob writes" if method == "PATCH" else None
    code, _, _ = await _tus(env, method, location, headers, data, who=("bob", BOB_PASSWORD))
    assert code == 404
    code, found, _ = await _tus(env, "HEAD", location)
    assert code == 200 and found.getRawHeaders(b"Upload-Offset") == [b"0"]
    await hoard.check()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Upload-Offset": "5"}, 409),
        ({"Upload-Offset": "-1"}, 400),
        ({}, 400),
        ({"Upload-Offset": "0", "Content-Type": "text/plain"}, 415),
        ({"Upload-Offset": "0", "Upload-Checksum": "md4 AAAA"}, 400),
        ({"Upload-Offset": "0", "Upload-Checksum": "sha1 !!!"}, 400),
    ],
    ids=["offset-ahead", "offset-negative", "no-offset", "wrong-type", "bad-algo", "bad-digest"],
)
@pytest_twisted.ensureDeferred
async def test_bad_patch_requests_are_refused_and_the_upload_is_unchanged(site, headers, status):
    env, hoard = site
    location = await _new_upload(env, f"patch-{status}-{len(headers)}.bin")
    all_headers = {**OCTETS, **headers}
    code, _, _ = await _tus(env, "PATCH", location, all_headers, data=b"abc")
    assert code == status
    code, found, _ = await _tus(env, "HEAD", location)
    assert found.getRawHeaders(b"Upload-Offset") == [b"0"]
    await hoard.check()


@pytest_twisted.ensureDeferred
async def test_patch_past_the_declared_length_is_413_and_stores_nothing_extra(site):
    env, hoard = site
    location = await _new_upload(env, "overflow.bin", length=4)
    code, _, _ = await _tus(
        env, "PATCH", location, {"Upload-Offset": "0", **OCTETS}, data=b"0123456789"
    )
    assert code == 413
    code, found, _ = await _tus(env, "HEAD", location)
    assert found.getRawHeaders(b"Upload-Offset") == [b"0"]
    await hoard.check()


@pytest.mark.parametrize("upload_id", ["../uploads", "..%2f..%2fkeep", "x" * 5000, "%00", "AAAA"])
@pytest_twisted.ensureDeferred
async def test_bogus_upload_urls_are_404(site, upload_id):
    env, hoard = site
    code, _, _ = await _tus(env, "HEAD", "/-/uploads/" + upload_id)
    assert code in (400, 404, 414)
    await hoard.check()


@pytest.mark.parametrize(
    ("method", "header", "value"),
    [("POST", "Upload-Metadata", b"filename \x80"), ("PATCH", "Upload-Checksum", b"sha1 \xe9")],
    ids=["metadata", "checksum"],
)
@pytest_twisted.ensureDeferred
async def test_non_ascii_base64_in_tus_headers_is_400(site, method, header, value):
    env, hoard = site
    if method == "POST":
        headers = {"Upload-Length": "5", header: value}
        path = "/-/uploads/"
    else:
        path = await _new_upload(env, "checksum.bin", length=3)
        headers = {"Upload-Offset": "0", header: value, **OCTETS}
    code, _, _ = await _tus(env, method, path, headers, data=b"abc" if method == "PATCH" else None)
    assert code == 400
    await hoard.check()
