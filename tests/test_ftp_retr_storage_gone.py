"""An FTP download cut short by the storage tier says so in the log.

Found by chaos testing (the one storage server holding a file SIGKILLed
during an FTP RETR): the client got 451, but the front end logged
nothing, where an HTTP GET cut short the same way logs a line ("GET /f:
cut short (would be 503) ...").  Now a RETR that fails mid-stream for the
server's own reasons logs one line naming the user, the path, the bytes
sent and why.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from tests.ftp_env import FTPEnv, payload, until

MiB = 1 << 20


@pytest.fixture
def ftp(tmp_path):
    from twisted.internet import reactor

    env = FTPEnv(reactor, tmp_path, replicas=1)
    env = pytest_twisted.blockon(defer.ensureDeferred(env.start()))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest_twisted.ensureDeferred
async def test_a_retr_whose_only_replica_dies_mid_stream_logs_user_path_bytes_and_why(ftp, logged):
    data = payload(32 * MiB)
    version = await ftp.env.upload("/big.bin", data)
    [extent] = version.extents
    [replica] = extent.replicas
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    peer.on_data = lambda p: p.transport.pauseProducing()  # hold the stream mid-file
    assert (await c.cmd("RETR big.bin"))[0] == 150
    await until(lambda: peer.received > 0, "the first bytes")
    await ftp.env.kill(replica.node)
    peer.on_data = None
    peer.transport.resumeProducing()
    code, text = await c.reply()
    assert code == 451, text
    got = await peer.done
    assert 0 < len(got) < len(data)
    lines = [formatEvent(e) for e in logged if "RETR" in formatEvent(e)]
    assert len(lines) == 1, lines
    [line] = lines
    assert line.startswith("RETR /big.bin by alice: cut short after "), line
    sent = int(line.split("cut short after ")[1].split()[0])
    assert len(got) <= sent < len(data)
    assert f"of {len(data)} bytes" in line
    assert "NoReplicasAvailable" in line, line
