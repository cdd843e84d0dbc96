"""A raw-socket client that pipelines PASV, STOR and QUIT, then connects.

RFC 959 (4.1.1): with a transfer in progress, QUIT leaves the control
connection open for the transfer's result, and the server closes it after.
A client may send PASV, STOR and QUIT without waiting for the data
connection, then connect it and send the file: the upload must happen,
whether QUIT came in the same packet as STOR or in one of its own once the
STOR waits (that QUIT used to end the wait with 425 and lose the file).

The client is a plain blocking socket in a thread (the server runs in the
test's reactor); a ``threading.Event`` tells it when the STOR waits.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.ftp_env import PASSWORD, FTPEnv, payload, until
from wsfront.ftp.factory import FTPSettings

GUARD = 60.0
"""Socket timeout of the client thread: a hang fails the test, nothing waits on it."""


@pytest.fixture
def ftp(tmp_path):
    from twisted.internet import reactor

    env = FTPEnv(reactor, tmp_path, FTPSettings(data_timeout=GUARD))
    env = pytest_twisted.blockon(defer.ensureDeferred(env.start()))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


class RawClient:
    """Blocking FTP over one socket: replies parsed from what arrives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, str]:
        """The next reply (a multi-line one whole), or (0, "") at EOF."""
        first = None
        while True:
            while b"\r\n" not in self._buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return 0, ""
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            first = first or text
            if re.match(r"^\d{3} ", text) and text[:3] == first[:3]:
                return int(first[:3]), first[4:]

    def command(self, line: str) -> tuple[int, str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()


def _pasv_port(text: str) -> int:
    numbers = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", text).groups()
    return int(numbers[4]) * 256 + int(numbers[5])


def _upload(port: int, data: bytes, quit_alone: threading.Event | None) -> list[int]:
    """Log in, pipeline PASV + STOR + QUIT (QUIT after ``quit_alone`` is
    set, when given), connect the data socket, send ``data`` and close it;
    the codes of every reply after the login, to the end of the connection
    (-1 where the data connection was refused)."""
    client = RawClient(port)
    try:
        assert client.reply()[0] == 220
        assert client.command("USER alice")[0] == 331
        assert client.command(f"PASS {PASSWORD}")[0] == 230
        assert client.command("TYPE I")[0] == 200
        if quit_alone is None:
            client.send(b"PASV\r\nSTOR piped.bin\r\nQUIT\r\n")
        else:
            client.send(b"PASV\r\nSTOR piped.bin\r\n")
        code, text = client.reply()
        assert code == 227, text
        if quit_alone is not None:
            assert quit_alone.wait(GUARD)
            client.send(b"QUIT\r\n")
        codes = [227]
        try:
            with socket.create_connection(("127.0.0.1", _pasv_port(text)), GUARD) as data_sock:
                data_sock.sendall(data)
        except OSError:
            codes.append(-1)  # the server refused the data connection: the replies say why
        while True:
            code, text = client.reply()
            if code == 0:
                return codes
            codes.append(code)
    finally:
        client.sock.close()


def _waiting_for_data(ftp) -> bool:
    return any(
        s.transfer is not None and s.transfer.waiting is not None for s in ftp.factory.sessions
    )


@pytest.mark.parametrize("quit_packet", ["with STOR", "alone, once STOR waits"])
@pytest_twisted.ensureDeferred
async def test_a_pipelined_quit_lets_the_stor_finish_before_its_221(ftp, quit_packet):
    data = payload((4 << 20) + 12345)
    alone = threading.Event() if quit_packet.startswith("alone") else None
    done = deferToThread(_upload, ftp.port, data, alone)
    if alone is not None:
        try:
            await until(lambda: _waiting_for_data(ftp), "the STOR to wait for its data connection")
        finally:
            alone.set()
    codes = await done
    assert codes == [227, 150, 226, 221]
    stored, _ = await ftp.env.download("/piped.bin")
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
    await until(lambda: not ftp.factory.sessions, "the session to end")
    assert not ftp.transfers.sessions
