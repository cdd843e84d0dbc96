"""HTTP methods on a file that has the user's own pending upload on it.

The user's pending upload is their private view of the path (HEAD's
``Upload-Offset``); the committed version is what everyone, and every
precondition, sees.  These tests pin what must not leak from one into the
other: preconditions, 201-or-204, lengths announced by an abandoned
upload, and who may delete the file.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString

from tests.ftp_env import _ClientFactory
from tests.http_env import HttpEnv, another_put_first
from tests.transfer_env import PASSWORD
from tests.tus_env import OCTETS, create, start_env, tus
from wsfront.auth import make_portal
from wsfront.catalog import errors as catalog_errors
from wsfront.ftp.factory import FTPFactory, FTPSettings


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def put(env, path: str, data: bytes, **headers: str):
    r = await env.request("PUT", path, data=data, headers=headers)
    return r, await r.text()


async def body_of(env, path: str) -> tuple[int, bytes]:
    r = await env.request("GET", path)
    return r.code, await r.content()


async def leave_pending(env, path: str, data: bytes = b"ne") -> None:
    """Leave the user's interrupted upload on ``path``, of no announced
    length (a PUT or STOR whose client went away after ``data``)."""
    session = await env.transfers.open_write(env.user, path, 0)
    session.write(data)
    await session.checkpoint()
    await session.interrupt()
    upload = await env.catalog.find_upload("/alice" + path)
    assert (upload.state, upload.checkpoint) == ("interrupted", len(data))


async def leave_segment(env, path: str, data: bytes = b"01", total: int = 10) -> None:
    """Leave the user's interrupted upload on ``path`` with a declared
    total: a segment that ends before it, as ``curl -C`` sends."""
    r, text = await put(env, path, data, **{"Content-Range": f"bytes 0-{len(data) - 1}/{total}"})
    assert (r.code, r.headers.getRawHeaders("Upload-Offset")) == (202, [str(len(data))]), text


def etag_of(r) -> str:
    return r.headers.getRawHeaders("ETag")[0]


@pytest_twisted.ensureDeferred
async def test_if_none_match_star_does_not_overwrite_a_file_with_a_pending_upload(env):
    r, _ = await put(env, "/f", b"ORIGINAL")
    assert r.code == 201
    await leave_pending(env, "/f")
    r, text = await put(env, "/f", b"new body", **{"If-None-Match": "*"})
    assert r.code == 412, text
    assert await body_of(env, "/f") == (200, b"ORIGINAL")
    upload = await env.catalog.find_upload("/alice/f")
    assert (upload.state, upload.checkpoint) == ("interrupted", 2)


@pytest_twisted.ensureDeferred
async def test_if_match_the_current_etag_holds_whatever_upload_is_pending(env):
    r, _ = await put(env, "/f", b"ORIGINAL")
    etag = etag_of(r)
    await leave_pending(env, "/f")
    r, text = await put(env, "/f", b"stale", **{"If-Match": '"not-the-etag"'})
    assert r.code == 412, text
    r, text = await put(env, "/f", b"second", **{"If-Match": etag})
    assert r.code in (201, 204), text
    assert await body_of(env, "/f") == (200, b"second")
    etag = etag_of(r)
    await leave_pending(env, "/f")
    r = await env.request("MOVE", "/f", headers={"Destination": "/g", "If-Match": '"nope"'})
    assert r.code == 412
    r = await env.request("MOVE", "/f", headers={"Destination": "/g", "If-Match": etag})
    assert r.code == 201, await r.text()
    assert await body_of(env, "/g") == (200, b"second")


@pytest_twisted.ensureDeferred
async def test_a_resumed_put_onto_an_existing_file_is_204_and_onto_a_new_one_201(env):
    r, _ = await put(env, "/f", b"ORIGINAL")
    assert r.code == 201
    await leave_pending(env, "/f", b"ne")
    r, text = await put(env, "/f", b"w body", **{"Content-Range": "bytes 2-7/8"})
    assert (r.code, r.headers.getRawHeaders("Location")) == (204, None), text
    assert await body_of(env, "/f") == (200, b"new body")
    await leave_pending(env, "/n", b"ne")
    r, text = await put(env, "/n", b"w", **{"Content-Range": "bytes 2-2/3"})
    assert (r.code, r.headers.getRawHeaders("Location")) == (201, ["/n"]), text
    assert await body_of(env, "/n") == (200, b"new")


# -- a total length announced by an abandoned client (item: takeover) ---------


@pytest.fixture
def both(tmp_path):
    """HTTP with tus, and FTP, over one transfer layer."""
    from twisted.internet import reactor

    async def start():
        e = await start_env(reactor, tmp_path)
        factory = FTPFactory(
            reactor, e.transfers, make_portal(e.authenticator), FTPSettings(data_timeout=10.0)
        )
        e.ftp_port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        e.ftp_factory = factory
        return e

    async def stop(e):
        await e.ftp_port.stopListening()
        for session in list(e.ftp_factory.sessions):
            session.transport.abortConnection()
        await e.stop()

    e = pytest_twisted.blockon(defer.ensureDeferred(start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(stop(e)))


async def ftp_client(env):
    from twisted.internet import reactor
    from twisted.internet.endpoints import HostnameEndpoint

    ep = HostnameEndpoint(reactor, "127.0.0.1", env.ftp_port.getHost().port)
    client = await ep.connect(_ClientFactory(reactor))
    assert (await client.reply())[0] == 220
    await client.login("alice", PASSWORD)
    return client


async def ftp_stor(env, path: str, data: bytes, rest: int | None = None) -> tuple[int, str]:
    client = await ftp_client(env)
    try:
        await client.cmd("TYPE I")
        port = await client.epsv()
        if rest is not None:
            code, text = await client.cmd(f"REST {rest}")
            assert code == 350, text
        peer = await client.data_connection(port)
        code, text = await client.cmd(f"STOR {path}")
        if code != 150:
            peer.transport.loseConnection()
            return code, text
        peer.transport.write(data)
        peer.transport.loseConnection()
        return await client.reply()
    finally:
        client.transport.loseConnection()


def called(obj, name: str) -> defer.Deferred:
    """Fires once the next call of ``obj.name`` (returning a Deferred) has
    fired, with its result."""
    d: defer.Deferred = defer.Deferred()
    original = getattr(obj, name)

    def wrapped(*a, **kw):
        setattr(obj, name, original)
        return defer.maybeDeferred(original, *a, **kw).addBoth(lambda r: (d.callback(r), r)[1])

    setattr(obj, name, wrapped)
    return d


async def upload_of(env, path: str):
    return await env.catalog.find_upload("/alice" + path)


@pytest_twisted.ensureDeferred
async def test_a_plain_put_starts_over_free_of_an_abandoned_uploads_total(env):
    await leave_segment(env, "/ra.bin", b"01", total=10)
    r, text = await put(env, "/ra.bin", b"hw")
    assert r.code == 201, text
    assert await body_of(env, "/ra.bin") == (200, b"hw")
    assert await upload_of(env, "/ra.bin") is None


@pytest_twisted.ensureDeferred
async def test_a_stor_starts_over_free_of_an_abandoned_uploads_total(both):
    await leave_segment(both, "/ra.bin", b"01", total=10)
    code, text = await ftp_stor(both, "ra.bin", b"hello world")
    assert code == 226, text
    assert await body_of(both, "/ra.bin") == (200, b"hello world")
    assert await upload_of(both, "/ra.bin") is None


@pytest_twisted.ensureDeferred
async def test_a_resume_without_a_total_continues_with_the_declared_one(env):
    await leave_segment(env, "/ra.bin", b"01", total=10)
    r, text = await put(env, "/ra.bin", b"23", **{"Content-Range": "bytes 2-3/*"})
    assert (r.code, r.headers.getRawHeaders("Upload-Offset")) == (202, ["4"]), text
    upload = await upload_of(env, "/ra.bin")
    assert (upload.state, upload.checkpoint, upload.declared_length) == ("interrupted", 4, 10)
    r, text = await put(env, "/ra.bin", b"456789", **{"Content-Range": "bytes 4-9/*"})
    assert r.code == 201, text
    assert await body_of(env, "/ra.bin") == (200, b"0123456789")


@pytest_twisted.ensureDeferred
async def test_a_resume_that_contradicts_the_declared_total_is_refused_untouched(env):
    await leave_segment(env, "/ra.bin", b"01", total=10)
    before = await upload_of(env, "/ra.bin")
    r, text = await put(env, "/ra.bin", b"23", **{"Content-Range": "bytes 2-3/20"})
    assert r.code == 409 and "total length is 10, not 20" in text, (r.code, text)
    r, text = await put(env, "/ra.bin", b"2" * 11, **{"Content-Range": "bytes 2-12/*"})
    assert r.code == 416 and "total length 10" in text, (r.code, text)
    after = await upload_of(env, "/ra.bin")
    assert after == before
    r = await env.request("HEAD", "/ra.bin")
    assert r.headers.getRawHeaders("Upload-Offset") == ["2"]


@pytest_twisted.ensureDeferred
async def test_an_ftp_resume_of_a_tus_upload_short_of_its_length_stays_pending(both):
    data = bytes(range(100))
    status, headers, _ = await create(both, 100, {"filename": "t.bin"})
    assert status == 201
    url = headers["location"]
    status, headers, _ = await tus(both, "PATCH", url, {"Upload-Offset": "0", **OCTETS}, data[:30])
    assert (status, headers["upload-offset"]) == (204, "30")
    code, text = await ftp_stor(both, "t.bin", data[30:50], rest=30)
    assert code == 451 and "50 of the 100 bytes" in text, (code, text)
    upload = await upload_of(both, "/t.bin")
    assert (upload.state, upload.checkpoint, upload.declared_length) == ("interrupted", 50, 100)
    status, headers, _ = await tus(both, "HEAD", url)
    assert (headers["upload-offset"], headers["upload-length"]) == ("50", "100")
    status, headers, _ = await tus(both, "PATCH", url, {"Upload-Offset": "50", **OCTETS}, data[50:])
    assert (status, headers["upload-offset"]) == (204, "100")
    assert await body_of(both, "/t.bin") == (200, data)


@pytest_twisted.ensureDeferred
async def test_an_ftp_resume_past_the_declared_length_keeps_what_fits_pending(both):
    await leave_segment(both, "/ra.bin", b"01", total=10)
    # The 552 goes out as the session fails; its interruption is recorded
    # meanwhile.
    recorded = called(both.catalog, "interrupt_upload")
    code, text = await ftp_stor(both, "ra.bin", b"x" * 20, rest=2)
    # 552, as for a quota, but it is no quota of the account's: said so.
    assert (code, text) == (
        552,
        "Upload passed its declared length: the upload was declared 10 bytes long",
    )
    await recorded
    upload = await upload_of(both, "/ra.bin")
    assert (upload.state, upload.declared_length) == ("interrupted", 10)
    assert 2 <= upload.checkpoint <= 10
    code, text = await ftp_stor(both, "ra.bin", b"23456789", rest=2)
    assert code == 226, text
    assert await body_of(both, "/ra.bin") == (200, b"0123456789")


@pytest_twisted.ensureDeferred
async def test_an_ftp_appe_after_size_of_an_http_segment_replaced_since_is_refused(both):
    """A PUT of bytes 0-499/1000 left a pending upload; an FTP client's
    SIZE said 500.  Another client then stored the file whole (a STOR from
    0 takes the upload over and commits: ``curl -T``), or deleted it and
    PUT another segment: the APPE resumed at 500 and cut the 3 MB file to
    510 bytes.  It is refused (450), the file left as it is."""
    big = os.urandom(3_000_000)
    for case in ("stored whole", "deleted and put again"):
        path = "/" + case.replace(" ", "_")
        await leave_segment(both, path, b"s" * 500, total=1000)
        c = await ftp_client(both)
        await c.cmd("TYPE I")
        assert await c.cmd(f"SIZE {path}") == (213, "500")
        if case == "stored whole":
            assert (await ftp_stor(both, path, big))[0] == 226
        else:
            r = await both.request("DELETE", path)
            assert r.code == 204
            await leave_segment(both, path, b"t" * 500, total=1000)
        port = await c.epsv()
        peer = await c.data_connection(port)
        code, text = await c.cmd(f"APPE {path}")
        peer.transport.loseConnection()
        assert code == 450 and "send SIZE again" in text, (case, code, text)
        if case == "stored whole":
            assert await body_of(both, path) == (200, big)
        else:
            upload = await upload_of(both, path)
            assert (upload.state, upload.checkpoint) == ("interrupted", 500)


@pytest_twisted.ensureDeferred
async def test_a_failed_commit_leaves_the_upload_interrupted_not_active(env, monkeypatch):
    await leave_segment(env, "/ra.bin", b"01", total=4)
    original = env.catalog.commit_upload

    def refuse(*a, **kw):
        monkeypatch.setattr(env.catalog, "commit_upload", original)
        return defer.fail(catalog_errors.InvalidOffset("refused for the test"))

    monkeypatch.setattr(env.catalog, "commit_upload", refuse)
    r, text = await put(env, "/ra.bin", b"23", **{"Content-Range": "bytes 2-3/4"})
    assert r.code == 416, text
    upload = await upload_of(env, "/ra.bin")
    assert upload.state == "interrupted"
    r, text = await put(env, "/ra.bin", b"23", **{"Content-Range": "bytes 2-3/4"})
    assert r.code == 201, text
    assert await body_of(env, "/ra.bin") == (200, b"0123")


@pytest_twisted.ensureDeferred
async def test_a_tus_patch_at_0_keeps_its_uploads_length(both):
    status, headers, _ = await create(both, 10, {"filename": "z.bin"})
    assert status == 201
    url = headers["location"]
    status, headers, _ = await tus(both, "PATCH", url, {"Upload-Offset": "0", **OCTETS}, b"0123")
    assert (status, headers["upload-offset"]) == (204, "4")
    status, headers, _ = await tus(both, "HEAD", url)
    assert (headers["upload-offset"], headers.get("upload-length")) == ("4", "10")


# -- deleting a file with the user's own interrupted upload on it --------------


@pytest_twisted.ensureDeferred
async def test_the_owner_deletes_a_file_abandoning_their_interrupted_upload(env):
    r, _ = await put(env, "/f", b"ORIGINAL")
    etag = etag_of(r)
    await leave_pending(env, "/f")
    upload = await upload_of(env, "/f")
    r = await env.request("DELETE", "/f", headers={"If-Match": etag})
    assert r.code == 204, await r.text()
    assert (await body_of(env, "/f"))[0] == 404
    assert (await env.catalog.get_upload(upload.upload_id)).state == "aborted"
    await leave_pending(env, "/p")  # nothing committed: the upload is all there is
    r = await env.request("DELETE", "/p")
    assert r.code == 204, await r.text()
    r = await env.request("HEAD", "/p")
    assert (r.code, r.headers.getRawHeaders("Upload-Offset")) == (404, None)
    assert await upload_of(env, "/p") is None


@pytest_twisted.ensureDeferred
async def test_a_live_upload_or_another_users_still_keeps_a_file_from_deletion(env):
    await put(env, "/live", b"ORIGINAL")
    session = await env.transfers.open_write(env.user, "/live", 0)
    session.write(b"ne")
    r = await env.request("DELETE", "/live")
    assert r.code == 409
    await session.interrupt()
    await env.catalog.add_user("bob", "bobpass", root="/alice", adopt_files=True)
    bob = await env.catalog.get_user("bob")
    await put(env, "/theirs", b"ORIGINAL")
    session = await env.transfers.open_write(bob, "/theirs", 0)
    session.write(b"ne")
    await session.interrupt()
    r = await env.request("DELETE", "/theirs")
    assert r.code == 409
    assert await body_of(env, "/theirs") == (200, b"ORIGINAL")
    assert (await upload_of(env, "/theirs")).state == "interrupted"


@pytest_twisted.ensureDeferred
async def test_dele_agrees_with_delete_on_pending_uploads(both):
    await put(both, "/f", b"ORIGINAL")
    await leave_pending(both, "/f")
    await put(both, "/theirs", b"ORIGINAL")
    await both.catalog.add_user("bob", "bobpass", root="/alice", adopt_files=True)
    session = await both.transfers.open_write(await both.catalog.get_user("bob"), "/theirs", 0)
    session.write(b"ne")
    await session.interrupt()
    client = await ftp_client(both)
    try:
        assert (await client.cmd("DELE f"))[0] == 250
        assert (await client.cmd("DELE theirs"))[0] == 450
    finally:
        client.transport.loseConnection()
    assert (await body_of(both, "/f"))[0] == 404
    assert await body_of(both, "/theirs") == (200, b"ORIGINAL")


@pytest_twisted.ensureDeferred
async def test_delete_spares_an_upload_still_sending_whose_row_was_marked_interrupted(env):
    """Another front end marks this one's uploads interrupted when its
    liveness lease lapses (a long pause, not a crash): its client is still
    sending, so its owner's DELETE must not abandon the upload under it."""
    await put(env, "/live", b"ORIGINAL")
    session = await env.transfers.open_write(env.user, "/live", 0)
    session.write(b"new bo")
    await session.checkpoint()
    await env.catalog.interrupt_sessions_of(env.transfers.name)
    r = await env.request("DELETE", "/live")
    assert r.code == 409, await r.text()
    session.write(b"dy")
    await session.finish()
    assert await body_of(env, "/live") == (200, b"new body")


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_makes_the_upload_of_a_paused_front_end_active_again(env):
    await put(env, "/live", b"ORIGINAL")
    session = await env.transfers.open_write(env.user, "/live", 0)
    session.write(b"new bo")
    await session.checkpoint()
    await env.catalog.interrupt_sessions_of(env.transfers.name)
    assert (await upload_of(env, "/live")).state == "interrupted"
    session.write(b"dy")
    await session.checkpoint()
    assert (await upload_of(env, "/live")).state == "active"
    with pytest.raises(catalog_errors.PendingUploadExists):  # another front end's DELETE
        await env.catalog.delete("/alice/live", user="alice")
    await session.finish()
    assert await body_of(env, "/live") == (200, b"new body")


# -- replacing such a file by a rename (temp file, then rename: WinSCP) --------


async def move(env, src: str, dst: str):
    r = await env.request("MOVE", src, headers={"Destination": dst, "Overwrite": "T"})
    return r.code, await r.text()


async def leave_theirs(env, path: str) -> None:
    """bob's interrupted upload on ``path``, a file of alice's tree."""
    await env.catalog.add_user("bob", "bobpass", root="/alice", adopt_files=True)
    session = await env.transfers.open_write(await env.catalog.get_user("bob"), path, 0)
    session.write(b"ne")
    await session.interrupt()


@pytest_twisted.ensureDeferred
async def test_move_over_a_file_abandons_the_owners_interrupted_upload_as_delete_does(env):
    await put(env, "/f", b"ORIGINAL")
    await leave_pending(env, "/f")
    upload = await upload_of(env, "/f")
    await put(env, "/f.tmp", b"new body")
    code, text = await move(env, "/f.tmp", "/f")
    assert code == 204, text
    assert await body_of(env, "/f") == (200, b"new body")
    assert (await env.catalog.get_upload(upload.upload_id)).state == "aborted"
    await put(env, "/live", b"ORIGINAL")
    session = await env.transfers.open_write(env.user, "/live", 0)
    session.write(b"ne")
    await put(env, "/live.tmp", b"new body")
    assert (await move(env, "/live.tmp", "/live"))[0] == 409
    await session.interrupt()
    await put(env, "/theirs", b"ORIGINAL")
    await leave_theirs(env, "/theirs")
    await put(env, "/theirs.tmp", b"new body")
    assert (await move(env, "/theirs.tmp", "/theirs"))[0] == 409
    assert await body_of(env, "/theirs") == (200, b"ORIGINAL")
    assert (await upload_of(env, "/theirs")).state == "interrupted"


@pytest_twisted.ensureDeferred
async def test_rnto_over_a_file_agrees_with_dele_on_pending_uploads(both):
    await put(both, "/f", b"ORIGINAL")
    await leave_pending(both, "/f")
    await put(both, "/f.tmp", b"new body")
    await put(both, "/theirs", b"ORIGINAL")
    await leave_theirs(both, "/theirs")
    await put(both, "/theirs.tmp", b"new body")
    client = await ftp_client(both)
    try:
        assert (await client.cmd("RNFR f.tmp"))[0] == 350
        assert (await client.cmd("RNTO f"))[0] == 250
        assert (await client.cmd("RNFR theirs.tmp"))[0] == 350
        assert (await client.cmd("RNTO theirs"))[0] == 450
    finally:
        client.transport.loseConnection()
    assert await body_of(both, "/f") == (200, b"new body")
    assert await upload_of(both, "/f") is None
    assert await body_of(both, "/theirs") == (200, b"ORIGINAL")


# -- a session whose upload was deleted under it is told so, not "taken over" --


@pytest_twisted.ensureDeferred
async def test_a_writer_whose_upload_was_deleted_is_told_so_not_that_it_was_taken_over(env):
    from wsfront.ftp.errors_map import reply_for
    from wsfront.http.errors_map import http_error
    from wsfront.transfer.errors import SessionFenced

    await put(env, "/live", b"ORIGINAL")
    session = await env.transfers.open_write(env.user, "/live", 0)
    session.write(b"new bo")
    await session.checkpoint()
    await env.catalog.interrupt_sessions_of(env.transfers.name)
    # Another front end's DELETE (this one spares the sessions it holds).
    assert await env.catalog.delete("/alice/live", user="alice") == session.upload_id
    session.write(b"dy")
    with pytest.raises(SessionFenced) as caught:  # the status codes of a fence
        await session.finish()
    assert str(caught.value) == "the upload was deleted or aborted"
    assert reply_for(caught.value) == (451, "Upload ended: the upload was deleted or aborted")
    error = http_error(caught.value, b"/live")
    assert (error.status, error.message) == (
        409,
        "/live: upload ended: the upload was deleted or aborted",
    )


@pytest_twisted.ensureDeferred
async def test_a_stor_whose_upload_is_aborted_meanwhile_is_told_so(both):
    client = await ftp_client(both)
    try:
        await client.cmd("TYPE I")
        port = await client.epsv()
        peer = await client.data_connection(port)
        opened = called(both.transfers, "open_write")
        code, text = await client.cmd("STOR f")
        assert code == 150, text
        session = await opened
        await both.catalog.abort_upload(session.upload_id)  # tus DELETE elsewhere
        peer.transport.write(b"data")
        peer.transport.loseConnection()
        assert await client.reply() == (451, "Upload ended: the upload was deleted or aborted")
    finally:
        client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_if_match_put_whose_pending_upload_is_committed_meanwhile_is_judged_again(
    env, monkeypatch
):
    """alice's PUT with If-Match judged her file with her interrupted upload
    on it; before it takes the upload over, her other client finishes that
    upload (a new version).  The takeover finds it ended: the PUT looks
    again and the precondition, about a version now gone, fails (412)
    rather than a 409 about an upload it never meant to resume."""
    await put(env, "/f", b"ORIGINAL")
    etag = etag_of(await env.request("HEAD", "/f"))
    await leave_pending(env, "/f", b"ne")
    take_over = env.catalog.take_over
    finished = []

    def take_over_after_the_upload_ends(*args, **kwargs):
        if finished:
            return take_over(*args, **kwargs)
        finished.append(None)

        async def finish_it():
            session = await env.transfers.open_write(env.user, "/f", 2, resume=True)
            session.write(b"w file")
            await session.finish()

        d = defer.ensureDeferred(finish_it())
        d.addCallback(lambda _: take_over(*args, **kwargs))
        return d

    monkeypatch.setattr(env.catalog, "take_over", take_over_after_the_upload_ends)
    r, text = await put(env, "/f", b"mine", **{"If-Match": etag})
    assert finished
    assert r.code == 412, text
    assert await body_of(env, "/f") == (200, b"new file")


# -- preconditions on a path with only a pending upload -----------------------


def namespace_request(env, method: str, path: str, **headers: str):
    """A DELETE of ``path``, or a MOVE of it to /moved, with ``headers``."""
    if method == "MOVE":
        headers["Destination"] = "/moved"
    return env.request(method, path, headers=headers)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("method", ["DELETE", "MOVE"])
async def test_a_pending_upload_alone_is_no_representation_to_preconditions(env, method):
    """Nothing committed, only alice's interrupted upload: there is no
    current representation (RFC 9110, 13.1.1-2), as PUT judges it too, so
    If-Match (``*`` or a tag) fails and leaves the upload be, and
    ``If-None-Match: *`` holds: the upload is abandoned (DELETE) or moves
    with its name (MOVE), as without preconditions."""
    await leave_pending(env, "/p")
    upload = await upload_of(env, "/p")
    for value in ("*", '"any"'):
        r = await namespace_request(env, method, "/p", **{"If-Match": value})
        assert r.code == 412, await r.text()
    assert (await env.catalog.get_upload(upload.upload_id)).state == "interrupted"
    r = await namespace_request(env, method, "/p", **{"If-None-Match": "*"})
    assert r.code == (204 if method == "DELETE" else 201), await r.text()
    assert await upload_of(env, "/p") is None
    if method == "DELETE":
        assert (await env.catalog.get_upload(upload.upload_id)).state == "aborted"
    else:
        moved = await upload_of(env, "/moved")
        assert (moved.upload_id, moved.state) == (upload.upload_id, "interrupted")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("method", ["DELETE", "MOVE"])
async def test_if_none_match_on_a_pending_upload_loses_to_a_commit_before_it_runs(
    env, monkeypatch, method
):
    """``If-None-Match: *`` held on /race with only alice's pending upload
    there; another of her clients commits a file there before the removal
    or rename runs.  That is VersionChanged as for an If-Match's etag: the
    request looks again, the file now exists, 412, and the file stays."""
    await leave_pending(env, "/race")
    theirs = another_put_first(env, monkeypatch, "delete" if method == "DELETE" else "rename")
    r = await namespace_request(env, method, "/race", **{"If-None-Match": "*"})
    assert theirs and theirs[0].code == 201
    assert r.code == 412, await r.text()
    assert await body_of(env, "/race") == (200, b"theirs")
    assert (await body_of(env, "/moved"))[0] == 404
