"""tuspy, a real tus client, against the site: stop and resume, a client
SIGKILLed mid-PATCH, and uploads that change protocol half-way (tus then
Content-Range PUT, PUT then tus), each checked byte for byte by sha256.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, protocol

from tests.http_env import MiB, payload
from tests.http_raw import connect, head_of
from tests.tus_env import (
    OCTETS,
    SessionWatch,
    auth_value,
    client_argv,
    committed,
    create,
    environ,
    sha,
    start_env,
    stop_env,
    tus,
    tuspy,
    write_file,
)


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(start_env(reactor, tmp_path)))
    yield e
    pytest_twisted.blockon(stop_env(e))


def endpoint(env) -> str:
    return env.url("/-/uploads/")


class _Process(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred = defer.Deferred()
        self.out = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("chunk_size", [None, 256 * 1024], ids=["unchunked", "chunked"])
async def test_tuspy_uploads_stops_and_a_new_process_resumes(env, chunk_size):
    data = payload(2 * MiB + 12345)
    path = write_file(env, "src.bin", data)
    watch = SessionWatch(env.transfers)
    first = await tuspy(
        env,
        endpoint=endpoint(env),
        file=path,
        metadata={"filename": "tuspy.bin"},
        chunk_size=chunk_size,
        stop_at=1 * MiB,
        checksum=True,
    )
    assert first["offset"] == 1 * MiB
    upload = await env.catalog.find_upload("/alice/tuspy.bin")
    assert upload.checkpoint == 1 * MiB and upload.state == "interrupted"
    assert upload.declared_length == len(data)
    watch.drain()

    second = await tuspy(env, url=first["url"], file=path, chunk_size=chunk_size, checksum=True)
    assert second["offset"] == len(data)
    resumed = sum(s.received for s in watch.drain())
    assert resumed == len(data) - 1 * MiB
    assert sha(await committed(env, "/tuspy.bin")) == sha(data)


@pytest_twisted.ensureDeferred
async def test_patch_of_a_sigkilled_tuspy_is_resumed_by_a_new_process(env):
    from twisted.internet import reactor

    # Bigger than what the loopback socket buffers can hold, so the PATCH
    # cannot have been sent whole before the kill.
    data = payload(32 * MiB)
    path = write_file(env, "big.bin", data)
    watch = SessionWatch(env.transfers)
    proc = _Process()
    argv = client_argv(env, endpoint=endpoint(env), file=path, metadata={"filename": "k.bin"})
    transport = reactor.spawnProcess(proc, argv[0], argv, env=environ())
    await watch.next_session()  # the creation POST's
    patching = await watch.next_session()
    await SessionWatch.arrived(patching, 1 * MiB)
    transport.signalProcess("KILL")
    await proc.ended
    await patching.interrupted
    upload = await env.catalog.find_upload("/alice/k.bin")
    assert upload.state == "interrupted"
    assert 1 * MiB <= upload.checkpoint < len(data)
    url = env.url(f"/-/uploads/{upload.upload_id}")
    status, headers, _ = await tus(env, "HEAD", f"/-/uploads/{upload.upload_id}")
    assert status == 200 and int(headers["upload-offset"]) == upload.checkpoint

    done = await tuspy(env, url=url, file=path)
    assert done["offset"] == len(data)
    resumed = await watch.next_session()
    assert resumed.received == len(data) - upload.checkpoint
    assert sha(await committed(env, "/k.bin")) == sha(data)


@pytest_twisted.ensureDeferred
async def test_upload_begun_with_tus_is_finished_by_a_content_range_put(env):
    data = payload(1 * MiB + 777)
    path = write_file(env, "src.bin", data)
    first = await tuspy(
        env, endpoint=endpoint(env), file=path, metadata={"filename": "x.bin"}, stop_at=300_000
    )
    assert first["offset"] == 300_000
    response = await env.request(
        "PUT",
        "/x.bin",
        data=data[300_000:],
        headers={"Content-Range": [f"bytes 300000-{len(data) - 1}/{len(data)}"]},
    )
    assert response.code in (201, 204), await response.text()
    assert sha(await committed(env, "/x.bin")) == sha(data)
    status, headers, _ = await tus(env, "HEAD", first["url"].split(env.base, 1)[1])
    assert status == 200 and headers["upload-offset"] == str(len(data))


@pytest_twisted.ensureDeferred
async def test_partial_put_is_finished_by_tuspy_at_the_advertised_url(env):
    data = payload(1 * MiB + 4321)
    half = 400_000
    response = await env.request(
        "PUT",
        "/y.bin",
        data=data[:half],
        headers={"Content-Range": [f"bytes 0-{half - 1}/{len(data)}"]},
    )
    assert response.code == 202
    head = await env.request("HEAD", "/y.bin")
    assert head.headers.getRawHeaders("Upload-Offset") == [str(half)]
    (link,) = head.headers.getRawHeaders("Link")
    assert link.endswith('>; rel="tus-upload"')
    url = env.url(link[1 : link.index(">")])
    path = write_file(env, "src.bin", data)
    watch = SessionWatch(env.transfers)
    done = await tuspy(env, url=url, file=path, checksum=True)
    assert done["offset"] == len(data)
    assert (await watch.next_session()).received == len(data) - half
    assert sha(await committed(env, "/y.bin")) == sha(data)


@pytest_twisted.ensureDeferred
async def test_interrupted_put_without_a_length_is_finished_by_tuspy(env):
    """A PUT cut off (like an FTP upload) declares no length: tuspy gives it
    with Upload-Length on its PATCH (creation-defer-length)."""
    from twisted.internet import reactor

    data = payload(1 * MiB + 99)
    half = 300_000
    watch = SessionWatch(env.transfers)
    client = await connect(reactor, env.port.getHost().port)
    client.send(
        b"PUT /z.bin HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nAuthorization: %s\r\n\r\n"
        % (len(data), auth_value(env).encode())
    )
    session = await watch.next_session()
    client.send(data[:half])
    await SessionWatch.arrived(session, half)
    client.close()
    await session.interrupted
    upload = await env.catalog.find_upload("/alice/z.bin")
    assert (upload.checkpoint, upload.declared_length) == (half, None)

    status, headers, _ = await tus(env, "HEAD", f"/-/uploads/{upload.upload_id}")
    assert status == 200 and headers["upload-defer-length"] == "1"
    path = write_file(env, "src.bin", data)
    done = await tuspy(
        env,
        url=env.url(f"/-/uploads/{upload.upload_id}"),
        file=path,
        headers={"Upload-Length": str(len(data))},
    )
    assert done["offset"] == len(data)
    assert sha(await committed(env, "/z.bin")) == sha(data)


@pytest_twisted.ensureDeferred
async def test_head_of_a_pending_path_links_to_its_tus_upload(env):
    from twisted.internet import reactor

    response = await env.request(
        "PUT", "/h.bin", data=b"abc", headers={"Content-Range": ["bytes 0-2/10"]}
    )
    assert response.code == 202
    upload = await env.catalog.find_upload("/alice/h.bin")
    client = await connect(reactor, env.port.getHost().port)
    client.send(
        b"HEAD /h.bin HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n" % auth_value(env).encode()
    )
    _, headers = head_of(await client.until(b"\r\n\r\n"))
    client.close()
    assert headers["link"] == f'</-/uploads/{upload.upload_id}>; rel="tus-upload"'


@pytest_twisted.ensureDeferred
async def test_upload_begun_on_one_front_end_is_finished_on_another(env):
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from wsfront.http.site import make_site
    from wsfront.http.tus import TusEndpoint

    other = await env.transfer.front_end("fe-b")
    site = make_site(reactor, other, env.authenticator)
    site.mount("uploads", TusEndpoint())
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    try:
        data = payload(1 * MiB + 5)
        path = write_file(env, "src.bin", data)
        first = await tuspy(
            env, endpoint=endpoint(env), file=path, metadata={"filename": "fe.bin"}, stop_at=MiB
        )
        upload_path = first["url"].split(env.base, 1)[1]
        url_b = f"http://127.0.0.1:{port.getHost().port}{upload_path}"
        done = await tuspy(env, url=url_b, file=path, checksum=True)
        assert done["offset"] == len(data)
        upload = await env.catalog.find_upload("/alice/fe.bin")
        assert upload is None
        assert sha(await committed(env, "/fe.bin")) == sha(data)
        finished = await env.catalog.get_upload(upload_path.rsplit("/", 1)[1])
        assert (finished.state, finished.owner) == ("committed", "fe-b")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_upload_begun_with_tus_is_finished_by_curl_over_ftp_size_and_appe(env):
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    factory_module = pytest.importorskip("wsfront.ftp.factory")
    from wsfront.auth import make_portal

    factory = factory_module.FTPFactory(
        reactor,
        env.transfers,
        make_portal(env.authenticator),
        factory_module.FTPSettings(data_timeout=10.0),
    )
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    try:
        data = payload(1 * MiB + 321)
        path = write_file(env, "src.bin", data)
        first = await tuspy(
            env, endpoint=endpoint(env), file=path, metadata={"filename": "f.bin"}, stop_at=250_000
        )
        assert first["offset"] == 250_000
        watch = SessionWatch(env.transfers)
        user, password = env.auth
        _, err, code = await env.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--ftp-pasv",
                "-u",
                f"{user}:{password}",
                "-C",
                "-",
                "-T",
                str(path),
                f"ftp://127.0.0.1:{port.getHost().port}/f.bin",
            ]
        )
        assert code == 0, err.decode()
        assert (await watch.next_session()).received == len(data) - 250_000
        assert sha(await committed(env, "/f.bin")) == sha(data)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_stalled_patch_on_one_front_end_is_taken_over_from_another(tmp_path):
    """A client whose PATCH hangs on front end A resumes with tuspy on B:
    B takes the still-active session over at its checkpoint, A's writer is
    fenced, and the file is exactly the client's."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from wsfront.http.site import make_site
    from wsfront.http.tus import TusEndpoint

    env = await start_env(reactor, tmp_path, checkpoint_bytes=64 * 1024)
    other = await env.transfer.front_end("fe-b")
    site = make_site(reactor, other, env.authenticator)
    site.mount("uploads", TusEndpoint())
    port_b = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    try:
        data = payload(1 * MiB + 3)
        status, headers, _ = await create(env, len(data), {"filename": "stall.bin"})
        assert status == 201
        uid = headers["location"].rsplit("/", 1)[1]
        watch = SessionWatch(env.transfers)
        client = await connect(reactor, env.port.getHost().port)
        client.send(
            b"PATCH /-/uploads/%s HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            b"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            b"Content-Length: %d\r\nAuthorization: %s\r\n\r\n"
            % (uid.encode(), len(data), auth_value(env).encode())
        )
        stalled = await watch.next_session()
        client.send(data[:300_000])
        await SessionWatch.arrived(stalled, 300_000)
        while stalled.durable < 300_000:
            await stalled.checkpoint()
        upload = await env.catalog.get_upload(uid)
        assert (upload.state, upload.owner, upload.checkpoint) == ("active", "fe-a", 300_000)

        path = write_file(env, "src.bin", data)
        url_b = f"http://127.0.0.1:{port_b.getHost().port}/-/uploads/{uid}"
        done = await tuspy(env, url=url_b, file=path)
        assert done["offset"] == len(data)
        client.close()
        await stalled.interrupted
        assert stalled.state == "fenced"
        finished = await env.catalog.get_upload(uid)
        assert (finished.state, finished.owner) == ("committed", "fe-b")
        assert sha(await committed(env, "/stall.bin")) == sha(data)
    finally:
        await port_b.stopListening()
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_a_newer_patch_supersedes_one_still_running(tmp_path):
    from twisted.internet import reactor

    env = await start_env(reactor, tmp_path, checkpoint_bytes=64 * 1024)
    try:
        data = payload(600_000)
        _, headers, _ = await create(env, len(data), {"filename": "two.bin"})
        uid = headers["location"].rsplit("/", 1)[1]
        watch = SessionWatch(env.transfers)
        old = await connect(reactor, env.port.getHost().port)
        old.send(
            b"PATCH /-/uploads/%s HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            b"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            b"Content-Length: %d\r\nAuthorization: %s\r\n\r\n"
            % (uid.encode(), len(data), auth_value(env).encode())
        )
        first = await watch.next_session()
        old.send(data[:200_000])
        await SessionWatch.arrived(first, 200_000)
        while first.durable < 200_000:
            await first.checkpoint()
        status, headers, _ = await tus(
            env,
            "PATCH",
            f"/-/uploads/{uid}",
            {**OCTETS, "Upload-Offset": str(first.durable)},
            data[first.durable :],
        )
        assert status == 204 and headers["upload-offset"] == str(len(data))
        answer = await old.until(b"\r\n\r\n")
        assert head_of(answer)[0] == 409
        assert sha(await committed(env, "/two.bin")) == sha(data)
    finally:
        await env.stop()
