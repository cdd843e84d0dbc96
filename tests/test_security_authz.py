"""Authorisation: permissions and quotas, the same over FTP, HTTP PUT and tus.

Both live in the transfer layer, so every protocol must refuse alike: a
user without ``write`` gets FTP 550 / HTTP 403 before a byte is stored; a
user over quota gets FTP 552 / HTTP 507, before the body when its length is
announced and mid-stream when it is not (FTP STOR, chunked PUT, tus with a
deferred length).  Nothing refused is ever committed, and usage stays
within the quota.
"""

from __future__ import annotations

import base64
import io
import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.web.client import FileBodyProducer, readBody
from twisted.web.iweb import UNKNOWN_LENGTH

from tests.ftp_env import FTPClient
from tests.tus_env import OCTETS, b64, start_env
from wsfront.auth import CachingAuthenticator, make_portal
from wsfront.catalog import errors as catalog_errors
from wsfront.ftp.factory import FTPFactory, FTPSettings

QUOTA = 100_000
READER = ("reader", "reader password")
SMALL = ("small", "small password")


class Both:
    """One transfer layer with the HTTP site (tus mounted) and an FTP server."""

    async def start(self, reactor, tmp_path) -> Both:
        from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString

        self.reactor = reactor
        self.http = await start_env(reactor, tmp_path)
        catalog = self.http.catalog
        await catalog.add_user(READER[0], READER[1], permissions=["read"])
        await catalog.add_user(SMALL[0], SMALL[1], quota_bytes=QUOTA)
        # reader owns one file, put there by an administrator.
        reader = await catalog.get_user("reader")
        writer = type(reader)(**{**_fields(reader), "permissions": frozenset({"write"})})
        session = await self.http.transfers.open_write(writer, "/mine.txt", 0)
        session.write(b"reader's file")
        await session.finish()
        auth = CachingAuthenticator(catalog, reactor)
        factory = FTPFactory(
            reactor, self.http.transfers, make_portal(auth), FTPSettings(data_timeout=10.0)
        )
        self.ftp_port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        self._endpoint = TCP4ClientEndpoint
        self.clients = []
        return self

    async def ftp(self, name: str, password: str) -> FTPClient:
        from tests.ftp_env import _ClientFactory

        ep = self._endpoint(self.reactor, "127.0.0.1", self.ftp_port.getHost().port)
        client = await ep.connect(_ClientFactory(self.reactor))
        self.clients.append(client)
        assert (await client.reply())[0] == 220
        await client.login(name, password)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            client.transport.abortConnection()
        await self.ftp_port.stopListening()
        await self.http.stop()


def _fields(record) -> dict:
    import attrs

    return attrs.asdict(record, recurse=False)


def _basic(who: tuple[str, str]) -> dict:
    token = base64.b64encode(f"{who[0]}:{who[1]}".encode())
    return {b"Authorization": [b"Basic " + token]}


@pytest.fixture
def both(tmp_path):
    from twisted.internet import reactor

    env = pytest_twisted.blockon(defer.ensureDeferred(Both().start(reactor, tmp_path)))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


async def _exists(env: Both, name: str, vpath: str) -> bool:
    user = await env.http.catalog.get_user(name)
    try:
        info = await env.http.transfers.stat(user, vpath)
    except catalog_errors.NotFound:
        return False
    return not info.pending or info.size > 0


async def _tus(env: Both, who, method, path, headers=None, data=None):
    from tests.tus_env import TUS

    merged = {**TUS, **(headers or {})}
    raw = {k.encode(): [str(v).encode()] for k, v in merged.items()}
    raw.update(_basic(who))
    kw = {} if data is None else {"data": data}
    response = await env.http.tus_http.request(
        method, env.http.url(path), headers=raw, unbuffered=True, **kw
    )
    body = await readBody(response)
    return response.code, response.headers, body


# -- permissions -------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["STOR", "APPE", "STOU"])
@pytest_twisted.ensureDeferred
async def test_ftp_upload_without_write_is_550_before_any_data(both, verb):
    c = await both.ftp(*READER)
    code, text = await c.stor("new.txt" if verb != "STOU" else "", b"data", verb=verb)
    assert code == 550, text
    assert not await _exists(both, "reader", "/new.txt")
    # Overwriting the file the reader owns is refused too, and it stays intact.
    code, _ = await c.stor("mine.txt", b"overwritten", verb="STOR")
    assert code == 550
    assert await c.retr("mine.txt") == b"reader's file"


@pytest.mark.parametrize(
    ("line", "code"),
    [("DELE mine.txt", 550), ("MKD d", 550), ("RMD /", 550), ("RNFR mine.txt", 350)],
)
@pytest_twisted.ensureDeferred
async def test_ftp_namespace_changes_without_their_permission_are_550(both, line, code):
    c = await both.ftp(*READER)
    assert (await c.cmd(line))[0] == code
    if line.startswith("RNFR"):
        assert (await c.cmd("RNTO other.txt"))[0] == 550
    assert await c.retr("mine.txt") == b"reader's file"


@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("PUT", "/new.txt", {}),
        ("PUT", "/mine.txt", {}),
        ("DELETE", "/mine.txt", {}),
        ("MKCOL", "/d", {}),
        ("MOVE", "/mine.txt", {b"Destination": [b"/moved.txt"]}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_http_changes_without_permission_are_403(both, method, path, extra):
    data = b"data" if method == "PUT" else None
    response = await both.http.request(
        method, path, auth=False, headers={**_basic(READER), **extra}, data=data
    )
    await readBody(response)
    assert response.code == 403
    assert not await _exists(both, "reader", "/new.txt")
    response = await both.http.request("GET", "/mine.txt", auth=False, headers=_basic(READER))
    assert await readBody(response) == b"reader's file"


@pytest_twisted.ensureDeferred
async def test_http_put_without_write_is_refused_before_100_continue(both):
    from tests.http_raw import connect, head_of

    c = await connect(both.reactor, both.http.port.getHost().port)
    token = base64.b64encode(f"{READER[0]}:{READER[1]}".encode())
    c.send(
        b"PUT /big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + token + b"\r\n"
        b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
    )
    received = await c.until(b"\r\n\r\n")
    assert head_of(received)[0] == 403  # no "100 Continue": the body is never asked for
    await c.closed
    assert not await _exists(both, "reader", "/big.bin")


@pytest_twisted.ensureDeferred
async def test_tus_creation_without_write_is_403(both):
    headers = {"Upload-Length": "4", "Upload-Metadata": f"filename {b64('t.bin')}"}
    code, _, _ = await _tus(both, READER, "POST", "/-/uploads/", headers)
    assert code == 403
    assert not await _exists(both, "reader", "/t.bin")


@pytest_twisted.ensureDeferred
async def test_tus_creation_with_data_without_write_is_403_and_stores_nothing(both):
    headers = {
        "Upload-Length": "4",
        "Upload-Metadata": f"filename {b64('t.bin')}",
        **OCTETS,
    }
    code, _, _ = await _tus(both, READER, "POST", "/-/uploads/", headers, data=b"data")
    assert code == 403
    assert not await _exists(both, "reader", "/t.bin")


# -- quotas ------------------------------------------------------------------------------


async def _usage(env: Both) -> int:
    return (await env.http.catalog.get_user("small")).used_bytes


@pytest_twisted.ensureDeferred
async def test_ftp_stor_over_quota_is_552_mid_stream_and_commits_nothing(both):
    c = await both.ftp(*SMALL)
    code, text = await c.stor("big.bin", os.urandom(3 * QUOTA))
    assert code == 552, text
    assert await _usage(both) <= QUOTA
    assert (await c.cmd("NOOP"))[0] == 200
    # A file that fits still goes through on the same session.
    code, _ = await c.stor("fits.bin", b"x" * 1000)
    assert code == 226


@pytest_twisted.ensureDeferred
async def test_http_put_with_a_length_over_quota_is_507_before_the_body(both):
    from tests.http_raw import connect, head_of

    c = await connect(both.reactor, both.http.port.getHost().port)
    token = base64.b64encode(f"{SMALL[0]}:{SMALL[1]}".encode())
    c.send(
        b"PUT /big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + token + b"\r\n"
        b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (3 * QUOTA)
    )
    received = await c.until(b"\r\n\r\n")
    assert head_of(received)[0] == 507
    assert not received.startswith(b"HTTP/1.1 100")
    await c.closed
    assert await _usage(both) == 0


@pytest_twisted.ensureDeferred
async def test_http_chunked_put_over_quota_is_507_mid_stream_and_commits_nothing(both):
    body = FileBodyProducer(io.BytesIO(os.urandom(3 * QUOTA)))
    body.length = UNKNOWN_LENGTH  # sent chunked: the server learns the size as it goes
    response = await both.http.http.request(
        "PUT", both.http.url("/big.bin"), headers=_basic(SMALL), data=body, unbuffered=True
    )
    await readBody(response)
    assert response.code == 507
    assert await _usage(both) <= QUOTA
    response = await both.http.request("GET", "/big.bin", auth=False, headers=_basic(SMALL))
    await readBody(response)
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_tus_deferred_length_upload_over_quota_is_507_mid_stream(both):
    headers = {"Upload-Defer-Length": "1", "Upload-Metadata": f"filename {b64('big.bin')}"}
    code, found, _ = await _tus(both, SMALL, "POST", "/-/uploads/", headers)
    assert code == 201
    location = found.getRawHeaders(b"Location")[0].decode()
    patch = {"Upload-Offset": "0", **OCTETS}
    code, _, _ = await _tus(both, SMALL, "PATCH", location, patch, data=os.urandom(3 * QUOTA))
    assert code == 507
    assert await _usage(both) <= QUOTA


@pytest_twisted.ensureDeferred
async def test_quota_refusals_have_the_same_meaning_on_every_protocol(both):
    """FTP 552 and HTTP 507 come from the one QuotaExceeded of the transfer layer."""
    from wsfront.ftp.errors_map import reply_for
    from wsfront.http.errors_map import http_error
    from wsfront.transfer.errors import QuotaExceeded

    error = QuotaExceeded("the upload exceeds the user's quota")
    assert reply_for(error)[0] == 552
    assert http_error(error).status == 507
    assert reply_for(catalog_errors.QuotaExceeded())[0] == 552
    assert http_error(catalog_errors.QuotaExceeded()).status == 507
