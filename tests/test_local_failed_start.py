"""A ``twistd wslocal`` whose front end cannot start closes its storage
servers before the reactor stops, and says why once.

Its front end fails after the stores are open (the FTP or HTTP port is
already taken): the front end leaves reporting that and stopping the
reactor to wslocal, whose ``ready`` fails once its clean-up has closed the
stores (each holds its folder's lock and a journal thread) and stopped the
front end; twistd's shutdown then closes nothing twice.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from wsfront.local import LocalClusterService, LocalOptions
from wsstorage.blobstore import BlobStore


class _Quiet:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class _ProcessReactor:
    """The real reactor, except that what a failed start does to the
    process (stop the reactor, exit 1 at shutdown) is recorded, not done:
    with the stores still open at each stop asked for."""

    def __init__(self) -> None:
        self.cluster: LocalClusterService | None = None
        self.stops: list[list[str]] = []
        self.exits: list[tuple] = []

    def __getattr__(self, name: str):
        return getattr(reactor, name)

    def stop(self) -> None:
        self.stops.append(list(self.cluster.stores))

    def callWhenRunning(self, f, *args, **kw):
        return f(*args, **kw)  # the reactor runs

    def addSystemEventTrigger(self, phase, event, f, *args, **kw):
        if f is os._exit:
            self.exits.append(args)
            return None
        return reactor.addSystemEventTrigger(phase, event, f, *args, **kw)


def taken_port() -> socket.socket:
    """A real socket listening on 127.0.0.1, on a port the system picked."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@pytest.mark.parametrize("proto", ["ftp", "http"])
@pytest_twisted.ensureDeferred
async def test_a_front_end_that_cannot_listen_fails_ready_with_the_stores_closed(proto):
    data = Path(tempfile.mkdtemp(prefix="wsl-"))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    taken = taken_port()
    try:
        port = taken.getsockname()[1]
        endpoints = {"ftp": "tcp:0:interface=127.0.0.1", "http": "tcp:0:interface=127.0.0.1"}
        endpoints[proto] = f"tcp:{port}:interface=127.0.0.1"
        opts = LocalOptions()
        opts.parseOptions(["--data", str(data), "--ftp", endpoints["ftp"],
                           "--http", endpoints["http"]])  # fmt: skip
        fake = _ProcessReactor()
        cluster = fake.cluster = LocalClusterService(fake, opts, out=_Quiet())
        cluster.startService()
        ready = cluster.ready.addTimeout(60, reactor)
        with pytest.raises(CannotListenError):
            await ready
        for name in ("s1", "s2", "s3"):
            BlobStore.open(data / "storage" / name).close()  # FormatError if still open
        # Stopped once, by wslocal, after its clean-up: not by the front end
        # while the stores were open.
        assert fake.stops == [[]] and fake.exits == [(1,)]
        errors = [formatEvent(e) for e in events if e.get("log_level") is LogLevel.error]
        said = [line for line in errors if "could not start" in line]
        assert len(said) == 1 and said[0].startswith("wslocal could not start"), errors
        assert str(port) in said[0] and "Traceback" not in said[0], said
        assert cluster.frontend.running == 0 and list(cluster) == []
        assert cluster.frontend.catalog is not None  # it had started: it was stopped
        # twistd's shutdown: the front end is not stopped again (it is out
        # of the service) and no store is closed twice (none is left).
        await cluster.stopService()
        assert cluster.stores == {} and cluster.storage_ports == {}
    finally:
        taken.close()
        globalLogPublisher.removeObserver(events.append)
        shutil.rmtree(data, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_a_data_directory_another_wslocal_holds_is_one_line_not_a_traceback():
    """A second ``twistd wslocal`` on the same ``--data`` (a new user's
    likeliest mistake) finds a store locked: the operator's to fix, said in
    one line as a port in use is."""
    from wsstorage.diskformat import FormatError

    data = Path(tempfile.mkdtemp(prefix="wsl-"))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    held = BlobStore.open(data / "storage" / "s2")  # what the other wslocal holds
    try:
        opts = LocalOptions()
        opts.parseOptions(["--data", str(data), "--ftp", "tcp:0:interface=127.0.0.1",
                           "--http", "tcp:0:interface=127.0.0.1"])  # fmt: skip
        fake = _ProcessReactor()
        cluster = fake.cluster = LocalClusterService(fake, opts, out=_Quiet())
        cluster.startService()
        with pytest.raises(FormatError):
            await cluster.ready.addTimeout(60, reactor)
        assert fake.exits == [(1,)]
        said = [formatEvent(e) for e in events if "could not start" in formatEvent(e)]
        assert len(said) == 1 and "in use by another blob store process" in said[0], said
        assert not [e for e in events if e.get("log_level") is LogLevel.critical], said
        await cluster.stopService()
    finally:
        held.close()
        globalLogPublisher.removeObserver(events.append)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.parametrize(
    ("option", "spec"),
    [
        ("ftp", "tcp:notaport"),
        ("http", "nosuch:1"),
        # Twisted parses these; the listen failed later, an OverflowError traceback.
        ("ftp", "tcp:99999"),
        ("http", "tcp6:70000"),
    ],
)
def test_a_malformed_endpoint_is_a_usage_error_before_anything_starts(tmp_path, option, spec):
    """As wsfront says it: not a traceback once the stores are open."""
    from twisted.python import usage

    opts = LocalOptions()
    with pytest.raises(usage.UsageError, match=f"--{option} '{spec}': not a server endpoint"):
        opts.parseOptions(["--data", str(tmp_path / "d"), f"--{option}", spec])
    assert not (tmp_path / "d").exists()


def test_an_empty_data_option_is_a_usage_error(tmp_path, monkeypatch):
    """Path("") is the current directory: wslocal filled the folder it was
    started in, where wsstorage refuses "" as missing."""
    from twisted.python import usage

    monkeypatch.chdir(tmp_path)
    with pytest.raises(usage.UsageError, match="--data must name a folder"):
        LocalOptions().parseOptions(["--data", ""])
    assert list(tmp_path.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_a_data_directory_where_no_secret_can_be_made_is_one_line_not_a_traceback():
    """An immutable (``chattr +i``) or otherwise unwritable data directory:
    the operator's to fix, said in one line, as a directory in use is."""
    import subprocess

    from wsstorage.auth import SecretError

    data = Path(tempfile.mkdtemp(prefix="wsl-"))
    if subprocess.run(["chattr", "+i", str(data)], capture_output=True).returncode != 0:
        shutil.rmtree(data)
        pytest.skip("chattr +i needs root and a file system that has it")
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        opts = LocalOptions()
        opts.parseOptions(["--data", str(data), "--ftp", "tcp:0:interface=127.0.0.1",
                           "--http", "tcp:0:interface=127.0.0.1"])  # fmt: skip
        fake = _ProcessReactor()
        cluster = fake.cluster = LocalClusterService(fake, opts, out=_Quiet())
        cluster.startService()
        with pytest.raises(SecretError):
            await cluster.ready.addTimeout(60, reactor)
        assert fake.exits == [(1,)]
        said = [formatEvent(e) for e in events if "could not start" in formatEvent(e)]
        assert len(said) == 1 and "cannot create secret file" in said[0], said
        assert not [e for e in events if e.get("log_level") is LogLevel.critical], said
        await cluster.stopService()
    finally:
        subprocess.run(["chattr", "-i", str(data)], check=True)
        globalLogPublisher.removeObserver(events.append)
        shutil.rmtree(data, ignore_errors=True)
