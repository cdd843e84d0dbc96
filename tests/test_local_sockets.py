"""wslocal's storage servers listen on UNIX sockets, and its front end
reaches them there.

Uploads are the one stream of ``twistd wslocal`` that still crosses a
socket between its front end and its storage servers (reads and small puts
come from the stores in process: ``wsstorage.inprocess``); a UNIX socket
costs about half the CPU of a loopback TCP connection.  The sockets are in
``DATA/run`` (mode 0700), or, when that path is too long for a socket
(108 bytes), in a private folder of the temporary folder removed at stop,
or, failing that too, the servers listen on 127.0.0.1 as before; and
``--storage-sockets tcp`` asks for TCP.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.application import service
from twisted.internet import reactor
from twisted.internet.address import UNIXAddress
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage

from tests.support import python_env, require_tool
from wsfront import local
from wsfront.local import LocalClusterService, LocalOptions
from wsstorage import client as client_module
from wsstorage import failpoints


class _Quiet:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


async def curl(*args: str) -> bytes:
    out, err, code = await getProcessOutputAndValue(
        require_tool("curl"), ["-sS", "--fail", *args], env=os.environ
    )
    assert code == 0, err
    return out


def options(data: Path, *extra: str) -> LocalOptions:
    opts = LocalOptions()
    opts.parseOptions(
        ["--data", str(data), "--ftp", "tcp:0:interface=127.0.0.1",
         "--http", "tcp:0:interface=127.0.0.1", *extra]
    )  # fmt: skip
    return opts


async def started(opts: LocalOptions) -> LocalClusterService:
    """A started cluster; a failed start raises here.  Not through
    ``startService``: on failure that stops the reactor and exits the
    process at shutdown (right for twistd, fatal to this test run)."""
    cluster = LocalClusterService(reactor, opts, out=_Quiet())
    service.MultiService.startService(cluster)
    try:
        await cluster._start()
    except BaseException:
        await cluster.stopService()
        raise
    return cluster


def endpoints(cluster: LocalClusterService) -> dict[str, str]:
    pool = cluster.frontend.pool
    return {name: pool.endpoint(name) for name in pool.names()}


@pytest_twisted.ensureDeferred
async def test_uploads_reach_the_storage_servers_over_unix_sockets_in_the_data_folder(
    tmp_path, monkeypatch
):
    data = Path(tempfile.mkdtemp(prefix="wsl-"))  # short: tmp_path may be too long
    sent: list[int] = []
    sendmsg = client_module._sendmsg

    def recording(sock, iov):
        n = sendmsg(sock, iov)
        sent.append(sock.family)
        return n

    monkeypatch.setattr(client_module, "_sendmsg", recording)
    # Uploads go to this process's stores in process unless a write-path
    # failpoint is armed (``wsstorage.inprocess_write``): one that never
    # fires sends them over the sockets, as in a failure test.
    never = failpoints.Failpoints("storage.after_commit=raise@999999999999")
    monkeypatch.setattr(failpoints, "_global", never)
    cluster = await started(options(data))
    try:
        run = data.resolve() / "run"
        assert (run.stat().st_mode & 0o777) == 0o700
        for name, endpoint in endpoints(cluster).items():
            assert endpoint == f"unix:path={run / name}.sock"
            assert (run / f"{name}.sock").is_socket()
        login = ":".join(cluster.login)
        url = f"http://127.0.0.1:{cluster.frontend.address('http').port}/big.bin"
        payload = os.urandom(6 << 20)
        (tmp_path / "big.bin").write_bytes(payload)
        await curl("-u", login, "-T", str(tmp_path / "big.bin"), url)
        got = await curl("-u", login, url)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert sent and set(sent) == {socket.AF_UNIX}, "the upload went straight into sockets"
        peers = [
            conn.transport.getPeer()
            for factory in cluster.factories.values()
            for conn in factory.connections
        ]
        assert peers and all(isinstance(p, UNIXAddress) for p in peers)
        # The CLI reaches them through the catalog's endpoints too.
        status = subprocess.run(
            [sys.executable, "-m", "wsfront.cli", "--catalog",
             f"sqlite:///{data.resolve() / 'catalog.sqlite'}", "status"],
            env=python_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        for name in ("s1", "s2", "s3"):
            line = next(x for x in status.stdout.splitlines() if x.split()[:1] == [name])
            assert "unix:path=" in line and " up " in f" {line} ", status.stdout
    finally:
        await cluster.stopService()
        shutil.rmtree(data, ignore_errors=True)
    assert not list(run.glob("*.sock")), "the sockets are removed at stop"


@pytest_twisted.ensureDeferred
async def test_a_socket_a_killed_wslocal_left_behind_does_not_stop_the_next_start(tmp_path):
    data = Path(tempfile.mkdtemp(prefix="wsl-"))
    try:
        run = data / "run"
        run.mkdir()
        left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        left.bind(str(run / "s1.sock"))  # bound and never unlinked: as after a SIGKILL
        left.close()
        cluster = await started(options(data))
        try:
            assert endpoints(cluster)["s1"].startswith("unix:path=")
        finally:
            await cluster.stopService()
    finally:
        shutil.rmtree(data, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_a_start_that_fails_part_way_closes_the_stores_and_sockets_it_opened(tmp_path):
    """The third store cannot open (a file where its folder goes): the
    first two are closed (their folders' locks free: this process opens
    them again) and their sockets gone, and the next start, the folder
    fixed, runs in the same process."""
    from wsstorage.blobstore import BlobStore

    data = Path(tempfile.mkdtemp(prefix="wsl-"))
    try:
        (data / "storage").mkdir()
        (data / "storage" / "s3").write_text("not a folder")
        cluster = LocalClusterService(reactor, options(data), out=_Quiet())
        service.MultiService.startService(cluster)
        with pytest.raises(OSError):
            await cluster._start()
        for name in ("s1", "s2"):
            BlobStore.open(data / "storage" / name).close()  # FormatError if still open
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with probe, pytest.raises(OSError):
                probe.connect(str(data / "run" / f"{name}.sock"))
        assert list(cluster.stores) == [] and list(cluster.storage_ports) == []
        await cluster.stopService()  # as twistd's shutdown: nothing closed twice
        (data / "storage" / "s3").unlink()
        again = await started(options(data))
        await again.stopService()
    finally:
        shutil.rmtree(data, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_a_store_that_fails_to_close_after_a_failed_start_does_not_hide_it(
    tmp_path, monkeypatch
):
    """s1's close raises (a journal that cannot checkpoint) during the
    clean-up of a start whose third store could not open: s2 is closed all
    the same, and the caller gets the start's own error, not the close's."""
    from wsstorage.blobstore import BlobStore

    data = Path(tempfile.mkdtemp(prefix="wsl-"))
    opened: list[BlobStore] = []
    real_open = LocalClusterService.open_store

    def open_store(self, name):
        store = real_open(self, name)
        if name == "s1":
            real_close = store.close

            def close():
                real_close()
                raise OSError(5, "journal checkpoint failed")

            store.close = close
        opened.append(store)
        return store

    monkeypatch.setattr(LocalClusterService, "open_store", open_store)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        (data / "storage").mkdir()
        (data / "storage" / "s3").write_text("not a folder")
        cluster = LocalClusterService(reactor, options(data), out=_Quiet())
        service.MultiService.startService(cluster)
        with pytest.raises(OSError) as raised:
            await cluster._start()
        assert raised.value.errno != 5, raised.value
        assert len(opened) == 2
        BlobStore.open(data / "storage" / "s2").close()  # FormatError if still open
        assert any("s1 did not close" in formatEvent(e) for e in events)
        assert list(cluster.stores) == []
    finally:
        globalLogPublisher.removeObserver(events.append)
        shutil.rmtree(data, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_a_data_folder_too_long_for_a_socket_path_puts_them_in_a_temporary_folder(
    tmp_path,
):
    data = tmp_path / ("d" * 120) / "data"
    cluster = await started(options(data))
    try:
        folder = cluster.socket_tmp
        assert folder is not None and folder.parent == Path(tempfile.gettempdir())
        assert (folder.stat().st_mode & 0o777) == 0o700
        for name, endpoint in endpoints(cluster).items():
            assert endpoint == f"unix:path={folder / name}.sock"
    finally:
        await cluster.stopService()
    assert not folder.exists(), "the temporary folder is removed at stop"


@pytest_twisted.ensureDeferred
async def test_with_no_short_enough_folder_or_when_asked_they_listen_on_tcp(tmp_path, monkeypatch):
    long_tmp = tmp_path / ("t" * 110)
    long_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    cluster = await started(options(tmp_path / ("d" * 120) / "data"))
    try:
        assert cluster.socket_tmp is None and not list(long_tmp.iterdir())
        assert all(e.startswith("tcp:127.0.0.1:") for e in endpoints(cluster).values())
    finally:
        await cluster.stopService()
    cluster = await started(options(tmp_path / "data2", "--storage-sockets", "tcp"))
    try:
        assert all(e.startswith("tcp:127.0.0.1:") for e in endpoints(cluster).values())
        assert not (tmp_path / "data2" / "run").exists()
    finally:
        await cluster.stopService()


@pytest_twisted.ensureDeferred
async def test_a_temporary_folder_that_cannot_hold_theirs_puts_them_on_tcp(tmp_path, monkeypatch):
    """The data folder's path is too long for a socket, and the private
    folder cannot be made in the temporary folder (here it is a file, so
    mkdir fails with ENOTDIR, as a full or read-only one would fail): the
    start does not fail, the servers listen on TCP and a warning says why."""
    not_a_folder = tmp_path / "t"
    not_a_folder.write_bytes(b"")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    seen: list[str] = []

    def observer(event: dict) -> None:
        if event.get("log_level") is LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        cluster = await started(options(tmp_path / ("d" * 120) / "data"))
    finally:
        globalLogPublisher.removeObserver(observer)
    try:
        assert cluster.socket_tmp is None
        assert all(e.startswith("tcp:127.0.0.1:") for e in endpoints(cluster).values())
        assert any("cannot make a folder for the storage servers' sockets" in w for w in seen), seen
    finally:
        await cluster.stopService()


def test_storage_sockets_must_be_unix_or_tcp(tmp_path):
    with pytest.raises(usage.UsageError, match="--storage-sockets"):
        options(tmp_path, "--storage-sockets", "udp")


@pytest_twisted.ensureDeferred
async def test_a_path_with_colons_is_quoted_in_the_endpoints(tmp_path):
    """``:`` separates an endpoint string's arguments: a data folder named
    with one still gives endpoints that name its socket, the listening
    one's (``unix_listen_endpoint``) and the one its clients get from the
    port (``client_endpoint``, as wslocal registers it)."""
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.internet.protocol import Factory, Protocol

    from wsstorage.service import client_endpoint

    path = tmp_path / "a:b=c" / "s1.sock"
    path.parent.mkdir()
    listen = local.unix_listen_endpoint(path)
    assert serverFromString(reactor, listen)._address == str(path)
    port = await serverFromString(reactor, listen).listen(Factory.forProtocol(Protocol))
    try:
        connect = client_endpoint(port)
        assert clientFromString(reactor, connect)._path == str(path)
        conn = await clientFromString(reactor, connect).connect(Factory.forProtocol(Protocol))
        conn.transport.loseConnection()
    finally:
        await port.stopListening()


def test_a_socket_folder_name_someone_else_could_have_taken_is_not_used(tmp_path):
    """The socket folder's name in the temporary folder is the same at
    every start on the same data (a killed run's is taken back), so anyone
    could make it first: a folder others may enter, or a link, is left
    alone and a fresh private folder is made beside it."""
    data = tmp_path / "data"
    data.mkdir()
    name = local.socket_folder_name(data)
    assert name == local.socket_folder_name(tmp_path / "." / "data"), "one name per data folder"
    assert name != local.socket_folder_name(tmp_path / "other")
    own = tmp_path / name
    got, lock = local.private_socket_folder(own)
    assert got == own and (own.stat().st_mode & 0o777) == 0o700
    os.close(lock)  # as a killed wslocal's lock goes with it
    got, lock = local.private_socket_folder(own)
    assert got == own, "its own folder is taken back"
    try:
        # Held by a running wslocal (whose data folder was moved and remade):
        # not taken, nor removed by the other at its stop.
        other, other_lock = local.private_socket_folder(own)
        assert other != own and other.name.startswith("wslocal-")
        os.close(other_lock)
    finally:
        os.close(lock)
    open_to_all = tmp_path / "open"
    open_to_all.mkdir(mode=0o777)
    open_to_all.chmod(0o777)
    link = tmp_path / "link"
    link.symlink_to(own)
    for taken in (open_to_all, link):
        got, lock = local.private_socket_folder(taken)
        os.close(lock)
        assert got != taken and got.parent == tmp_path and got.name.startswith("wslocal-")
        assert (got.stat().st_mode & 0o777) == 0o700
    assert (open_to_all.stat().st_mode & 0o777) == 0o777, "what was there is left as it was"


@pytest_twisted.ensureDeferred
async def test_a_second_wslocal_on_the_same_data_leaves_the_first_ones_socket_folder(
    tmp_path, monkeypatch
):
    """Both would name the same socket folder; the second fails on the
    stores' locks before it looks for one, so its stop removes nothing of
    the first, whose servers go on serving."""
    short_tmp = Path(tempfile.mkdtemp(prefix="t-"))
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    data = tmp_path / ("d" * 120) / "data"
    first = await started(options(data))
    try:
        folder = first.socket_tmp
        assert folder is not None and folder.parent == short_tmp
        with pytest.raises(Exception, match=r"(?i)lock|in use"):
            await started(options(data))
        assert sorted(p.name for p in folder.iterdir()) == ["lock", "s1.sock", "s2.sock", "s3.sock"]
        login = ":".join(first.login)
        url = f"http://127.0.0.1:{first.frontend.address('http').port}/after.bin"
        (tmp_path / "after.bin").write_bytes(os.urandom(3 << 20))
        await curl("-u", login, "-T", str(tmp_path / "after.bin"), url)
        got = await curl("-u", login, url)
        assert got == (tmp_path / "after.bin").read_bytes()
    finally:
        await first.stopService()
        shutil.rmtree(short_tmp, ignore_errors=True)
    assert not folder.exists()


@pytest_twisted.ensureDeferred
async def test_a_wslocal_whose_data_folder_was_moved_keeps_its_socket_folder(tmp_path, monkeypatch):
    """The socket folder is named after the data folder's path, and the
    stores' locks are the data's own: a running wslocal's data folder
    moved away and another started on a new one at the same path would
    have taken its folder (replacing its sockets) and removed it at stop.
    The folder's own lock keeps them apart."""
    short_tmp = Path(tempfile.mkdtemp(prefix="t-"))
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    data = tmp_path / ("d" * 120) / "data"
    first = await started(options(data))
    try:
        folder = first.socket_tmp
        data.rename(data.with_name("moved"))
        second = await started(options(data))
        try:
            assert second.socket_tmp is not None and second.socket_tmp != folder
        finally:
            await second.stopService()
        assert sorted(p.name for p in folder.iterdir()) == ["lock", "s1.sock", "s2.sock", "s3.sock"]
        # Still the first one's servers listening there (the catalog moved
        # with the data, so this asks the sockets themselves).
        for name in ("s1", "s2", "s3"):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(folder / f"{name}.sock"))
            finally:
                probe.close()
    finally:
        await first.stopService()
        shutil.rmtree(short_tmp, ignore_errors=True)
    assert not folder.exists()


@pytest_twisted.ensureDeferred
async def test_a_restart_on_new_ports_warns_of_no_moved_storage_server(tmp_path):
    """wslocal's storage servers listen on new ports at each start over TCP
    (and in a new folder when the temporary one is taken): the warning of a
    changed --storage endpoint is for an operator's options, not these."""
    data = tmp_path / "data"
    seen: list[str] = []

    def observer(event: dict) -> None:
        if event.get("log_level") is LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        for _ in range(2):
            cluster = await started(options(data, "--storage-sockets", "tcp"))
            first_ports = endpoints(cluster)
            await cluster.stopService()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert all(e.startswith("tcp:127.0.0.1:") for e in first_ports.values())
    assert not [w for w in seen if "was registered at" in w], seen


@pytest_twisted.ensureDeferred
async def test_an_empty_ftp_or_http_endpoint_turns_that_protocol_off(tmp_path):
    for off, on in (("ftp", "http"), ("http", "ftp")):
        opts = LocalOptions()
        opts.parseOptions(
            ["--data", str(tmp_path / off), f"--{off}", "", f"--{on}", "tcp:0:interface=127.0.0.1"]
        )
        cluster = await started(opts)
        try:
            assert set(cluster.frontend.ports) == {on}
        finally:
            await cluster.stopService()
