"""The FTP front end against hostile input: every bad line gets its reply,
the session (and every other session) goes on, and no stored byte changes.

One server per module (real storage servers, real SQLite, real sockets);
each case uses a fresh hostile connection, while a well-behaved client that
logged in first must still be served after it, and every stored file keeps
its sha256.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from tests.ftp_env import FTPEnv, sha256
from tests.security_support import Hoard


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from twisted.internet import reactor

    async def start():
        env = await FTPEnv(reactor, tmp_path_factory.mktemp("ftp")).start()
        hoard = await Hoard(env.env).fill()
        good = await env.client()
        return env, hoard, good

    env, hoard, good = pytest_twisted.blockon(defer.ensureDeferred(start()))
    yield env, hoard, good
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


async def _still_fine(site) -> None:
    """The well-behaved client is served and every file kept its digest."""
    _env, hoard, good = site
    assert (await good.cmd("NOOP"))[0] == 200
    data = await good.retr("/keep/b.txt")
    assert sha256(data) == hoard.digests[("alice", "/keep/b.txt")]
    await hoard.check()


# (case id, lines sent in order, expected reply code for each line)
LINES = [
    ("garbage", [b"\x01\x02\x03\x04garbage"], [500]),
    ("nul-inside-verb", [b"NO\x00OP"], [500]),
    ("nul-inside-path", [b"SIZE /keep/b.txt\x00.jpg"], [500]),
    ("empty-line", [b""], [500]),
    ("spaces-only", [b"    "], [500]),
    ("unknown-verb", [b"XYZZY now"], [500]),
    ("overlong-verb", [b"ABCDEFGHIJ"], [500]),
    ("non-ascii-verb", [b"\xc3\xa9T\xc3\xa9 x"], [500]),
    ("telnet-ip-dm-before-noop", [b"\xff\xf4\xff\xf2NOOP"], [200]),
    ("telnet-negotiation", [b"\xff\xfb\x01\xff\xfd\x03NOOP"], [200]),
    ("telnet-subnegotiation", [b"\xff\xfa\x18\x01\xff\xf0NOOP"], [200]),
    ("lone-iac", [b"NOOP\xff"], [200]),
    ("invalid-utf8-name", [b"MKD \xc3\x28\xa0"], [553]),
    ("iac-dont-eats-the-argument", [b"MKD \xff\xfe\xfd"], [501]),
    ("latin1-y-umlaut-taken-as-iac", [b"MKD bad\xff\xfe.d", b"RMD badd"], [501, 550]),
    ("invalid-utf8-size", [b"TYPE I", b"SIZE \xc3\x28"], [200, 553]),
    ("line-of-10KiB", [b"NOOP " + b"x" * 10240, b"NOOP"], [500, 200]),
    ("line-of-1MiB", [b"STOR " + b"y" * (1 << 20), b"PWD"], [500, 257]),
    ("bare-cr-inside", [b"NOOP\rDELE /keep/b.txt"], [500]),
    ("rnto-without-rnfr", [b"RNTO /keep/stolen"], [503]),
    ("rnfr-then-other-then-rnto", [b"RNFR /keep/b.txt", b"NOOP", b"RNTO /x"], [350, 200, 503]),
    ("pass-without-user", [b"PASS secret"], [503]),
    ("rest-negative", [b"TYPE I", b"REST -1"], [200, 501]),
    ("rest-not-a-number", [b"TYPE I", b"REST 1e9"], [200, 501]),
    ("rest-over-2-63", [b"TYPE I", b"REST 99999999999999999999"], [200, 501]),
    ("size-in-ascii-mode", [b"TYPE A", b"SIZE /keep/b.txt"], [200, 501]),
    ("type-garbage", [b"TYPE Q"], [504]),
    ("allo-not-a-number", [b"ALLO abc", b"ALLO -1", b"ALLO 10 X 5", b"ALLO"], [501] * 4),
    ("allo-with-record-size", [b"ALLO 1000 R 512"], [202]),
    ("port-bounce-elsewhere", [b"PORT 192,168,1,1,200,10"], [504]),
    ("port-bounce-privileged", [b"PORT 127,0,0,1,0,25"], [504]),
    ("port-malformed", [b"PORT 999,0,0,1,200,10"], [501]),
    ("eprt-bounce", [b"EPRT |1|10.9.8.7|2121|"], [504]),
    ("eprt-unknown-family", [b"EPRT |9|x|1|"], [522]),
    ("retr-without-data-connection", [b"RETR /keep/b.txt"], [425]),
    ("dele-root", [b"DELE /"], [550]),
    ("rmd-root", [b"RMD /"], [550]),
    ("mkd-reserved-root-name", [b"MKD /-"], [553]),
    ("mkd-backslash", [b"MKD a\\b"], [553]),
    ("mkd-name-of-300-bytes", [b"MKD " + b"n" * 300], [553]),
    ("mfmt-time-out-of-range", [b"MFMT 20261399999999 /keep/b.txt"], [501]),
    ("mfmt-negative-year", [b"MFMT -0010101000000 /keep/b.txt"], [501]),
    ("mfmt-on-a-directory", [b"MFMT 20200101000000 /keep"], [550]),
    ("mfmt-huge-fraction", [b"MFMT 20200101000000." + b"9" * 50 + b" /keep/b.txt"], [501]),
    ("hash-of-a-directory", [b"HASH /keep"], [550]),
    ("opts-hash-unknown", [b"OPTS HASH CRC32"], [501]),
    ("site-exec", [b"SITE EXEC /bin/sh -c id"], [504]),
    ("site-chmod-not-octal", [b"SITE CHMOD 999 /keep/b.txt"], [501]),
    ("site-chmod-missing", [b"SITE CHMOD 644 /nope"], [550]),
    ("auth-tls-without-a-certificate", [b"AUTH TLS"], [431]),
    ("pbsz-before-auth", [b"PBSZ 0"], [503]),
    ("prot-before-auth", [b"PROT P"], [503]),
]


@pytest.mark.parametrize(("lines", "codes"), [c[1:] for c in LINES], ids=[c[0] for c in LINES])
@pytest_twisted.ensureDeferred
async def test_bad_line_gets_its_reply_and_the_session_goes_on(site, lines, codes):
    env, _hoard, _good = site
    c = await env.client()
    got = [(await c.cmd(line))[0] for line in lines]
    assert got == codes
    assert (await c.cmd("PWD"))[0] == 257  # this session is still usable
    await _still_fine(site)


TRAVERSALS = [
    "../bob/bob.txt",
    "/../bob/bob.txt",
    "../../bob/bob.txt",
    "keep/../../bob/bob.txt",
    "..\\bob\\bob.txt",
    "\\..\\bob\\bob.txt",
    "/keep/..\\..\\bob/bob.txt",
]


@pytest.mark.parametrize("path", TRAVERSALS)
@pytest.mark.parametrize(
    "verb",
    ["RETR", "SIZE", "DELE", "RNFR", "CWD", "MKD", "STOR", "MDTM", "MLST", "LIST", "MFMT",
     "HASH", "SITE CHMOD 644"],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_traversal_out_of_the_root_is_refused_for_every_command(site, verb, path):
    env, _hoard, _good = site
    c = await env.client()
    await c.cmd("TYPE I")
    if verb in ("RETR", "STOR", "LIST"):
        await c.epsv()
    if verb == "MFMT":
        verb = "MFMT 20200101000000"
    code, text = await c.cmd(f"{verb} {path}")
    assert code in (550, 553), (code, text)
    assert "/bob" not in text  # the reply names no storage path
    await _still_fine(site)


@pytest.mark.parametrize("path", ["%2e%2e/bob/bob.txt", "%2E%2E%2Fbob%2Fbob.txt", "..%2fbob.txt"])
@pytest_twisted.ensureDeferred
async def test_percent_encoded_traversal_is_a_literal_name_inside_the_root(site, path):
    """FTP does no URL decoding: these are odd names in alice's root, absent."""
    env, _hoard, _good = site
    c = await env.client()
    await c.cmd("TYPE I")
    assert (await c.cmd(f"SIZE {path}"))[0] == 550
    await _still_fine(site)


@pytest_twisted.ensureDeferred
async def test_rest_beyond_the_end_then_retr_is_554_and_nothing_is_sent(site):
    env, _hoard, _good = site
    c = await env.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    assert (await c.cmd("REST 999999999"))[0] == 350
    peer = await c.data_connection(port)
    code, _ = await c.cmd("RETR /keep/b.txt")
    assert code == 554
    peer.transport.loseConnection()
    assert await peer.done == b""
    await _still_fine(site)


@pytest_twisted.ensureDeferred
async def test_stor_onto_a_directory_is_550_and_the_directory_survives(site):
    env, _hoard, _good = site
    c = await env.client()
    code, _ = await c.stor("/keep", b"overwrite attempt")
    assert code == 550
    assert (await c.cmd("CWD /keep"))[0] == 250
    await _still_fine(site)


class _Probe(Protocol):
    pass


@pytest_twisted.ensureDeferred
async def test_pasv_flood_keeps_only_the_last_listener_open(site):
    from twisted.internet import reactor

    env, _hoard, _good = site
    c = await env.client()
    for _ in range(5):
        c.send("PASV")
    c.send("EPSV")
    replies = [await c.reply() for _ in range(6)]
    assert [code for code, _ in replies[:5]] == [227] * 5
    assert replies[5][0] == 229
    for _ in range(200):
        c.send("EPSV")
    ports = [int((await c.reply())[1].split("|||")[1].split("|")[0]) for _ in range(200)]
    last = ports[-1]
    closed = [p for p in set(ports[:-1]) if p != last][:20]
    for port in closed:
        with pytest.raises(error.ConnectionRefusedError):
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), _Probe())
    assert (await c.cmd("NOOP"))[0] == 200
    data = await c.retr("/keep/b.txt")  # the session still transfers
    assert data == b"alice's text\n"
    await _still_fine(site)


@pytest_twisted.ensureDeferred
async def test_commands_before_login_are_530_and_reveal_nothing(site):
    env, _hoard, _good = site
    c = await env.client(login=False)
    for line in ["RETR /keep/b.txt", "LIST", "CWD /", "DELE /keep/b.txt", "PASV", "SIZE x"]:
        code, text = await c.cmd(line)
        assert code == 530, (line, code, text)
    await _still_fine(site)


@pytest_twisted.ensureDeferred
async def test_pipelined_flood_of_commands_is_answered_in_order(site):
    env, _hoard, _good = site
    c = await env.client()
    c.transport.write(b"NOOP\r\n" * 500 + b"PWD\r\n")
    codes = [(await c.reply())[0] for _ in range(501)]
    assert codes == [200] * 500 + [257]
    await _still_fine(site)


@pytest_twisted.ensureDeferred
async def test_passive_data_connection_from_another_address_is_refused(site):
    """Data-connection theft: a third party racing to the PASV port gets
    nothing; the client that asked for it still transfers."""
    from twisted.internet import reactor

    from tests.ftp_env import DataPeer

    env, _hoard, _good = site
    c = await env.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    thief = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=("127.0.0.2", 0)), DataPeer()
    )
    assert await thief.done == b""  # closed at once, nothing sent
    peer = await c.data_connection(port)
    code, _ = await c.cmd("RETR /keep/b.txt")
    assert code == 150
    assert await peer.done == b"alice's text\n"
    assert (await c.reply())[0] == 226
    await _still_fine(site)
