"""tus 1.0 on the wire, request by request (treq against a real site).

Each test checks the answer a tus client relies on and what the catalog
holds afterwards: the durable offset, the committed bytes, the session state.
"""

from __future__ import annotations

import base64
import hashlib

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_env import payload
from tests.tus_env import OCTETS, TUS, b64, committed, create, sha, start_env, stop_env, tus
from wsfront.catalog.errors import NotFound


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(start_env(reactor, tmp_path)))
    yield e
    pytest_twisted.blockon(stop_env(e))


def upload_id(location: str) -> str:
    assert location.startswith("/-/uploads/")
    return location.rsplit("/", 1)[1]


def digest(name: str, data: bytes) -> str:
    return f"{name} {base64.b64encode(hashlib.new(name, data).digest()).decode()}"


@pytest_twisted.ensureDeferred
async def test_options_advertises_version_extensions_size_and_checksums(env):
    status, headers, _ = await tus(env, "OPTIONS", "/-/uploads/", auth=False)
    assert status == 204
    assert headers["tus-version"] == "1.0.0"
    extensions = set(headers["tus-extension"].split(","))
    assert {"creation", "creation-with-upload", "creation-defer-length"} <= extensions
    assert {"termination", "checksum", "expiration"} <= extensions
    assert int(headers["tus-max-size"]) == env.tus.settings.max_size
    assert set(headers["tus-checksum-algorithm"].split(",")) == {"sha1", "sha256"}


@pytest_twisted.ensureDeferred
async def test_requests_without_credentials_are_challenged(env):
    status, headers, _ = await tus(env, "POST", "/-/uploads/", {"Upload-Length": "3"}, auth=False)
    assert status == 401
    assert headers["www-authenticate"].startswith("Basic")


@pytest_twisted.ensureDeferred
async def test_creation_makes_a_pending_upload_on_the_named_path(env):
    status, headers, _ = await create(env, 10, {"filename": "a.bin"})
    assert status == 201
    uid = upload_id(headers["location"])
    assert "upload-expires" in headers
    upload = await env.catalog.get_upload(uid)
    assert upload.path == "/alice/a.bin"
    assert upload.declared_length == 10
    assert upload.meta == {"filename": "a.bin"}
    info = await env.transfers.stat(env.user, "/a.bin")
    assert info.pending and info.upload_id == uid

    status, headers, _ = await tus(env, "HEAD", f"/-/uploads/{uid}")
    assert status == 200
    assert headers["upload-offset"] == "0"
    assert headers["upload-length"] == "10"
    assert headers["cache-control"] == "no-store"
    assert headers["upload-metadata"] == f"filename {b64('a.bin')}"


@pytest_twisted.ensureDeferred
async def test_metadata_path_places_the_file_in_a_directory(env):
    await env.transfers.mkdir(env.user, "/docs")
    status, headers, _ = await create(env, 4, {"path": "/docs/", "filename": "n.txt"})
    assert status == 201
    uid = upload_id(headers["location"])
    status, _, _ = await tus(
        env, "PATCH", f"/-/uploads/{uid}", {**OCTETS, "Upload-Offset": "0"}, b"abcd"
    )
    assert status == 204
    assert await committed(env, "/docs/n.txt") == b"abcd"


@pytest_twisted.ensureDeferred
async def test_metadata_that_leaves_the_tree_or_names_nothing_is_refused(env):
    assert (await create(env, 4, {"path": "/../bob/x"}))[0] in (400, 403)
    assert (await create(env, 4, {"filename": "../x"}))[0] == 400
    assert (await create(env, 4, {"type": "text/plain"}))[0] == 400


@pytest_twisted.ensureDeferred
async def test_patches_append_and_the_last_one_commits(env):
    data = payload(3 * 65536 + 17)
    _, headers, _ = await create(env, len(data), {"filename": "p.bin"})
    url = headers["location"]
    offset = 0
    for cut in (65536, 2 * 65536, len(data)):
        status, headers, _ = await tus(
            env, "PATCH", url, {**OCTETS, "Upload-Offset": str(offset)}, data[offset:cut]
        )
        assert status == 204
        assert headers["upload-offset"] == str(cut)
        offset = cut
        if cut < len(data):
            upload = await env.catalog.get_upload(upload_id(url))
            assert upload.checkpoint == cut and upload.live
    assert sha(await committed(env, "/p.bin")) == sha(data)
    status, headers, _ = await tus(env, "HEAD", url)
    assert status == 200 and headers["upload-offset"] == str(len(data))


@pytest_twisted.ensureDeferred
async def test_patch_at_the_wrong_offset_is_a_conflict_and_changes_nothing(env):
    _, headers, _ = await create(env, 8, {"filename": "c.bin"})
    url = headers["location"]
    await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "0"}, b"1234")
    for wrong in ("0", "2", "6"):
        status, headers, _ = await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": wrong}, b"zz")
        assert status == 409
        assert headers["upload-offset"] == "4"
    assert (await env.catalog.get_upload(upload_id(url))).checkpoint == 4


@pytest_twisted.ensureDeferred
async def test_wrong_content_type_and_version_are_refused_before_the_body(env):
    _, headers, _ = await create(env, 8, {"filename": "v.bin"})
    url = headers["location"]
    status, _, _ = await tus(
        env,
        "PATCH",
        url,
        {"Content-Type": "application/octet-stream", "Upload-Offset": "0"},
        b"1234",
    )
    assert status == 415
    status, headers, _ = await tus(
        env, "PATCH", url, {**OCTETS, "Upload-Offset": "0", "Tus-Resumable": "0.2.2"}, b"1234"
    )
    assert status == 412
    assert headers["tus-version"] == "1.0.0"
    assert (await env.catalog.get_upload(upload_id(url))).checkpoint == 0


@pytest_twisted.ensureDeferred
async def test_body_past_the_upload_length_is_refused(env):
    _, headers, _ = await create(env, 4, {"filename": "l.bin"})
    status, _, _ = await tus(
        env, "PATCH", headers["location"], {**OCTETS, "Upload-Offset": "0"}, b"12345"
    )
    assert status == 413


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
async def test_matching_checksum_is_accepted(env, algorithm):
    data = payload(200_000)
    _, headers, _ = await create(env, len(data), {"filename": "s.bin"})
    status, headers, _ = await tus(
        env,
        "PATCH",
        headers["location"],
        {**OCTETS, "Upload-Offset": "0", "Upload-Checksum": digest(algorithm, data)},
        data,
    )
    assert status == 204 and headers["upload-offset"] == str(len(data))
    assert sha(await committed(env, "/s.bin")) == sha(data)


@pytest_twisted.ensureDeferred
async def test_checksum_mismatch_is_460_and_the_offset_stays(tmp_path):
    from twisted.internet import reactor

    # Small checkpoints: the bad PATCH is recorded durable part-way through,
    # so only a real rollback brings the offset back.
    env = await start_env(reactor, tmp_path, checkpoint_bytes=64 * 1024)
    try:
        data = payload(1 << 20)
        _, headers, _ = await create(env, len(data), {"filename": "m.bin"})
        url = headers["location"]
        half = len(data) // 2
        await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "0"}, data[:half])
        status, headers, _ = await tus(
            env,
            "PATCH",
            url,
            {**OCTETS, "Upload-Offset": str(half), "Upload-Checksum": digest("sha1", b"other")},
            data[half:],
        )
        assert status == 460
        upload = await env.catalog.get_upload(upload_id(url))
        assert upload.checkpoint == half and upload.live
        status, headers, _ = await tus(env, "HEAD", url)
        assert headers["upload-offset"] == str(half)
        status, headers, _ = await tus(
            env,
            "PATCH",
            url,
            {**OCTETS, "Upload-Offset": str(half), "Upload-Checksum": digest("sha1", data[half:])},
            data[half:],
        )
        assert status == 204
        assert sha(await committed(env, "/m.bin")) == sha(data)
    finally:
        await env.stop()


async def _bad_patch_with_a_hook_at_its_end(env, hook):
    """A 1 MiB upload, half sent; then a PATCH of the rest with a wrong
    checksum, ``hook(transfers)`` run the moment its session ends (the
    window in which the rollback reopens the upload)."""
    data = payload(1 << 20)
    _, headers, _ = await create(env, len(data), {"filename": "m.bin"})
    url = headers["location"]
    half = len(data) // 2
    await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "0"}, data[:half])
    transfers = env.transfers
    ended = transfers._session_ended
    fired = []

    def hooked(session):
        ended(session)
        if session.upload_id == upload_id(url) and not fired:
            fired.append(hook(transfers))

    transfers._session_ended = hooked
    status, _, _ = await tus(
        env,
        "PATCH",
        url,
        {**OCTETS, "Upload-Offset": str(half), "Upload-Checksum": digest("sha1", b"other")},
        data[half:],
    )
    assert fired, "the bad PATCH's session never ended"
    return data, url, half, status


@pytest_twisted.ensureDeferred
async def test_a_checksum_rollback_is_not_refused_by_the_users_session_cap(tmp_path):
    """The slot the failed PATCH gives back is taken by another transfer of
    the same user before the rollback reopens the upload: the rollback must
    still happen (else the bytes that failed their checksum stay durable and
    the client resumes after them)."""
    from twisted.internet import reactor

    env = await start_env(reactor, tmp_path, checkpoint_bytes=64 * 1024, max_sessions_per_user=1)
    try:
        _, url, half, status = await _bad_patch_with_a_hook_at_its_end(
            env, lambda transfers: transfers.per_user.acquire(env.user.name)
        )
        assert status == 460
        assert env.transfers.per_user.running(env.user.name) == 1  # only the hook's slot
        upload = await env.catalog.get_upload(upload_id(url))
        assert upload.checkpoint == half and upload.live
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_a_checksum_rollback_that_cannot_run_aborts_the_upload(tmp_path):
    """If the rollback cannot reopen the upload (here the front end starts
    draining at that moment), the upload is aborted: never left resumable
    after bytes that failed their checksum."""
    from twisted.internet import reactor

    env = await start_env(reactor, tmp_path, checkpoint_bytes=64 * 1024)
    try:

        def drain(transfers):
            transfers.draining = True
            return True

        _, url, _, status = await _bad_patch_with_a_hook_at_its_end(env, drain)
        assert status == 460
        upload = await env.catalog.get_upload(upload_id(url))
        assert not upload.live and upload.state == "aborted"
        env.transfers.draining = False
        status, _, _ = await tus(env, "HEAD", url)
        assert status in (404, 410)
        with pytest.raises(NotFound):
            await env.catalog.stat("/alice/m.bin")
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_unknown_checksum_algorithm_is_a_bad_request(env):
    _, headers, _ = await create(env, 4, {"filename": "u.bin"})
    status, _, _ = await tus(
        env,
        "PATCH",
        headers["location"],
        {**OCTETS, "Upload-Offset": "0", "Upload-Checksum": "md4 AAAA"},
        b"1234",
    )
    assert status == 400


@pytest_twisted.ensureDeferred
async def test_creation_with_upload_takes_the_first_bytes(env):
    data = payload(100_000)
    status, headers, _ = await create(env, len(data) * 2, {"filename": "w.bin"}, data)
    assert status == 201
    assert headers["upload-offset"] == str(len(data))
    upload = await env.catalog.get_upload(upload_id(headers["location"]))
    assert upload.checkpoint == len(data)
    status, headers, _ = await create(env, len(data), {"filename": "whole.bin"}, data)
    assert status == 201
    assert sha(await committed(env, "/whole.bin")) == sha(data)


@pytest_twisted.ensureDeferred
async def test_empty_upload_is_committed_at_creation(env):
    status, _, _ = await create(env, 0, {"filename": "empty"})
    assert status == 201
    assert await committed(env, "/empty") == b""


@pytest_twisted.ensureDeferred
async def test_deferred_length_is_given_by_the_last_patch(env):
    status, headers, _ = await create(env, None, {"filename": "d.bin"})
    assert status == 201
    url = headers["location"]
    status, headers, _ = await tus(env, "HEAD", url)
    assert headers["upload-defer-length"] == "1" and "upload-length" not in headers
    await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "0"}, b"hello ")
    assert (await env.catalog.get_upload(upload_id(url))).live
    status, headers, _ = await tus(
        env, "PATCH", url, {**OCTETS, "Upload-Offset": "6", "Upload-Length": "11"}, b"world"
    )
    assert status == 204 and headers["upload-offset"] == "11"
    assert await committed(env, "/d.bin") == b"hello world"


@pytest_twisted.ensureDeferred
async def test_termination_removes_the_pending_upload(env):
    _, headers, _ = await create(env, 8, {"filename": "t.bin"})
    url = headers["location"]
    await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "0"}, b"1234")
    status, _, _ = await tus(env, "DELETE", url)
    assert status == 204
    assert (await env.catalog.get_upload(upload_id(url))).state == "aborted"
    status, _, _ = await tus(env, "HEAD", url)
    assert status in (404, 410)
    status, _, _ = await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "4"}, b"5678")
    assert status in (404, 410)
    assert await env.catalog.find_upload("/alice/t.bin") is None


@pytest_twisted.ensureDeferred
async def test_expired_upload_is_gone_and_its_blobs_are_collectable(env):
    _, headers, _ = await create(env, 8, {"filename": "e.bin"})
    url = headers["location"]
    await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "0"}, b"1234")
    upload = await env.catalog.get_upload(upload_id(url))
    blobs = {upload.blob_id, *(e.blob_id for e in upload.base_extents)}
    expired = await env.catalog.expire_uploads(upload.expires_at + 1)
    assert [u.upload_id for u in expired] == [upload.upload_id]
    status, _, _ = await tus(env, "HEAD", url)
    assert status == 410
    status, _, _ = await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "4"}, b"5678")
    assert status == 410
    collectable = {b.blob_id for b in await env.catalog.collectable_blobs(1000)}
    assert blobs <= collectable


@pytest_twisted.ensureDeferred
async def test_another_users_upload_is_not_found(env):
    _, headers, _ = await create(env, 8, {"filename": "o.bin"})
    await env.catalog.add_user("bob", "bob's password")
    token = base64.b64encode(b"bob:bob's password").decode()
    status, _, _ = await tus(
        env, "HEAD", headers["location"], {"Authorization": f"Basic {token}"}, auth=False
    )
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_a_new_creation_replaces_the_owners_pending_upload_on_that_path(env):
    _, first, _ = await create(env, 8, {"filename": "r.bin"})
    await tus(env, "PATCH", first["location"], {**OCTETS, "Upload-Offset": "0"}, b"1234")
    status, second, _ = await create(env, 3, {"filename": "r.bin"})
    assert status == 201 and second["location"] != first["location"]
    assert (await env.catalog.get_upload(upload_id(first["location"]))).state == "aborted"
    await tus(env, "PATCH", second["location"], {**OCTETS, "Upload-Offset": "0"}, b"new")
    assert await committed(env, "/r.bin") == b"new"


@pytest_twisted.ensureDeferred
async def test_method_override_lets_post_carry_patch(env):
    _, headers, _ = await create(env, 2, {"filename": "x.bin"})
    status, headers, _ = await tus(
        env,
        "POST",
        headers["location"],
        {**OCTETS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
        b"ok",
    )
    assert status == 204
    assert await committed(env, "/x.bin") == b"ok"


@pytest_twisted.ensureDeferred
async def test_creation_beyond_the_quota_is_refused_and_leaves_nothing(env):
    await env.catalog.set_quota("alice", 4096, None)
    status, _, _ = await create(env, 5000, {"filename": "q.bin"})
    assert status == 507
    assert await env.catalog.find_upload("/alice/q.bin") is None
    status, _, _ = await create(env, 4000, {"filename": "q.bin"})
    assert status == 201


@pytest_twisted.ensureDeferred
async def test_creation_larger_than_tus_max_size_is_413(env):
    status, _, _ = await create(env, env.tus.settings.max_size + 1, {"filename": "big"})
    assert status == 413
    assert await env.catalog.find_upload("/alice/big") is None


@pytest_twisted.ensureDeferred
async def test_a_creation_answered_201_has_a_durable_start(env):
    # Unlike STOR and PUT, a tus creation acknowledges the upload itself
    # (201 and its URL) before any byte: its start cannot wait for a later
    # checkpoint to be made durable.
    starts = []
    real = env.catalog.start_upload

    def recording(*a, **kw):
        starts.append(kw.get("durable", False))
        return real(*a, **kw)

    env.catalog.start_upload = recording
    status, headers, _ = await create(env, 10, {"filename": "later.bin"})
    assert status == 201 and headers["location"]
    assert starts == [True]


@pytest_twisted.ensureDeferred
async def test_a_patch_with_a_body_on_a_completed_upload_gets_413_and_changes_nothing(env):
    data = payload(5000)
    status, headers, _ = await create(env, len(data), {"filename": "done.bin"}, data)
    assert status == 201 and headers["upload-offset"] == "5000"
    url = headers["location"]
    at_end = {**OCTETS, "Upload-Offset": "5000"}
    status, headers, _ = await tus(env, "PATCH", url, at_end, b"0123456789")
    assert status == 413 and headers["upload-offset"] == "5000"
    status, headers, _ = await tus(env, "PATCH", url, at_end)
    assert status == 204 and headers["upload-offset"] == "5000"
    assert sha(await committed(env, "/done.bin")) == sha(data)


@pytest_twisted.ensureDeferred
async def test_a_chunked_patch_body_that_arrived_before_the_lookup_gets_413_not_500(env):
    """The body is complete before the handler looks at it (it came with the
    headers): discarding it must fail with 413, not with an empty error."""
    from twisted.internet import reactor

    from tests.http_raw import connect, head_of

    data = payload(100)
    _, headers, _ = await create(env, len(data), {"filename": "done2.bin"}, data)
    auth = env.auth_header[b"Authorization"][0]
    client = await connect(reactor, env.port.getHost().port)
    client.send(
        b"PATCH " + headers["location"].encode() + b" HTTP/1.1\r\nHost: h\r\n"
        b"Authorization: " + auth + b"\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 100\r\n"
        b"Content-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"a\r\n0123456789\r\n0\r\n\r\n"
    )
    received = await client.until(b"\r\n\r\n")
    client.close()
    status, found = head_of(received)
    assert status == 413 and found["upload-offset"] == "100"


@pytest_twisted.ensureDeferred
async def test_a_checksummed_patch_whose_session_fails_leaves_no_unverified_bytes(tmp_path):
    """A checksummed PATCH whose session fails part-way (here one checkpoint
    of it meets a catalog outage) has had some of its bytes made durable
    before anyone could verify them: the rollback must run for a failed
    session too, else the upload stays resumable after bytes that never
    passed their checksum (HEAD showed an offset past the PATCH's start)."""
    from twisted.internet import reactor

    from tests.http_raw import connect, head_of
    from wsfront.catalog.errors import CatalogUnavailable

    env = await start_env(reactor, tmp_path, checkpoint_bytes=64 * 1024)
    try:
        data = payload(8 << 20)
        _, headers, _ = await create(env, len(data), {"filename": "c.bin"})
        url = headers["location"]
        half = len(data) // 2
        await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "0"}, data[:half])
        catalog = env.transfers.catalog
        real_checkpoint = catalog.checkpoint
        calls = []
        first: defer.Deferred = defer.Deferred()
        outage: defer.Deferred = defer.Deferred()

        def flaky(*args, **kw):
            calls.append(args)
            if len(calls) == 1:
                first.callback(None)
            if len(calls) == 2:
                outage.callback(None)
                return defer.fail(CatalogUnavailable("sqlite: database is locked"))
            return real_checkpoint(*args, **kw)

        # The body goes in steps, each sent when the server has reached a
        # point: the first MiB brings a checkpoint (which succeeds); what
        # is sent after it has begun brings the next (they run one at a
        # time, and it meets the outage); the last byte, which ends the
        # body and fails its checksum, only then.  Sent at once, the body
        # could end before the second checkpoint reached the catalog.
        rest = data[half:]
        auth = env.auth_header[b"Authorization"][0]
        client = await connect(reactor, env.port.getHost().port)
        catalog.checkpoint = flaky
        try:
            client.send(
                b"PATCH "
                + url.encode()
                + b" HTTP/1.1\r\nHost: h\r\nAuthorization: "
                + auth
                + b"\r\nTus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
                + b"Upload-Offset: "
                + str(half).encode()
                + b"\r\nUpload-Checksum: "
                + digest("sha1", b"x").encode()
                + b"\r\nContent-Length: "
                + str(len(rest)).encode()
                + b"\r\n\r\n"
                + rest[: 1 << 20]
            )
            await first
            client.send(rest[1 << 20 : -1])
            await outage
            client.send(rest[-1:])
            received = await client.until(b"\r\n\r\n")
            client.close()
        finally:
            catalog.checkpoint = real_checkpoint
        status, _ = head_of(received)
        assert len(calls) >= 2, "the outage never hit the PATCH"
        assert status >= 400
        upload = await env.catalog.get_upload(upload_id(url))
        assert upload.checkpoint <= half
        status, headers, _ = await tus(env, "HEAD", url)
        assert status == 200 and int(headers["upload-offset"]) <= half
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_every_answer_carries_tus_resumable_errors_included(env):
    """tus 1.0.0: Tus-Resumable is on every response but OPTIONS's; a
    refusal dropped it with the headers of the success it replaced."""
    _, headers, _ = await create(env, 8, {"filename": "r.bin"})
    url = headers["location"]
    refusals = [
        (409, "PATCH", url, {**OCTETS, "Upload-Offset": "3"}, b"zz", True),
        (415, "PATCH", url, {"Content-Type": "text/plain", "Upload-Offset": "0"}, b"zz", True),
        (413, "PATCH", url, {**OCTETS, "Upload-Offset": "0"}, b"123456789", True),
        (404, "HEAD", "/-/uploads/nosuchupload", {}, None, True),
        (404, "HEAD", "/-/uploads/a/b", {}, None, True),
        (405, "GET", url, {}, None, True),
        (400, "POST", "/-/uploads/", {"Upload-Length": "3"}, None, True),
        (401, "HEAD", url, {}, None, False),
    ]
    for expected, method, path, extra, data, auth in refusals:
        status, found, _ = await tus(env, method, path, extra, data, auth=auth)
        assert status == expected, (method, path, extra)
        assert found.get("tus-resumable") == "1.0.0", (method, path, extra)
    assert (await env.catalog.get_upload(upload_id(url))).checkpoint == 0


@pytest_twisted.ensureDeferred
async def test_a_patch_that_leaves_the_upload_incomplete_says_when_it_expires(env):
    """tus expiration: Upload-Expires "MUST be included in every PATCH
    response if the upload is going to expire" (the 204 had only the offset)."""
    _, headers, _ = await create(env, 8, {"filename": "x.bin"})
    url = headers["location"]
    expires = headers["upload-expires"]
    # Activity moves the expiry (here a day further, as if a day had
    # passed): a PATCH answers the one it set, which HEAD then says too,
    # not the one from before it.
    env.transfers.settings = attrs.evolve(env.transfers.settings, upload_expiry=2 * 24 * 3600.0)
    status, found, _ = await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "0"}, b"1234")
    assert status == 204 and found["upload-offset"] == "4"
    _, head, _ = await tus(env, "HEAD", url)
    assert found.get("upload-expires") == head["upload-expires"] != expires
    status, found, _ = await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "4"}, b"")
    assert status == 204 and found.get("upload-expires") == head["upload-expires"]
    status, found, _ = await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "4"}, b"5678")
    assert status == 204 and found["upload-offset"] == "8"
    assert "upload-expires" not in found  # complete: it will not expire
    assert await committed(env, "/x.bin") == b"12345678"


@pytest_twisted.ensureDeferred
async def test_a_checksum_mismatch_says_so_on_the_status_line(env):
    """tus names 460 "Checksum Mismatch"; Twisted sent "460 Unknown Status"."""
    _, created, _ = await create(env, 4, {"filename": "s.bin"})
    fields = {**TUS, **OCTETS, "Upload-Offset": "0", "Upload-Checksum": digest("sha1", b"else")}
    headers = {k.encode(): [v.encode()] for k, v in fields.items()}
    response = await env.tus_http.request(
        "PATCH", env.url(created["location"]), headers={**headers, **env.auth_header}, data=b"1234"
    )
    await response.content()
    assert (response.code, response.phrase) == (460, b"Checksum Mismatch")


@pytest_twisted.ensureDeferred
async def test_a_patch_cut_short_by_termination_is_410_not_taken_over(env):
    """A DELETE of the upload while a PATCH streams: the PATCH was told 409
    "a newer request took this upload over"; the upload is gone (410)."""
    from tests.http_raw import head_of

    _, headers, _ = await create(env, 100, {"filename": "gone.bin"})
    url = headers["location"]
    client = await _patch_streaming(env, url)
    status, _, _ = await tus(env, "DELETE", url)
    assert status == 204
    answer = await client.until(b"\r\n\r\n")
    client.close()
    status, found = head_of(answer)
    assert (status, found.get("tus-resumable")) == (410, "1.0.0"), answer
    assert (await env.catalog.get_upload(upload_id(url))).state == "aborted"


@pytest_twisted.ensureDeferred
async def test_a_creation_with_upload_says_when_it_expires_only_if_incomplete(env):
    """A creation whose body completes the upload says no Upload-Expires (it
    will not expire, as a PATCH that completes one says none); one left
    incomplete says what HEAD then says."""
    status, found, _ = await create(env, 4, {"filename": "whole.bin"}, b"1234")
    assert status == 201 and found["upload-offset"] == "4"
    assert "upload-expires" not in found
    assert await committed(env, "/whole.bin") == b"1234"
    status, found, _ = await create(env, 8, {"filename": "half.bin"}, b"1234")
    assert status == 201 and found["upload-offset"] == "4"
    _, head, _ = await tus(env, "HEAD", found["location"])
    assert found["upload-expires"] == head["upload-expires"]


@pytest_twisted.ensureDeferred
async def test_a_patch_whose_upload_another_front_end_terminated_is_410(env):
    """The DELETE reached another front end, which aborted the upload in the
    catalog: this one finds out at its next checkpoint, or at the commit
    when the body ends first, and its PATCH was told 409 "the upload was
    deleted or aborted"; the upload is gone (410), as on one front end."""
    from tests.http_raw import head_of

    for rest in (b"", b"x" * 90):  # found at the checkpoint timer; at the commit
        _, headers, _ = await create(env, 100, {"filename": f"gone{len(rest)}.bin"})
        url = headers["location"]
        client = await _patch_streaming(env, url)
        await env.catalog.abort_upload(upload_id(url))  # as the other front end's DELETE
        if rest:
            client.send(rest)
        answer = await client.until(b"\r\n\r\n")
        client.close()
        status, found = head_of(answer)
        assert (status, found.get("tus-resumable")) == (410, "1.0.0"), answer


async def _patch_streaming(env, url: str):
    """A raw client whose PATCH of 100 bytes at 0 has sent its first 10,
    once the server's session has them: the PATCH is streaming."""
    from twisted.internet import reactor

    from tests.http_raw import connect
    from tests.tus_env import SessionWatch

    watch = SessionWatch(env.transfers)
    auth = env.auth_header[b"Authorization"][0]
    client = await connect(reactor, env.port.getHost().port)
    client.send(
        b"PATCH " + url.encode() + b" HTTP/1.1\r\nHost: h\r\nAuthorization: " + auth
        + b"\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Length: 100\r\n"
        b"Content-Type: application/offset+octet-stream\r\n\r\n0123456789"
    )  # fmt: skip
    session = await watch.next_session()
    arrived: defer.Deferred = defer.Deferred()
    session.arrival_waiters.append((10, arrived))
    await arrived
    return client
