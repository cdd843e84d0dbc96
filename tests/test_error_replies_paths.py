"""Error replies name paths as the user sees them, never the catalog's.

The catalog keeps a user's files under their root (``/vault/carol/x`` for
carol's ``/x``) and its errors say so; that root is not carol's to see.
Over real HTTP and FTP, for a user whose root is not ``/``, each common
refusal (not found, exists, not a directory, not empty, busy with a pending
upload, over quota) keeps its status and names no catalog path: HTTP bodies
name the path the client asked for, FTP replies the class's own text.
"""

from __future__ import annotations

import base64
import io
import os

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH

from tests.ftp_env import FTPClient, _ClientFactory
from tests.tus_env import start_env
from wsfront.auth import CachingAuthenticator, make_portal
from wsfront.catalog import errors as catalog_errors
from wsfront.ftp.errors_map import reply_for
from wsfront.ftp.factory import FTPFactory, FTPSettings
from wsfront.http.errors_map import http_error
from wsfront.transfer import errors as transfer_errors

NAME, PASSWORD = "carol", "carol password"
ROOT = "/vault/carol"
QUOTA = 100_000


class Env:
    """The HTTP site and an FTP server over one transfer layer, with carol
    (root ``/vault/carol``) owning a file, a non-empty directory and a
    file with another user's live pending upload on it."""

    async def start(self, reactor, tmp_path) -> Env:
        from twisted.internet.endpoints import serverFromString

        self.reactor = reactor
        self.http = await start_env(reactor, tmp_path)
        catalog = self.http.catalog
        self.user = await catalog.add_user(NAME, PASSWORD, root=ROOT, quota_bytes=QUOTA)
        transfers = self.http.transfers
        for vpath in ("/file", "/full/inside", "/busy"):
            if vpath == "/full/inside":
                await transfers.mkdir(self.user, "/full")
            session = await transfers.open_write(self.user, vpath, 0)
            session.write(b"data")
            await session.finish()
        # Another user's (dave shares carol's root): carol's own interrupted
        # upload would go with her DELETE, or a rename over the file.
        dave = await catalog.add_user("dave", PASSWORD, root=ROOT, adopt_files=True)
        session = await transfers.open_write(dave, "/busy", 0)
        session.write(b"half")
        await session.interrupt()  # pending and live: resumable by dave
        auth = CachingAuthenticator(catalog, reactor)
        factory = FTPFactory(reactor, transfers, make_portal(auth), FTPSettings(data_timeout=10.0))
        self.ftp_port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        self.clients: list[FTPClient] = []
        return self

    async def request(self, method: str, path: str, data=None, headers=None) -> tuple[int, str]:
        token = base64.b64encode(f"{NAME}:{PASSWORD}".encode())
        raw = {b"Authorization": [b"Basic " + token], **(headers or {})}
        kw = {} if data is None else {"data": data}
        response = await self.http.http.request(
            method, self.http.url(path), headers=raw, unbuffered=True, **kw
        )
        return response.code, (await treq.content(response)).decode("utf-8")

    async def ftp(self) -> FTPClient:
        from twisted.internet.endpoints import TCP4ClientEndpoint

        port = self.ftp_port.getHost().port
        client = await TCP4ClientEndpoint(self.reactor, "127.0.0.1", port).connect(
            _ClientFactory(self.reactor)
        )
        self.clients.append(client)
        assert (await client.reply())[0] == 220
        await client.login(NAME, PASSWORD)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            client.transport.abortConnection()
        await self.ftp_port.stopListening()
        await self.http.stop()


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    started = pytest_twisted.blockon(defer.ensureDeferred(Env().start(reactor, tmp_path)))
    yield started
    pytest_twisted.blockon(defer.ensureDeferred(started.stop()))


def assert_no_root(text: str) -> None:
    assert "vault" not in text, text


# -- HTTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("GET", "/missing", 404, "/missing: no such file or directory"),
        ("GET", "/nodir/missing", 404, "/nodir/missing: no such file or directory"),
        ("MKCOL", "/file/sub", 409, "/file/sub: not a directory"),
        ("DELETE", "/full", 409, "/full: directory not empty"),
        ("DELETE", "/busy", 409, "/busy: file busy: another upload is pending on it"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_http_error_bodies_name_the_requested_path_not_the_catalog_path(
    env, method, path, status, body
):
    code, text = await env.request(method, path)
    assert code == status, text
    assert_no_root(text)
    assert text == body + "\n"


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/missing", 404, "/missing: no such file or directory"),
        ("/nodir/missing", 404, "/nodir/missing: no such file or directory"),
        ("/file/sub", 409, "/file/sub: not a directory"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_http_propfind_errors_name_the_requested_path_not_the_catalog_path(
    env, path, status, body
):
    code, text = await env.request("PROPFIND", path, headers={b"Depth": [b"1"]})
    assert code == status, text
    assert_no_root(text)
    assert text == body + "\n"


@pytest_twisted.ensureDeferred
async def test_http_propfind_hrefs_are_the_users_paths(env):
    code, text = await env.request("PROPFIND", "/", headers={b"Depth": [b"1"]})
    assert code == 207, text
    assert_no_root(text)
    assert "<D:href>/</D:href>" in text and "<D:href>/file</D:href>" in text


@pytest_twisted.ensureDeferred
async def test_http_move_onto_a_pending_upload_names_no_catalog_path(env):
    """The catalog refuses to replace a file with a live upload, in a
    message naming its own path of the destination; the answer says it is
    the destination that is busy, not the file the URL names."""
    code, text = await env.request(
        "MOVE", "/file", headers={b"Destination": [env.http.url("/busy").encode()]}
    )
    assert code == 409, text
    assert_no_root(text)
    assert text == "the destination is busy: an upload is pending on it\n"


@pytest_twisted.ensureDeferred
async def test_http_chunked_put_over_quota_names_the_path_not_the_account(env):
    body = FileBodyProducer(io.BytesIO(os.urandom(3 * QUOTA)))
    body.length = UNKNOWN_LENGTH  # refused mid-stream, by the catalog's own check
    code, text = await env.request("PUT", "/big.bin", data=body)
    assert code == 507, text
    assert_no_root(text)
    assert text == "/big.bin: quota exceeded\n"


@pytest_twisted.ensureDeferred
async def test_http_percent_encoded_paths_are_named_decoded(env):
    code, text = await env.request("GET", "/caf%C3%A9/x%20y")
    assert code == 404, text
    assert text == "/café/x y: no such file or directory\n"


@pytest.mark.parametrize(
    ("where", "status", "body"),
    [("/nodir/x", 404, "no such file or directory"), ("/file/x", 409, "not a directory")],
)
@pytest_twisted.ensureDeferred
async def test_tus_creation_errors_name_no_catalog_path(env, where, status, body):
    """A tus request's URL is the server's (``/-/uploads/``), so its errors
    name no path at all."""
    headers = {
        b"Tus-Resumable": [b"1.0.0"],
        b"Upload-Length": [b"4"],
        b"Upload-Metadata": [b"path " + base64.b64encode(where.encode())],
    }
    code, text = await env.request("POST", "/-/uploads/", headers=headers)
    assert code == status, text
    assert_no_root(text)
    assert text == body + "\n"


# -- FTP ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("MDTM missing", 550),
        ("RNFR missing", 550),
        ("MKD full", 550),
        ("MKD file/sub", 550),
        ("RMD full", 550),
        ("DELE busy", 450),
    ],
)
@pytest_twisted.ensureDeferred
async def test_ftp_error_replies_name_no_catalog_path(env, line, code):
    c = await env.ftp()
    got, text = await c.cmd(line)
    assert got == code, text
    assert_no_root(text)


@pytest_twisted.ensureDeferred
async def test_ftp_rename_onto_a_pending_upload_names_no_catalog_path(env):
    c = await env.ftp()
    assert (await c.cmd("RNFR file"))[0] == 350
    code, text = await c.cmd("RNTO busy")
    assert code == 450, text
    assert_no_root(text)


@pytest_twisted.ensureDeferred
async def test_ftp_stor_over_quota_names_no_catalog_path(env):
    c = await env.ftp()
    code, text = await c.stor("big.bin", os.urandom(3 * QUOTA))
    assert code == 552, text
    assert_no_root(text)


# -- the maps themselves ------------------------------------------------------------------

LEAKY = [
    # What the transfer layer raises after the catalog's PendingUploadExists
    # when it lost a race (UploadBusy(str(e))): the catalog's own path.
    transfer_errors.UploadBusy(f"an upload is pending on {ROOT}/x"),
    transfer_errors.NoReplicasAvailable("no replica of blob b1 could be read: n1: /srv/data"),
    transfer_errors.OffsetTooLarge(f"{ROOT}/x: offset 9 is beyond the size 3"),
    catalog_errors.NotFound(f"{ROOT}/x does not exist"),
    catalog_errors.Exists(f"{ROOT}/x exists"),
    catalog_errors.QuotaExceeded(f"{ROOT} has no room for 9 more bytes"),
]


@pytest.mark.parametrize("error", LEAKY, ids=lambda e: type(e).__name__)
def test_ftp_replies_show_no_message_that_names_a_path(error):
    text = reply_for(error)[1]
    assert_no_root(text)
    assert "/srv" not in text


@pytest.mark.parametrize("error", LEAKY, ids=lambda e: type(e).__name__)
def test_http_bodies_show_no_message_that_names_a_path(error):
    answer = http_error(error, b"/x")
    assert_no_root(answer.message)
    assert "/srv" not in answer.message
    assert answer.message.startswith("/x: ")


def test_number_only_details_still_show():
    error = transfer_errors.OffsetTooLarge("offset 9 is beyond the size 3")
    assert reply_for(error)[1].endswith(": offset 9 is beyond the size 3")
    assert http_error(error, b"/x").message == (
        "/x: offset beyond the end of the file: offset 9 is beyond the size 3"
    )


def test_server_endpoints_are_not_named_as_user_paths():
    assert http_error(catalog_errors.NotFound("x"), b"/-/uploads/abc").message == (
        "no such file or directory"
    )
