"""The FTP control protocol, command by command, over real sockets.

An in-process server (``tests.ftp_env``) on a real transfer layer; a raw
async client sends each command and checks the reply code and its effect.
"""

from __future__ import annotations

import os
import re

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.ftp_env import PASSWORD, FTPEnv, sha256, until
from wsfront.ftp.commands import COMMANDS, FEATURES
from wsfront.ftp.factory import FTPSettings

MiB = 1 << 20


def payload(size: int) -> bytes:
    block = os.urandom(min(size, 64 * 1024) or 1)
    return (block * (size // len(block) + 1))[:size]


def _start(tmp_path, settings=None, **kw) -> FTPEnv:
    from twisted.internet import reactor

    env = FTPEnv(reactor, tmp_path, settings, **kw)
    return pytest_twisted.blockon(defer.ensureDeferred(env.start()))


async def _astart(tmp_path, settings=None, **kw) -> FTPEnv:
    from twisted.internet import reactor

    return await FTPEnv(reactor, tmp_path, settings, **kw).start()


@pytest.fixture
def ftp(tmp_path):
    env = _start(tmp_path)
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


# -- login -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_login_with_the_catalog_password_and_refusal_of_a_wrong_one(ftp):
    c = await ftp.client(login=False)
    assert (await c.cmd("PWD"))[0] == 530
    assert (await c.cmd("USER alice"))[0] == 331
    assert (await c.cmd("PASS wrong"))[0] == 530
    assert (await c.cmd("PWD"))[0] == 530
    assert (await c.cmd("USER alice"))[0] == 331
    code, text = await c.cmd(f"PASS {PASSWORD}")
    assert code == 230, text
    assert await c.cmd("PWD") == (257, '"/" is the current directory')


@pytest_twisted.ensureDeferred
async def test_pass_without_user_is_out_of_order(ftp):
    c = await ftp.client(login=False)
    assert (await c.cmd("PASS x"))[0] == 503


@pytest_twisted.ensureDeferred
async def test_repeated_failed_logins_close_the_connection(ftp):
    c = await ftp.client(login=False)
    for _ in range(2):
        await c.cmd("USER alice")
        assert (await c.cmd("PASS nope"))[0] == 530
    await c.cmd("USER alice")
    assert (await c.cmd("PASS nope"))[0] == 421
    await c.closed


@pytest_twisted.ensureDeferred
async def test_anonymous_is_refused_when_not_configured(ftp):
    c = await ftp.client(login=False)
    await c.cmd("USER anonymous")
    assert (await c.cmd("PASS guest@example.org"))[0] == 530


@pytest_twisted.ensureDeferred
async def test_anonymous_when_configured_reads_but_cannot_write(tmp_path):
    env = await _astart(tmp_path / "a", FTPSettings(anonymous=True, anonymous_root="/alice"))
    try:
        await env.env.upload("/pub.txt", b"public bytes")
        c = await env.client(login=False)
        await c.login("anonymous", "guest@example.org")
        assert await c.retr("/pub.txt") == b"public bytes"
        code, _ = await c.stor("/new.txt", b"x")
        assert code == 550
        assert (await c.cmd("MKD /d"))[0] == 550
        assert (await c.cmd("DELE /pub.txt"))[0] == 550
    finally:
        await env.stop()


# -- simple commands ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_syst_noop_type_mode_stru_and_opts(ftp):
    c = await ftp.client()
    assert await c.cmd("SYST") == (215, "UNIX Type: L8")
    assert (await c.cmd("NOOP"))[0] == 200
    assert (await c.cmd("TYPE I"))[0] == 200
    assert (await c.cmd("TYPE A"))[0] == 200
    assert (await c.cmd("TYPE L 8"))[0] == 200
    assert (await c.cmd("TYPE E"))[0] == 504
    assert (await c.cmd("TYPE"))[0] == 501
    assert (await c.cmd("MODE S"))[0] == 200
    assert (await c.cmd("MODE B"))[0] == 504
    assert (await c.cmd("STRU F"))[0] == 200
    assert (await c.cmd("STRU R"))[0] == 504
    assert (await c.cmd("OPTS UTF8 ON"))[0] == 200
    assert (await c.cmd("OPTS FOO"))[0] == 501
    assert (await c.cmd("XYZZY"))[0] == 500


@pytest_twisted.ensureDeferred
async def test_feat_lists_only_commands_that_work(ftp):
    c = await ftp.client()
    code, text = await c.cmd("FEAT")
    assert code == 211
    lines = [line.strip() for line in text.split("\n")[1:-1]]
    assert "REST STREAM" in lines and "UTF8" in lines and "EPSV" in lines
    assert any(line.startswith("MLST type*;size*;") for line in lines)
    for line in lines:
        verb = line.split()[0]
        if verb not in ("UTF8", "TVFS"):
            assert verb in COMMANDS
    assert len(lines) == len(FEATURES)


@pytest_twisted.ensureDeferred
async def test_help_lists_every_command_and_each_has_a_handler(ftp):
    from wsfront.ftp.protocol import FTPControl

    c = await ftp.client()
    code, text = await c.cmd("HELP")
    assert code == 214
    listed = set(" ".join(text.split("\n")[1:-1]).split())
    assert listed == set(COMMANDS)
    for verb in COMMANDS:
        assert callable(getattr(FTPControl, "ftp_" + verb))
    assert (await c.cmd("HELP RETR"))[0] == 214


@pytest_twisted.ensureDeferred
async def test_too_long_line_gets_500_and_the_session_goes_on(ftp):
    c = await ftp.client()
    code, _ = await c.cmd(b"NOOP " + b"x" * 10240)
    assert code == 500
    assert (await c.cmd("NOOP"))[0] == 200
    code, _ = await c.cmd(b"NO\x00OP")
    assert code == 500
    assert (await c.cmd("PWD"))[0] == 257


@pytest_twisted.ensureDeferred
async def test_replies_go_into_an_idle_socket_at_once(ftp):
    """A reply over plain TCP is sent by the call that makes it, not left
    in the transport for the reactor's next turn (the client waits for it
    before its next command); the client reads it as usual."""
    from wsstorage import framing

    c = await ftp.client()
    (session,) = ftp.factory.sessions
    session.reply(200, "Sent at once")
    assert framing.transport_idle(session.transport)
    assert await c.reply() == (200, "Sent at once")
    assert await c.cmd("NOOP") == (200, "NOOP ok")


@pytest_twisted.ensureDeferred
async def test_pipelined_commands_are_answered_in_order(ftp):
    c = await ftp.client()
    c.send("MKD /p")
    c.send("CWD /p")
    c.send("PWD")
    c.send("CDUP")
    c.send("PWD")
    assert [(await c.reply())[0] for _ in range(5)] == [257, 250, 257, 250, 257]


@pytest_twisted.ensureDeferred
async def test_quit_says_goodbye_and_closes(ftp):
    c = await ftp.client()
    assert (await c.cmd("QUIT"))[0] == 221
    await c.closed


# -- namespace -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_mkd_cwd_cdup_pwd_rmd(ftp):
    c = await ftp.client()
    assert await c.cmd("MKD docs") == (257, '"/docs" created')
    assert (await c.cmd("MKD docs"))[0] == 550
    assert (await c.cmd("CWD docs"))[0] == 250
    assert (await c.cmd("MKD sub"))[0] == 257
    assert await c.cmd("PWD") == (257, '"/docs" is the current directory')
    assert (await c.cmd("CWD missing"))[0] == 550
    assert (await c.cmd("CDUP"))[0] == 250
    assert (await c.cmd("CDUP"))[0] == 250  # clamped at the root
    assert await c.cmd("PWD") == (257, '"/" is the current directory')
    assert (await c.cmd("RMD docs"))[0] == 550  # not empty
    assert (await c.cmd("RMD docs/sub"))[0] == 250
    assert (await c.cmd("RMD docs"))[0] == 250
    assert (await c.cmd("CWD docs"))[0] == 550


@pytest_twisted.ensureDeferred
async def test_paths_cannot_leave_the_users_root(ftp):
    await ftp.catalog.add_user("bob", "bob password")
    bob = await ftp.catalog.get_user("bob")
    await ftp.env.upload("/secret.txt", b"alice only")
    assert bob.root != ftp.env.user.root
    c = await ftp.client(login=False)
    await c.login("bob", "bob password")
    assert (await c.cmd("CWD ../alice"))[0] == 550
    assert (await c.cmd("SIZE /../alice/secret.txt"))[0] in (501, 550)
    await c.cmd("TYPE I")
    assert (await c.cmd("SIZE /../alice/secret.txt"))[0] == 550
    assert (await c.cmd("SIZE /secret.txt"))[0] == 550


@pytest_twisted.ensureDeferred
async def test_invalid_names_get_553(ftp):
    c = await ftp.client()
    assert (await c.cmd("MKD a\\b"))[0] == 553
    assert (await c.cmd("MKD /-"))[0] == 553
    assert (await c.cmd(b"MKD \xc3\x28x"))[0] == 553
    assert (await c.cmd("MKD " + "n" * 300))[0] == 553


@pytest_twisted.ensureDeferred
async def test_dele_rnfr_rnto(ftp):
    await ftp.env.upload("/a.txt", b"A")
    c = await ftp.client()
    assert (await c.cmd("RNTO b.txt"))[0] == 503
    assert (await c.cmd("RNFR missing"))[0] == 550
    assert (await c.cmd("RNFR a.txt"))[0] == 350
    assert (await c.cmd("RNTO b.txt"))[0] == 250
    assert (await c.cmd("RNTO c.txt"))[0] == 503
    assert (await c.cmd("RNFR b.txt"))[0] == 350
    await c.cmd("NOOP")
    assert (await c.cmd("RNTO c.txt"))[0] == 503  # RNTO must follow RNFR
    await c.cmd("TYPE I")
    assert (await c.cmd("SIZE b.txt"))[0] == 213
    assert (await c.cmd("DELE b.txt"))[0] == 250
    assert (await c.cmd("DELE b.txt"))[0] == 550
    assert (await c.cmd("MKD d"))[0] == 257
    assert (await c.cmd("DELE d"))[0] == 550


@pytest_twisted.ensureDeferred
async def test_rnto_never_replaces_a_file_with_a_directory_nor_the_reverse(ftp):
    await ftp.env.upload("/a.bin", b"keep me")
    c = await ftp.client()
    assert (await c.cmd("MKD d1"))[0] == 257
    assert (await c.cmd("RNFR d1"))[0] == 350
    assert (await c.cmd("RNTO a.bin"))[0] == 550
    assert (await c.cmd("RNFR a.bin"))[0] == 350
    assert (await c.cmd("RNTO d1"))[0] == 550
    data, _ = await ftp.env.download("/a.bin")
    assert data == b"keep me"
    assert (await ftp.transfers.stat(ftp.env.user, "/d1")).is_dir


@pytest_twisted.ensureDeferred
async def test_rnto_under_the_file_rnfr_named_says_it_is_not_a_directory(ftp):
    """RNFR k1.bin, RNTO k1.bin/x was "553 Cannot move a directory into
    itself", of a file; a directory into itself still says that."""
    await ftp.env.upload("/k1.bin", b"keep me")
    c = await ftp.client()
    assert (await c.cmd("MKD sub"))[0] == 257
    assert (await c.cmd("CWD sub"))[0] == 250
    for source, target, name in (
        ("/k1.bin", "/k1.bin/x", "/k1.bin"),
        ("../k1.bin", "../k1.bin/x/y", "/k1.bin"),
    ):
        assert (await c.cmd(f"RNFR {source}"))[0] == 350
        assert await c.cmd(f"RNTO {target}") == (550, f"{name} is not a directory")
    assert (await c.cmd("CWD /"))[0] == 250
    assert (await c.cmd("RNFR sub"))[0] == 350
    assert await c.cmd("RNTO sub/inner") == (553, "Cannot move a directory into itself")
    data, _ = await ftp.env.download("/k1.bin")
    assert data == b"keep me"


@pytest_twisted.ensureDeferred
async def test_a_name_ending_in_slash_must_be_a_directory(ftp):
    """POSIX (ENOTDIR): ``f/`` never names the file ``f``, so nothing
    destructive or informative happens to it; ``d/`` is fine for a directory."""
    await ftp.env.upload("/f", b"data")
    c = await ftp.client()
    await c.cmd("TYPE I")
    assert (await c.cmd("MKD d/"))[0] == 257
    for line in ("DELE f/", "SIZE f/", "MDTM f/", "MLST f/", "RNFR f/", "HASH f/",
                 "RMD f/", "CWD f/", "MFMT 20200101000000 f/", "DELE f/."):  # fmt: skip
        assert (await c.cmd(line))[0] == 550, line
    port = await c.epsv()
    await c.data_connection(port)
    for line in ("RETR f/", "STOR f/", "APPE f/", "LIST f/", "NLST f/"):
        assert (await c.cmd(line))[0] == 550, line
    assert (await c.cmd("RNFR f"))[0] == 350
    assert (await c.cmd("RNTO g/"))[0] == 550
    assert await c.retr("f") == b"data"
    assert "f" in (await c.listing("NLST")).split()
    assert (await c.cmd("CWD d/"))[0] == 250
    assert (await c.cmd("CWD /"))[0] == 250
    assert (await c.cmd("RNFR d/"))[0] == 350
    assert (await c.cmd("RNTO e/"))[0] == 250
    assert (await c.cmd("RMD e/"))[0] == 250


@pytest_twisted.ensureDeferred
async def test_size_mdtm_and_mlst(ftp):
    await ftp.env.upload("/f.bin", b"x" * 1234)
    c = await ftp.client()
    assert (await c.cmd("TYPE A"))[0] == 200
    assert (await c.cmd("SIZE f.bin"))[0] == 501
    await c.cmd("TYPE I")
    assert await c.cmd("SIZE f.bin") == (213, "1234")
    assert (await c.cmd("SIZE nope"))[0] == 550
    await c.cmd("MKD d")
    assert (await c.cmd("SIZE d"))[0] == 550
    code, text = await c.cmd("MDTM f.bin")
    assert code == 213 and len(text) == 14 and text.isdigit()
    code, text = await c.cmd("MLST f.bin")
    assert code == 250
    facts = text.split("\n")[1]
    assert "type=file;" in facts and "size=1234;" in facts and facts.endswith(" /f.bin")
    code, text = await c.cmd("MLST")
    assert code == 250 and "type=dir;" in text


# -- data connections ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stor_then_retr_is_identical_and_counted(ftp):
    data = payload(3 * MiB + 17)
    c = await ftp.client()
    code, text = await c.stor("/big.bin", data)
    assert code == 226, text
    assert await c.cmd("SIZE /big.bin") == (213, str(len(data)))
    got = await c.retr("/big.bin")
    assert sha256(got) == sha256(data)
    assert ftp.factory.stats.bytes_received == len(data)
    assert ftp.factory.stats.bytes_sent == len(data)
    assert ftp.factory.stats.uploads_committed == 1


@pytest_twisted.ensureDeferred
async def test_a_client_that_half_closes_the_data_connection_still_gets_the_download(ftp):
    """A client that shuts down its sending side (shutdown(SHUT_WR)) after
    RETR or LIST has said nothing but that it will send nothing: the file
    and the listing still come, then 226.  The FIN closed the connection:
    0 bytes and 426."""
    data = payload(3 * MiB + 17)
    await ftp.env.upload("/big.bin", data)
    c = await ftp.client()
    await c.cmd("TYPE I")
    for line in ("RETR big.bin", "LIST", "NLST"):
        peer = await c.data_connection(await c.epsv())
        peer.transport.loseWriteConnection()  # before the command, or after its 150
        code, text = await c.cmd(line)
        assert code == 150, (line, code, text)
        got = await peer.done
        done = "Transfer complete" if line[0] == "R" else "Directory send OK"
        assert await c.reply() == (226, done)
        if line[0] == "R":
            assert sha256(got) == sha256(data)
        else:
            assert b"big.bin" in got
    peer = await c.data_connection(await c.epsv())
    assert (await c.cmd("RETR big.bin"))[0] == 150
    peer.transport.loseWriteConnection()
    assert sha256(await peer.done) == sha256(data)
    assert (await c.reply())[0] == 226


@pytest_twisted.ensureDeferred
async def test_an_upload_ends_at_the_clients_half_close_as_at_its_close(ftp):
    """An upload's client that shuts down its sending side (not the whole
    socket) has ended the upload, as a close would: committed, 226, and
    the server closes the data connection."""
    c = await ftp.client()
    await c.cmd("TYPE I")
    for data in (b"", b"small", payload(2 * MiB + 5)):
        peer = await c.data_connection(await c.epsv())
        assert (await c.cmd("STOR up.bin"))[0] == 150
        peer.transport.write(data)
        peer.transport.loseWriteConnection()
        assert await peer.done == b""  # closed by the server
        assert await c.reply() == (226, f"Transfer complete, {len(data)} bytes stored")
        assert sha256(await c.retr("up.bin")) == sha256(data)


@pytest_twisted.ensureDeferred
async def test_rest_then_retr_streams_from_the_offset(ftp):
    data = payload(MiB)
    await ftp.env.upload("/f", data)
    c = await ftp.client()
    assert await c.retr("/f", rest=1000) == data[1000:]
    assert await c.retr("/f", rest=len(data)) == b""
    await c.epsv()
    await c.cmd(f"REST {len(data) + 1}")
    assert (await c.cmd("RETR /f"))[0] == 554
    await c.cmd("TYPE A")
    assert (await c.cmd("REST 5"))[0] == 501
    await c.cmd("TYPE I")
    assert (await c.cmd("REST -5"))[0] == 501


@pytest_twisted.ensureDeferred
async def test_retr_of_missing_file_or_directory_is_550_without_a_data_connection(ftp):
    c = await ftp.client()
    await c.cmd("MKD d")
    assert (await c.cmd("RETR nope"))[0] == 550
    assert (await c.cmd("RETR d"))[0] == 550


@pytest_twisted.ensureDeferred
async def test_transfer_without_pasv_or_port_is_425(ftp):
    await ftp.env.upload("/f", b"data")
    c = await ftp.client()
    assert (await c.cmd("RETR f"))[0] == 425


async def _waiting_for_data_connection(ftp) -> None:
    """Until the server's transfer waits for its data connection (so ABOR
    acts on it rather than queue behind it)."""
    await until(
        lambda: any(
            s.transfer is not None and s.transfer.waiting is not None for s in ftp.factory.sessions
        ),
        "the transfer to wait for its data connection",
    )


async def _no_pending_upload(ftp, vpath: str) -> bool:
    return await ftp.catalog.find_upload(ftp.env.user.root + vpath) is None


@pytest_twisted.ensureDeferred
async def test_stor_or_appe_without_pasv_or_port_is_425_and_leaves_no_upload(ftp):
    await ftp.env.upload("/old", payload(400_000))
    c = await ftp.client()
    await c.cmd("TYPE I")
    assert (await c.cmd("STOR new"))[0] == 425
    assert (await c.cmd("APPE old"))[0] == 425
    assert (await c.cmd("STOU"))[0] == 425
    assert (await c.cmd("SIZE new"))[0] == 550
    assert await c.cmd("SIZE old") == (213, "400000")
    assert await _no_pending_upload(ftp, "/new")
    assert await _no_pending_upload(ftp, "/old")
    assert (await c.cmd("MKD new"))[0] == 257
    assert (await c.cmd("DELE old"))[0] == 250


@pytest_twisted.ensureDeferred
async def test_abor_before_the_data_connection_abandons_a_new_upload(ftp):
    await ftp.env.upload("/old", payload(400_000))
    c = await ftp.client()
    await c.cmd("TYPE I")
    for name in ("new", "old"):
        await c.epsv()  # never connected
        c.send(f"STOR {name}")
        await _waiting_for_data_connection(ftp)
        assert (await c.cmd("ABOR"))[0] == 426
        assert (await c.reply())[0] == 226
        assert await _no_pending_upload(ftp, f"/{name}")
    assert (await c.cmd("SIZE new"))[0] == 550
    assert await c.cmd("SIZE old") == (213, "400000")
    assert (await c.cmd("DELE old"))[0] == 250


@pytest_twisted.ensureDeferred
async def test_data_connection_timeout_abandons_a_new_upload(tmp_path):
    env = await _astart(tmp_path, FTPSettings(data_timeout=0.2))
    try:
        c = await env.client()
        await c.cmd("TYPE I")
        await c.epsv()  # never connected
        assert (await c.cmd("STOR new"))[0] == 425
        assert await _no_pending_upload(env, "/new")
        assert (await c.cmd("MKD new"))[0] == 257
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_abor_before_the_data_connection_keeps_a_resumed_upload(ftp):
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    assert (await c.cmd("STOR part"))[0] == 150
    first = payload(300_000)
    peer.transport.write(first)
    await until(
        lambda: any(s.received >= len(first) for s in ftp.transfers.sessions.values()),
        "the server to receive the bytes sent before ABOR",
    )
    assert (await c.cmd("ABOR"))[0] == 426
    assert (await c.reply())[0] == 226
    assert await c.cmd("SIZE part") == (213, str(len(first)))
    for verb in ("APPE part", "STOR part"):
        if verb.startswith("STOR"):
            assert (await c.cmd(f"REST {len(first)}"))[0] == 350
        await c.epsv()  # never connected
        c.send(verb)
        await _waiting_for_data_connection(ftp)
        assert (await c.cmd("ABOR"))[0] == 426
        assert (await c.reply())[0] == 226
        assert await c.cmd("SIZE part") == (213, str(len(first)))
    rest = payload(100_000)
    assert (await c.stor("part", rest, verb="APPE"))[0] == 226
    assert await c.retr("part") == first + rest


@pytest_twisted.ensureDeferred
async def test_rest_then_stor_truncates_and_continues(ftp):
    data = payload(MiB)
    await ftp.env.upload("/f", data[:600_000])
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    assert (await c.cmd("REST 500000"))[0] == 350
    peer = await c.data_connection(port)
    code, text = await c.cmd("STOR f")
    assert code == 150 and "resuming at 500000" in text
    peer.transport.write(data[500_000:])
    peer.transport.loseConnection()
    assert (await c.reply())[0] == 226
    assert sha256(await c.retr("/f")) == sha256(data)


@pytest_twisted.ensureDeferred
async def test_rest_is_dropped_by_any_command_but_the_transfer_it_precedes(ftp):
    """RFC 3659 5.3: REST immediately precedes its transfer command.  A
    marker left by REST 1 + LIST (or NOOP, CWD, a refused RETR) made the
    next STOR resume at byte 1 and truncate the file there."""
    data = b"0123456789"
    c = await ftp.client()
    await c.cmd("MKD d")
    for between in ("LIST", "NLST", "MLSD", "NOOP", "CWD /", "RETR nope", "REST x", "XYZ"):
        await ftp.env.upload("/f", data)
        await c.cmd("TYPE I")
        assert (await c.cmd("REST 1"))[0] == 350
        if between in ("LIST", "NLST", "MLSD"):
            assert await c.listing(between) is not None
        else:
            assert (await c.cmd(between))[0] >= 200
        code, text = await c.stor("f", b"new")
        assert code == 226, (between, code, text)
        assert await c.retr("f") == b"new", between


@pytest_twisted.ensureDeferred
async def test_rest_survives_data_setup_and_type_and_is_used_once(ftp):
    data = payload(1000)
    await ftp.env.upload("/f", data)
    c = await ftp.client()
    await c.cmd("TYPE I")
    assert (await c.cmd("REST 600"))[0] == 350
    assert (await c.cmd("TYPE I"))[0] == 200
    assert (await c.cmd("ALLO 400"))[0] == 202
    port = await c.epsv()
    peer = await c.data_connection(port)
    code, text = await c.cmd("STOR f")
    assert code == 150 and "resuming at 600" in text, text
    peer.transport.write(b"tail")
    peer.transport.loseConnection()
    assert (await c.reply())[0] == 226
    assert await c.retr("f") == data[:600] + b"tail"
    assert await c.retr("f") == data[:600] + b"tail"  # the marker was used up
    assert (await c.cmd("REST 2"))[0] == 350
    assert (await c.cmd("TYPE A"))[0] == 200  # kept, as TYPE I keeps it
    assert (await c.cmd("TYPE I"))[0] == 200
    assert await c.retr("f") == (data[:600] + b"tail")[2:]


@pytest_twisted.ensureDeferred
async def test_a_transfer_in_ascii_mode_with_a_restart_marker_is_refused(ftp):
    """REST 4 (350), then TYPE A: the marker was dropped silently, and the
    STOR replaced the file from byte 0, the RETR sent it whole, each with
    226, to a client told 350 that believed it resumed.  The transfer is
    refused (503, REST is not valid in ASCII mode) and the marker dropped:
    the next transfer starts at 0, as asked."""
    await ftp.env.upload("/f", b"0123456789")
    c = await ftp.client()
    for verb in ("STOR", "RETR"):
        await c.cmd("TYPE I")
        assert (await c.cmd("REST 4"))[0] == 350
        assert (await c.cmd("TYPE A"))[0] == 200
        port = await c.epsv()
        peer = await c.data_connection(port)
        code, text = await c.cmd(f"{verb} f")
        assert code == 503 and "REST is not valid in ASCII mode" in text, (verb, code, text)
        peer.transport.loseConnection()
        assert await c.retr("f") == b"0123456789"  # the marker is gone
    assert (await c.stor("f", b"new"))[0] == 226
    assert await c.retr("f") == b"new"


@pytest_twisted.ensureDeferred
async def test_rest_beyond_the_size_then_stor_is_554(ftp):
    await ftp.env.upload("/f", b"12345")
    c = await ftp.client()
    await c.cmd("TYPE I")
    await c.epsv()
    await c.cmd("REST 6")
    assert (await c.cmd("STOR f"))[0] == 554
    assert await c.retr("/f") == b"12345"


@pytest_twisted.ensureDeferred
async def test_appe_appends_at_the_size_the_user_sees(ftp):
    c = await ftp.client()
    assert (await c.stor("/log", b"one\n"))[0] == 226
    assert (await c.stor("/log", b"two\n", verb="APPE"))[0] == 226
    assert (await c.stor("/new", b"fresh", verb="APPE"))[0] == 226
    assert await c.retr("/log") == b"one\ntwo\n"
    assert await c.retr("/new") == b"fresh"


@pytest_twisted.ensureDeferred
async def test_appe_resumes_the_pending_upload_at_the_size_this_connection_got_from_size(ftp):
    """curl -C - -T: SIZE, then APPE with the bytes from that size on.  The
    owner's pending upload grew behind this connection's back (another of
    its connections took it over and sent more): the APPE resumes at the
    size SIZE reported, where the client's bytes start, not at the end."""
    first, more, rest = payload(200_000), payload(50_000), payload(70_000)

    async def interrupted_stor(c, data, rest_at=None):
        port = await c.epsv()
        peer = await c.data_connection(port)
        if rest_at is not None:
            assert (await c.cmd(f"REST {rest_at}"))[0] == 350
        assert (await c.cmd("STOR part"))[0] == 150
        peer.transport.write(data)
        target = (rest_at or 0) + len(data)
        await until(
            lambda: any(s.received >= len(data) for s in ftp.transfers.sessions.values()),
            "the server to receive the bytes sent before ABOR",
        )
        assert (await c.cmd("ABOR"))[0] == 426
        assert (await c.reply())[0] == 226
        assert await c.cmd("SIZE part") == (213, str(target))

    c = await ftp.client()
    await c.cmd("TYPE I")
    await interrupted_stor(c, first)
    other = await ftp.client()
    await other.cmd("TYPE I")
    await interrupted_stor(other, more, rest_at=len(first))  # grows behind c's back
    assert (await c.stor("part", rest, verb="APPE"))[0] == 226
    assert sha256(await c.retr("part")) == sha256(first + rest)


@pytest_twisted.ensureDeferred
async def test_appe_after_size_of_a_pending_upload_that_started_over_is_refused(ftp):
    """SIZE reported the owner's pending upload (500 bytes); another of the
    owner's connections then stored the file from byte 0 (its STOR took the
    upload over and committed 3,000 bytes), or started it over and left it
    pending, or deleted it and began another upload there.  The APPE
    resumed at 500 all the same, cutting a file the client never saw to
    510 bytes: it is refused (450, as for a committed file), the file left
    as the other connection made it."""
    first, other_data = payload(500), payload(3000)
    c = await ftp.client()
    other = await ftp.client()
    for case in ("stored from 0", "started over", "deleted and begun again"):
        path = "/" + case.replace(" ", "_")
        await _interrupted_stor(ftp, c, path, first)
        assert await c.cmd(f"SIZE {path}") == (213, "500")
        if case == "stored from 0":
            assert (await other.stor(path, other_data))[0] == 226
        elif case == "started over":
            await _interrupted_stor(ftp, other, path, other_data[:800])
        else:
            assert (await other.cmd(f"DELE {path}"))[0] == 250
            await _interrupted_stor(ftp, other, path, other_data[:800])
        code, text = await c.stor(path, b"+" * 10, verb="APPE")
        assert code == 450 and "send SIZE again" in text, (case, code, text)
        if case == "stored from 0":
            assert sha256(await c.retr(path)) == sha256(other_data)
        else:
            assert await other.cmd(f"SIZE {path}") == (213, "800"), case
            # Asked again, SIZE tells the upload as it is, and APPE resumes it.
            assert await c.cmd(f"SIZE {path}") == (213, "800")
            assert (await c.stor(path, other_data[800:], verb="APPE"))[0] == 226
            assert sha256(await c.retr(path)) == sha256(other_data), case


@pytest_twisted.ensureDeferred
async def test_appe_after_size_of_an_upload_committed_since_resumes_only_that_version(tmp_path):
    """SIZE reported an upload still streaming on another connection (the
    client's own, given up on), which then committed: the file is the
    version that upload made, and APPE resumes at the size SIZE reported,
    where the client's bytes start.  Once another client appended to that
    version, the APPE would cut their bytes: refused (450)."""
    ftp = await _astart(tmp_path, checkpoint_bytes=64 * 1024)
    try:
        data, mine = payload(300_000), payload(1000)
        for case in ("committed", "committed, then appended to"):
            path = "/" + case.replace(" ", "_").replace(",", "")
            c, sender = await ftp.client(), await ftp.client()
            await sender.cmd("TYPE I")
            peer = await sender.data_connection(await sender.epsv())
            assert (await sender.cmd(f"STOR {path}"))[0] == 150
            peer.transport.write(data[:200_000])
            await until(
                lambda: any(s.durable >= 64 * 1024 for s in ftp.transfers.sessions.values()),
                "a checkpoint of the upload",
            )
            await c.cmd("TYPE I")
            code, text = await c.cmd(f"SIZE {path}")
            assert code == 213 and 0 < int(text) <= 200_000, (code, text)
            size = int(text)
            peer.transport.write(data[200_000:])
            peer.transport.loseConnection()
            assert (await sender.reply())[0] == 226
            if case == "committed":
                assert (await c.stor(path, mine, verb="APPE"))[0] == 226
                assert sha256(await c.retr(path)) == sha256(data[:size] + mine)
            else:
                assert (await sender.stor(path, b"theirs", verb="APPE"))[0] == 226
                code, text = await c.stor(path, mine, verb="APPE")
                assert code == 450 and "send SIZE again" in text, (code, text)
                assert sha256(await c.retr(path)) == sha256(data + b"theirs")
    finally:
        await ftp.stop()


@pytest_twisted.ensureDeferred
async def test_appe_after_size_of_a_file_another_client_changed_is_refused(ftp):
    """SIZE reported a committed file; another client then replaced it, or
    appended to it: resuming at the old size would cut theirs (an appended
    log line was lost).  The APPE is refused, 450, the file left as it is;
    after a new SIZE it appends."""
    c = await ftp.client()
    await c.stor("/f", b"0123456789")
    await c.stor("/log", b"line1\n")
    await c.cmd("TYPE I")
    assert await c.cmd("SIZE /f") == (213, "10")
    assert await c.cmd("SIZE /log") == (213, "6")
    other = await ftp.client()
    await other.stor("/f", b"0123456789ABCDEF")
    await other.stor("/log", b"line2\n", verb="APPE")
    for path in ("/f", "/log"):
        code, text = await c.stor(path, b"+", verb="APPE")
        assert code == 450 and "send SIZE again" in text, (code, text)
    assert await c.retr("/f") == b"0123456789ABCDEF"
    assert await c.retr("/log") == b"line1\nline2\n"
    assert await c.cmd("SIZE /log") == (213, "12")
    assert (await c.stor("/log", b"line3\n", verb="APPE"))[0] == 226
    assert await c.retr("/log") == b"line1\nline2\nline3\n"
    # Unchanged since its SIZE, a committed file is appended to.
    assert (await c.stor("/log", b"line4\n", verb="APPE"))[0] == 226
    assert await c.cmd("SIZE /log") == (213, "24")
    assert (await c.stor("/log", b"line5\n", verb="APPE"))[0] == 226
    assert (await c.retr("/log")).endswith(b"line4\nline5\n")


@pytest_twisted.ensureDeferred
async def test_appe_whose_file_changes_while_its_upload_starts_is_refused(ftp, monkeypatch):
    """The APPE's look at the file and its upload's start are two catalog
    transactions: another client's append that commits between them must
    not be cut.  The start finds the version changed, the APPE looks again
    and is refused (450) as if the append had come before it."""
    c = await ftp.client()
    await c.stor("/log", b"line1\n")
    await c.cmd("TYPE I")
    assert await c.cmd("SIZE /log") == (213, "6")
    other = await ftp.client()
    begin = ftp.catalog.begin_upload
    slipped_in = []

    def begin_after_another_append(*args, **kwargs):
        if slipped_in:
            return begin(*args, **kwargs)
        d = defer.ensureDeferred(other.stor("/log", b"line2\n", verb="APPE"))
        d.addCallback(slipped_in.append)
        d.addCallback(lambda _: begin(*args, **kwargs))
        return d

    monkeypatch.setattr(ftp.catalog, "begin_upload", begin_after_another_append)
    code, text = await c.stor("/log", b"line3\n", verb="APPE")
    assert slipped_in and slipped_in[0][0] == 226
    assert code == 450 and "send SIZE again" in text, (code, text)
    assert await c.retr("/log") == b"line1\nline2\n"


@pytest_twisted.ensureDeferred
async def test_appe_after_a_size_that_failed_does_not_resume_at_an_earlier_one(ftp):
    """SIZE answered 10, then 550 (the file was deleted): the client was
    told there is no file, so its APPE appends to the one another client
    stored since, not at the first SIZE's 10 bytes."""
    c = await ftp.client()
    await c.stor("/f", b"Z" * 10)
    await c.cmd("TYPE I")
    assert await c.cmd("SIZE /f") == (213, "10")
    other = await ftp.client()
    assert (await other.cmd("DELE /f"))[0] == 250
    assert (await c.cmd("SIZE /f"))[0] == 550
    await other.stor("/f", b"Y" * 100)
    assert (await c.stor("/f", b"+++++", verb="APPE"))[0] == 226
    assert await c.retr("/f") == b"Y" * 100 + b"+++++"


@pytest_twisted.ensureDeferred
async def test_appe_after_this_connection_renamed_another_file_there_appends_to_it(ftp):
    """A size SIZE reported is the old file's once RNTO put another one at
    its path (itself, or inside a renamed directory): APPE resumed at it,
    cutting the 20-byte file that now stands there to 10 bytes."""
    c = await ftp.client()
    await c.stor("/f", b"A" * 10)
    await c.stor("/g", b"B" * 20)
    await c.cmd("MKD /d")
    await c.stor("/d/f", b"C" * 10)
    await c.cmd("TYPE I")
    assert await c.cmd("SIZE /f") == (213, "10")
    assert await c.cmd("SIZE /d/f") == (213, "10")
    assert (await c.cmd("RNFR /g"))[0] == 350
    assert (await c.cmd("RNTO /f"))[0] == 250
    assert (await c.stor("/f", b"+", verb="APPE"))[0] == 226
    assert await c.retr("/f") == b"B" * 20 + b"+"
    await c.cmd("MKD /x")
    await c.stor("/x/f", b"D" * 30)
    other = await ftp.client()  # /d leaves behind c's back: only the target names it
    assert (await other.cmd("RNFR /d"))[0] == 350
    assert (await other.cmd("RNTO /e"))[0] == 250
    assert (await c.cmd("RNFR /x"))[0] == 350
    assert (await c.cmd("RNTO /d"))[0] == 250  # /d/f is /x/f now
    assert (await c.stor("/d/f", b"+", verb="APPE"))[0] == 226
    assert await c.retr("/d/f") == b"D" * 30 + b"+"


@pytest_twisted.ensureDeferred
async def test_appe_after_a_new_login_ignores_sizes_the_last_user_got(ftp):
    """USER + PASS on the same connection logs another user in: a size
    the first one got from SIZE named the first one's file, and bob's
    APPE resumed at it, cutting his 30-byte file to 10 bytes."""
    await ftp.catalog.add_user("bob", "bob password")
    c = await ftp.client(login=False)
    await c.login("bob", "bob password")
    await c.stor("/f", b"B" * 30)
    await c.login("alice", PASSWORD)
    await c.stor("/f", b"A" * 10)
    await c.cmd("TYPE I")
    assert await c.cmd("SIZE /f") == (213, "10")
    await c.login("bob", "bob password")
    assert (await c.stor("/f", b"+", verb="APPE"))[0] == 226
    assert await c.retr("/f") == b"B" * 30 + b"+"


@pytest_twisted.ensureDeferred
async def test_stou_stores_under_a_fresh_name(ftp):
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    code, text = await c.cmd("STOU")
    assert code == 150 and text.startswith("FILE: stou.")
    name = text.split()[1]
    peer.transport.write(b"unique")
    peer.transport.loseConnection()
    assert (await c.reply())[0] == 226
    assert await c.retr(name) == b"unique"


async def _stou(c, argument: str, data: bytes) -> tuple[int, str]:
    """STOU ``argument`` of ``data``: the 150 reply's text once 226 came."""
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    code, text = await c.cmd(f"STOU {argument}".rstrip())
    if code != 150:
        peer.transport.loseConnection()
        return code, text
    peer.transport.write(data)
    peer.transport.loseConnection()
    assert (await c.reply())[0] == 226
    return code, text


@pytest_twisted.ensureDeferred
async def test_appe_after_rest_acts_as_stor_at_the_marker(ftp):
    """REST 4 then APPE: RFC 3659 5.3 has an APPE that completes a restart
    act identically to STOR, the bytes placed at the marker.  It ignored
    the marker and appended at the end, with 226 to a client told 350.
    REST 0 sets no restart: APPE appends.  REST 4, TYPE A, APPE: refused
    (503) as STOR is, the file left as it was and the marker dropped."""
    await ftp.env.upload("/f", b"0123456789")
    c = await ftp.client()
    await c.cmd("TYPE I")
    code, text = await c.cmd("REST 4")
    assert code == 350 and "APPE" in text, (code, text)
    assert (await c.stor("f", b"abc", verb="APPE"))[0] == 226
    assert await c.retr("f") == b"0123abc"
    assert (await c.cmd("REST 0"))[0] == 350
    assert (await c.stor("f", b"+", verb="APPE"))[0] == 226
    assert await c.retr("f") == b"0123abc+"
    assert (await c.cmd("REST 4"))[0] == 350
    assert (await c.cmd("TYPE A"))[0] == 200
    peer = await c.data_connection(await c.epsv())
    code, text = await c.cmd("APPE f")
    assert code == 503 and "REST is not valid in ASCII mode" in text, (code, text)
    peer.transport.loseConnection()
    assert (await c.stor("f", b"!", verb="APPE"))[0] == 226  # the marker is gone
    assert await c.retr("f") == b"0123abc+!"


@pytest_twisted.ensureDeferred
async def test_stou_after_rest_is_refused_and_the_marker_dropped(ftp):
    """REST 5 then STOU: a new file has nothing to resume, and STOU stored
    it whole with 226 to a client that believed it resumed.  Refused (503,
    as ProFTPD refuses it), nothing stored, the marker dropped."""
    c = await ftp.client()
    await c.cmd("TYPE I")
    assert (await c.cmd("REST 5"))[0] == 350
    code, text = await _stou(c, "", b"0123456789")
    assert code == 503 and "STOU is not valid after REST" in text, (code, text)
    assert (await c.listing("NLST")).strip() == ""
    code, text = await _stou(c, "", b"0123456789")
    assert code == 150, (code, text)
    name = (await c.listing("NLST")).strip()
    assert await c.retr(name) == b"0123456789"


def _stou_name(text: str, prefix: str, stem: str) -> str:
    assert text.startswith(f"FILE: {prefix}{stem}."), text
    name = text[len("FILE: ") :]
    assert re.fullmatch(r"[0-9a-f]{8}", name[len(prefix + stem) + 1 :]), text
    return name


@pytest_twisted.ensureDeferred
async def test_stou_after_rest_by_a_user_who_may_not_write_is_refused_for_that(ftp):
    """A read-only user's REST then STOU: 550 (no write permission), as
    STOU alone gets, not 503 for the marker, which suggested that STOU
    without REST would do."""
    await ftp.catalog.add_user("reader", "reader password")
    await ftp.catalog.set_permissions("reader", ["read"])
    c = await ftp.client(login=False)
    await c.login("reader", "reader password")
    await c.cmd("TYPE I")
    assert (await c.cmd("REST 5"))[0] == 350
    code, text = await _stou(c, "", b"0123456789")
    assert (code, text) == (550, "Permission denied")


@pytest_twisted.ensureDeferred
async def test_stou_names_the_stored_file_as_the_client_named_its_place(ftp):
    """RFC 1123 4.1.2.9: '150 FILE: pppp' is the pathname written.  It was
    the bare name for 'STOU d2/x', and 'STOU d2/' stored '/d2.xxxx' at the
    root."""
    c = await ftp.client()
    await c.cmd("MKD d2")
    _, text = await _stou(c, "d2/x", b"one")
    name = _stou_name(text, "d2/", "x")
    assert await c.retr(name) == b"one"
    _, text = await _stou(c, "d2/", b"two")
    name = _stou_name(text, "d2/", "stou")
    assert await c.retr(name) == b"two"
    _, text = await _stou(c, "/d2/..", b"three")
    name = _stou_name(text, "/d2/../", "stou")
    assert await c.retr(name) == b"three"
    assert (await c.cmd("CWD d2"))[0] == 250
    _, text = await _stou(c, "", b"four")
    assert await c.retr("/d2/" + _stou_name(text, "", "stou")) == b"four"
    assert (await c.cmd("CWD /"))[0] == 250
    listed = sorted((await c.listing("NLST")).split("\r\n")[:-1])
    assert listed == ["d2", name.removeprefix("/d2/../")]
    assert len((await c.listing("NLST", "d2")).split("\r\n")[:-1]) == 3


@pytest_twisted.ensureDeferred
async def test_stou_shortens_a_long_base_and_allows_dash_dot_at_the_root(ftp):
    c = await ftp.client()
    _, text = await _stou(c, "a" * 255, b"long")
    name = _stou_name(text, "", "a" * 246)
    assert len(name) == 255 and await c.retr(name) == b"long"
    _, text = await _stou(c, "\u00e9" * 127, b"accents")  # 254 bytes
    name = _stou_name(text, "", "\u00e9" * 123)  # cut between characters
    assert await c.retr(name) == b"accents"
    _, text = await _stou(c, "-", b"dash")
    assert await c.retr(_stou_name(text, "", "-")) == b"dash"
    assert (await _stou(c, "-/x", b"no"))[0] == 553
    assert (await _stou(c, "a\\b", b"no"))[0] == 553


@pytest_twisted.ensureDeferred
async def test_stor_to_a_directory_is_550(ftp):
    c = await ftp.client()
    await c.cmd("MKD d")
    code, _ = await c.stor("d", b"x")
    assert code == 550


@pytest_twisted.ensureDeferred
async def test_list_nlst_and_mlsd(ftp):
    await ftp.env.upload("/a.txt", b"aaa")
    await ftp.env.upload("/b.bin", b"b" * 2000)
    c = await ftp.client()
    await c.cmd("MKD sub")
    text = await c.listing("LIST")
    lines = text.splitlines()
    assert len(lines) == 3
    assert any(line.startswith("d") and line.endswith(" sub") for line in lines)
    assert any(" 2000 " in line and line.endswith(" b.bin") for line in lines)
    assert sorted((await c.listing("NLST")).split("\r\n")[:-1]) == ["a.txt", "b.bin", "sub"]
    mlsd = await c.listing("MLSD")
    assert "type=file;size=3;" in mlsd and "type=dir;" in mlsd
    assert (await c.listing("LIST", "-la a.txt")).endswith(" a.txt\r\n")
    assert (await c.cmd("LIST nope"))[0] == 550


async def _interrupted_stor(ftp, c, name: str, data: bytes) -> None:
    """STOR ``data`` to ``name`` and ABOR once the server relayed it: a
    pending upload of ``len(data)`` bytes owned by ``c``'s user."""
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    assert (await c.cmd(f"STOR {name}"))[0] == 150
    peer.transport.write(data)
    await until(
        lambda: any(s.received >= len(data) for s in ftp.transfers.sessions.values()),
        "the server to relay the upload",
    )
    assert (await c.cmd("ABOR"))[0] == 426
    assert (await c.reply())[0] == 226


@pytest_twisted.ensureDeferred
async def test_list_and_nlst_of_a_file_show_its_committed_version_to_its_uploader(ftp):
    """DESIGN.md, Files: the committed version is what LIST shows to
    everyone; only SIZE and MLST report the owner's pending upload."""
    await ftp.env.upload("/ov1", payload(100_000))
    c = await ftp.client()
    await _interrupted_stor(ftp, c, "ov1", payload(300_000))
    await _interrupted_stor(ftp, c, "only-pending", payload(1000))
    assert await c.cmd("SIZE ov1") == (213, "300000")
    assert " 100000 " in await c.listing("LIST", "ov1")
    assert " 100000 " in await c.listing("LIST")
    assert await c.listing("NLST", "ov1") == "ov1\r\n"
    port = await c.epsv()
    await c.data_connection(port)
    assert (await c.cmd("LIST only-pending"))[0] == 550
    assert "only-pending" not in await c.listing("NLST")


@pytest_twisted.ensureDeferred
async def test_rmd_of_a_directory_holding_only_an_upload_in_progress_says_so(ftp):
    """LIST shows a directory holding only a pending upload as empty, and
    RMD answered a bare "Directory not empty": it says why now."""
    c = await ftp.client()
    await c.cmd("MKD up")
    await c.cmd("MKD full")
    await ftp.env.upload("/full/f", b"x")
    await _interrupted_stor(ftp, c, "up/part", payload(1000))
    assert await c.listing("LIST", "up") == ""
    code, text = await c.cmd("RMD up")
    assert code == 550 and "an upload in progress is in it" in text, (code, text)
    code, text = await c.cmd("RMD full")
    assert (code, text) == (550, "Directory not empty")


@pytest_twisted.ensureDeferred
async def test_a_pattern_never_lists_outside_the_users_root(ftp):
    await ftp.env.upload("/mine.bin", b"m")
    c = await ftp.client()
    for pattern in ("../*", "/../../*", "../../*.bin"):
        port = await c.epsv()
        peer = await c.data_connection(port)
        code, text = await c.cmd(f"NLST {pattern}")
        if code == 150:
            names = (await peer.done).decode().split()
            assert (await c.reply())[0] == 226
            assert all(n.endswith(("mine.bin", "/")) for n in names), names
        else:
            peer.transport.loseConnection()
            assert code in (550, 553), (pattern, code, text)


@pytest_twisted.ensureDeferred
async def test_listing_of_a_large_directory_is_paged(tmp_path):
    env = await _astart(tmp_path, FTPSettings(listing_page=7))
    try:
        c = await env.client()
        await c.cmd("MKD many")
        for i in range(30):
            await env.env.upload(f"/many/f{i:02d}", b"x")
        names = (await c.listing("NLST", "many")).split("\r\n")[:-1]
        assert names == [f"f{i:02d}" for i in range(30)]
    finally:
        await env.stop()


# -- data connection addresses -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pasv_answers_at_once_and_later_commands_are_not_blocked(ftp):
    c = await ftp.client()
    code, text = await c.cmd("PASV")
    assert code == 227 and "(127,0,0,1," in text
    # No data connection yet: other commands still answer.
    assert (await c.cmd("PWD"))[0] == 257
    assert (await c.cmd("NOOP"))[0] == 200


@pytest_twisted.ensureDeferred
async def test_passive_port_range_and_public_address_are_used(tmp_path):
    from tests.support import free_port

    low = free_port()
    settings = FTPSettings(passive_ports=(low, low), public_address="10.1.2.3")
    env = await _astart(tmp_path, settings)
    try:
        c = await env.client()
        code, text = await c.cmd("PASV")
        assert code == 227
        assert f"(10,1,2,3,{low >> 8},{low & 255})" in text
        assert await c.epsv() == low
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_port_and_eprt_to_another_host_or_privileged_port_are_refused(ftp):
    c = await ftp.client()
    assert (await c.cmd("PORT 10,0,0,1,200,10"))[0] == 504
    assert (await c.cmd("PORT 127,0,0,1,0,21"))[0] == 504
    assert (await c.cmd("EPRT |1|10.0.0.1|51234|"))[0] == 504
    assert (await c.cmd("EPRT |2|::2|51234|"))[0] == 504
    assert (await c.cmd("EPRT |3|x|1|"))[0] == 522
    assert (await c.cmd("PORT 1,2,3"))[0] == 501
    assert (await c.cmd("PORT 127,0,0,1,200,10"))[0] == 200
    assert (await c.cmd("EPRT |1|127.0.0.1|51234|"))[0] == 200


@pytest_twisted.ensureDeferred
async def test_active_mode_transfer_with_eprt(ftp):
    from twisted.internet import protocol as tproto
    from twisted.internet import reactor

    from tests.ftp_env import DataPeer

    data = payload(200_000)
    await ftp.env.upload("/f", data)
    peers: list[DataPeer] = []

    def build():
        peer = DataPeer()
        peers.append(peer)
        return peer

    factory = tproto.Factory.forProtocol(build)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        c = await ftp.client()
        await c.cmd("TYPE I")
        assert (await c.cmd(f"EPRT |1|127.0.0.1|{port.getHost().port}|"))[0] == 200
        assert (await c.cmd("RETR f"))[0] == 150
        assert (await c.reply())[0] == 226
        assert sha256(await peers[0].done) == sha256(data)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_refused_epsv_or_eprt_protocol_lists_only_what_this_connection_accepts(ftp):
    """RFC 2428: the 522 reply lists the protocols the server would use;
    over IPv4 that is (1) alone, whatever the unsupported number asked."""
    c = await ftp.client()
    for line in ("EPSV 2", "EPSV 3", "EPRT |3|1.2.3.4|5000|"):
        code, text = await c.cmd(line)
        assert code == 522 and text.endswith("use (1)"), (line, text)


@pytest_twisted.ensureDeferred
async def test_epsv_on_a_dual_stack_listener_speaks_the_clients_ipv4(tmp_path):
    """Behind ``tcp6:...:interface=::`` an IPv4 client's connection has an
    IPv4-mapped local address: protocol 1, which EPSV 1 must accept."""
    env = await _astart(tmp_path, listen="tcp6:0:interface=\\:\\:")
    try:
        c = await env.client()
        assert (await c.cmd("EPSV 1"))[0] == 229
        code, text = await c.cmd("EPSV 2")
        assert code == 522 and text.endswith("use (1)"), text
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_epsv_all_refuses_pasv_and_port(ftp):
    c = await ftp.client()
    assert (await c.cmd("EPSV ALL"))[0] == 200
    assert (await c.cmd("PASV"))[0] == 503
    assert (await c.cmd("PORT 127,0,0,1,200,10"))[0] == 503
    assert (await c.cmd("EPSV 1"))[0] == 229
    assert (await c.cmd("EPSV 2"))[0] == 522


# -- ABOR ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_abor_during_retr_answers_426_then_226_and_the_session_goes_on(ftp):
    data = payload(32 * MiB)
    await ftp.env.upload("/big", data)
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    peer.transport.pauseProducing()  # a slow reader: the transfer can't finish
    assert (await c.cmd("RETR big"))[0] == 150
    c.send(b"\xff\xf4\xff\xf2ABOR")
    assert (await c.reply())[0] == 426
    assert (await c.reply())[0] == 226
    assert (await c.cmd("NOOP"))[0] == 200
    assert peer.received < len(data)


@pytest_twisted.ensureDeferred
async def test_abor_sent_as_lftp_does_with_an_urgent_dm_stops_the_transfer(ftp):
    """lftp: IAC IP IAC in-band, then DM as TCP urgent data, then ABOR."""
    import socket

    await ftp.env.upload("/big", payload(32 * MiB))
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    peer.transport.pauseProducing()
    assert (await c.cmd("RETR big"))[0] == 150
    sock = c.transport.getHandle()
    sock.sendall(b"\xff\xf4\xff")
    sock.send(b"\xf2", socket.MSG_OOB)
    sock.sendall(b"ABOR\r\n")
    assert (await _within(c.reply()))[0] == 426
    assert (await _within(c.reply()))[0] == 226
    assert (await c.cmd("NOOP"))[0] == 200


@pytest_twisted.ensureDeferred
async def test_abor_after_iac_ip_iac_without_its_urgent_dm_is_still_abor(ftp):
    """What lftp's ABOR leaves in the stream when the kernel keeps its
    urgent DM out of it: the lone IAC must not eat the A of ABOR."""
    await ftp.env.upload("/big", payload(32 * MiB))
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    peer.transport.pauseProducing()
    assert (await c.cmd("RETR big"))[0] == 150
    c.send(b"\xff\xf4\xffABOR")
    assert (await _within(c.reply()))[0] == 426
    assert (await _within(c.reply()))[0] == 226
    assert (await c.cmd(b"\xff\xf4\xffNOOP"))[0] == 200


@pytest_twisted.ensureDeferred
async def test_abor_during_stor_keeps_the_upload_resumable(ftp):
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    assert (await c.cmd("STOR part"))[0] == 150
    first = payload(300_000)
    peer.transport.write(first)
    # Wait until the server has relayed what we sent.
    await until(
        lambda: any(s.received >= len(first) for s in ftp.transfers.sessions.values()),
        "the server to receive the bytes sent before ABOR",
    )
    assert (await c.cmd("ABOR"))[0] == 426
    assert (await c.reply())[0] == 226
    code, text = await c.cmd("SIZE part")
    assert code == 213
    durable = int(text)
    assert durable == len(first)
    rest = payload(100_000)
    assert (await c.stor("part", rest, verb="APPE"))[0] == 226
    assert await c.retr("part") == first + rest


@pytest_twisted.ensureDeferred
async def test_abor_without_a_transfer_is_225(ftp):
    c = await ftp.client()
    assert (await c.cmd("ABOR"))[0] == 225


def _within(d: defer.Deferred, seconds: float = 10.0) -> defer.Deferred:
    """``d``, failed with TimeoutError after ``seconds``: a reply that never
    comes (an ABOR the server did not see) fails the test, not hangs it."""
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


@pytest_twisted.ensureDeferred
async def test_rfc775_directory_commands_are_their_rfc959_ones(ftp):
    """RFC 1123 4.1.3.1: accept XMKD, XRMD, XPWD, XCUP and XCWD too.
    Windows' ftp.exe sends them for mkdir, rmdir and pwd (500 Unknown
    command left its user no way to make a directory)."""
    c = await ftp.client()
    assert await c.cmd("XMKD d") == (257, '"/d" created')
    assert (await c.cmd("XCWD d"))[0] == 250
    assert await c.cmd("XPWD") == (257, '"/d" is the current directory')
    assert (await c.cmd("XCUP"))[0] == 250
    assert (await c.cmd("XRMD d"))[0] == 250
    assert (await c.cmd("XCWD d"))[0] == 550  # removed
    assert (await c.cmd("XMKD"))[0] == 501


@pytest_twisted.ensureDeferred
async def test_appe_after_size_of_an_upload_committed_then_compacted_resumes_it(tmp_path):
    """SIZE reported an upload resumed at the end of a file stored in
    pieces; the upload committed, then compaction (hourly, on files of many
    extents: those resumed many times) copied the version into one blob,
    its ETag kept.  APPE resumes at the size SIZE reported: the file is
    still the version that upload committed.  Compared by extents, it was
    refused (450) and ``curl -C - -T`` gave up (exit 25)."""
    from twisted.internet import reactor

    from wsfront.maintenance.compact import COMPACTED, Compactor, CompactSettings

    ftp = await _astart(tmp_path, checkpoint_bytes=64 * 1024)
    try:
        head = payload(50_000)
        await ftp.env.upload("/f", head[:20_000])
        await ftp.env.upload("/f", head[20_000:], offset=20_000)  # two extents
        data, mine = payload(300_000), payload(1000)
        c, sender = await ftp.client(), await ftp.client()
        await sender.cmd("TYPE I")
        peer = await sender.data_connection(await sender.epsv())
        assert (await sender.cmd("REST 50000"))[0] == 350
        assert (await sender.cmd("STOR /f"))[0] == 150
        peer.transport.write(data[:200_000])
        await until(
            lambda: any(s.durable >= 64 * 1024 for s in ftp.transfers.sessions.values()),
            "a checkpoint of the upload",
        )
        await c.cmd("TYPE I")
        code, text = await c.cmd("SIZE /f")
        assert code == 213 and 50_000 < int(text) <= 250_000, (code, text)
        size = int(text)
        peer.transport.write(data[200_000:])
        peer.transport.loseConnection()
        assert (await sender.reply())[0] == 226
        before = (await ftp.transfers.view(ftp.env.user, "/f")).committed
        settings = CompactSettings(bytes_per_second=None, min_extents=3)
        compactor = Compactor(reactor, ftp.catalog, ftp.transfers.pool, settings, None)
        assert (await compactor.run_pass())[COMPACTED] == 1
        after = (await ftp.transfers.view(ftp.env.user, "/f")).committed
        assert after.etag == before.etag and len(after.extents) == 1
        assert (await c.stor("/f", mine, verb="APPE"))[0] == 226
        assert sha256(await c.retr("/f")) == sha256((head + data)[:size] + mine)
    finally:
        await ftp.stop()
