"""MFMT, HASH, SITE, ACCT, the urgent commands ahead of a full queue, and
data connections that stall mid-transfer, over real sockets.

An in-process server (``tests.ftp_env``) on a real transfer layer; the raw
client checks each reply and what it changed (or did not change) in the
catalog.
"""

from __future__ import annotations

import hashlib

import pytest_twisted

from tests.ftp_env import FTPEnv, payload, sha256, until
from wsfront.ftp.commands import COMMANDS
from wsfront.ftp.factory import FTPSettings
from wsfront.ftp.parsing import parse_time_value

MiB = 1 << 20


# -- MFMT ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_mfmt_sets_the_time_mdtm_mlst_and_list_show(ftp):
    await ftp.env.upload("/f.txt", b"content")
    before = await ftp.catalog.stat(ftp.env.user.root + "/f.txt")
    c = await ftp.client()
    assert await c.cmd("MFMT 20200102030405 f.txt") == (213, "Modify=20200102030405; f.txt")
    assert await c.cmd("MDTM f.txt") == (213, "20200102030405")
    code, text = await c.cmd("MLST f.txt")
    assert code == 250 and "modify=20200102030405;" in text
    assert "Jan  2  2020 f.txt" in await c.listing("LIST")
    after = await ftp.catalog.stat(ftp.env.user.root + "/f.txt")
    assert after.mtime == parse_time_value("20200102030405")
    assert (after.size, after.etag) == (before.size, before.etag)  # content untouched
    assert await c.retr("f.txt") == b"content"
    # Fractions are accepted; what MDTM shows is never later than what was set.
    assert (await c.cmd("MFMT 20200102030405.999 f.txt"))[0] == 213
    assert await c.cmd("MDTM f.txt") == (213, "20200102030405")
    # A name with spaces is everything after the time.
    await ftp.env.upload("/a b.txt", b"x")
    assert await c.cmd("MFMT 19991231235959 a b.txt") == (213, "Modify=19991231235959; a b.txt")


@pytest_twisted.ensureDeferred
async def test_mfmt_errors_change_nothing(ftp):
    await ftp.env.upload("/f.txt", b"content")
    mtime = (await ftp.catalog.stat(ftp.env.user.root + "/f.txt")).mtime
    c = await ftp.client()
    assert (await c.cmd("MFMT 20200102030405 missing.txt"))[0] == 550
    assert (await c.cmd("MFMT 2020010203040 f.txt"))[0] == 501  # 13 digits
    assert (await c.cmd("MFMT 20201302030405 f.txt"))[0] == 501  # month 13
    assert (await c.cmd("MFMT 20200230030405 f.txt"))[0] == 501  # 30 February
    assert (await c.cmd("MFMT 20200102030405"))[0] == 501  # no path
    assert (await c.cmd("MFMT"))[0] == 501
    await c.cmd("MKD d")
    assert (await c.cmd("MFMT 20200102030405 d"))[0] == 550
    assert (await c.cmd("MFMT 20200102030405 ../../etc/passwd"))[0] in (550, 553)
    assert (await ftp.catalog.stat(ftp.env.user.root + "/f.txt")).mtime == mtime


@pytest_twisted.ensureDeferred
async def test_mfmt_of_a_committed_file_under_a_pending_upload_says_so(ftp):
    """The refusal said "no committed version yet" of a file that has one."""
    await ftp.env.upload("/f", b"committed")
    c = await ftp.client()
    await c.cmd("TYPE I")
    peer = await c.data_connection(await c.epsv())
    assert (await c.cmd("STOR f"))[0] == 150
    peer.transport.write(payload(200_000))
    await until(
        lambda: any(s.received >= 200_000 for s in ftp.transfers.sessions.values()), "bytes"
    )
    assert (await c.cmd("ABOR"))[0] == 426
    assert (await c.reply())[0] == 226
    code, text = await c.cmd("MFMT 20200102030405 f")
    assert code == 550 and "pending" in text and "no committed" not in text, text
    assert await c.retr("f") == b"committed"


@pytest_twisted.ensureDeferred
async def test_mfmt_needs_write_permission(ftp):
    await ftp.catalog.add_user("reader", "reader password")
    await ftp.catalog.set_permissions("reader", ["read"])
    c = await ftp.client(login=False)
    await c.login("reader", "reader password")
    assert (await c.cmd("MFMT 20200102030405 anything"))[0] == 550


# -- HASH ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_hash_answers_the_sha256_of_the_committed_version(ftp):
    data = payload(3 * MiB + 11)
    c = await ftp.client()
    assert (await c.stor("/big.bin", data))[0] == 226
    reads = ftp.transfers.stats.reads_started
    code, text = await c.cmd("HASH big.bin")
    assert (code, text) == (213, f"SHA-256 0-{len(data)} {sha256(data)} big.bin")
    # A straight upload's sha256 is in the catalog: no byte was read again.
    assert ftp.transfers.stats.reads_started == reads


@pytest_twisted.ensureDeferred
async def test_hash_of_an_appended_file_is_computed_by_streaming(ftp):
    first, second = payload(MiB), payload(700_000)
    c = await ftp.client()
    assert (await c.stor("/log", first))[0] == 226
    assert (await c.stor("/log", second, verb="APPE"))[0] == 226
    reads = ftp.transfers.stats.reads_started
    whole = first + second
    code, text = await c.cmd("HASH log")
    assert (code, text) == (213, f"SHA-256 0-{len(whole)} {sha256(whole)} log")
    assert await c.cmd("OPTS HASH MD5") == (200, "MD5")
    assert await c.cmd("HASH log") == (
        213,
        f"MD5 0-{len(whole)} {hashlib.md5(whole).hexdigest()} log",
    )
    assert await c.cmd("OPTS HASH sha-1") == (200, "SHA-1")
    assert await c.cmd("OPTS HASH") == (200, "SHA-1")
    code, text = await c.cmd("HASH log")
    assert text.split()[2] == hashlib.sha1(whole).hexdigest()
    assert ftp.transfers.stats.reads_started >= reads + 2
    # The streamed SHA-256 was recorded: asked again, nothing is read.
    assert (await ftp.catalog.stat(ftp.env.user.root + "/log")).version.sha256 == sha256(whole)
    await c.cmd("OPTS HASH SHA-256")
    reads = ftp.transfers.stats.reads_started
    assert (await c.cmd("HASH log"))[1].split()[2] == sha256(whole)
    assert ftp.transfers.stats.reads_started == reads


@pytest_twisted.ensureDeferred
async def test_hash_feat_and_errors(ftp):
    await ftp.env.upload("/f", b"abc")
    c = await ftp.client()
    _, text = await c.cmd("FEAT")
    assert " HASH SHA-256*;SHA-1;MD5" in text.split("\n")
    await c.cmd("OPTS HASH MD5")
    assert " HASH SHA-256;SHA-1;MD5*" in (await c.cmd("FEAT"))[1].split("\n")
    assert (await c.cmd("OPTS HASH CRC32"))[0] == 501
    assert (await c.cmd("OPTS HASH MD5"))[0] == 200  # the selection survived the refusal
    assert (await c.cmd("HASH missing"))[0] == 550
    await c.cmd("MKD d")
    assert (await c.cmd("HASH d"))[0] == 550
    assert (await c.cmd("HASH"))[0] == 501


@pytest_twisted.ensureDeferred
async def test_hash_never_covers_a_pending_upload(ftp):
    c = await ftp.client()
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    assert (await c.cmd("STOR part"))[0] == 150
    peer.transport.write(payload(200_000))
    await until(
        lambda: any(s.received >= 200_000 for s in ftp.transfers.sessions.values()), "bytes"
    )
    assert (await c.cmd("ABOR"))[0] == 426
    assert (await c.reply())[0] == 226
    assert (await c.cmd("SIZE part"))[0] == 213  # the owner sees the pending upload
    assert (await c.cmd("HASH part"))[0] == 550  # ... but it is not hashed


# -- SITE, ACCT, and everything HELP lists ---------------------------------------


@pytest_twisted.ensureDeferred
async def test_site_help_chmod_and_unknown(ftp):
    await ftp.env.upload("/f", b"x")
    c = await ftp.client()
    code, text = await c.cmd("SITE HELP")
    assert code == 214 and "CHMOD" in text and "HELP" in text
    assert (await c.cmd("SITE CHMOD 644 f"))[0] == 200
    assert (await c.cmd("SITE chmod 0755 f"))[0] == 200
    assert (await c.cmd("SITE CHMOD 644 missing"))[0] == 550
    assert (await c.cmd("SITE CHMOD rwx f"))[0] == 501
    assert (await c.cmd("SITE CHMOD 644"))[0] == 501
    code, text = await c.cmd("SITE EXEC /bin/sh")
    assert code == 504 and "SITE HELP" in text
    assert (await c.cmd("SITE"))[0] == 501
    assert await c.retr("f") == b"x"


@pytest_twisted.ensureDeferred
async def test_site_chmod_takes_the_path_as_sent(ftp):
    """``lftp mirror -R`` sends ``SITE CHMOD 755 dir`` after each MKD:
    the path's spaces, at either end, are part of its name."""
    await ftp.transfers.mkdir(ftp.env.user, "/trail ")
    await ftp.env.upload("/ lead", b"x")
    c = await ftp.client()
    assert (await c.cmd("SITE CHMOD 755 trail "))[0] == 200
    assert (await c.cmd("SITE CHMOD 644  lead"))[0] == 200
    assert (await c.cmd("SITE CHMOD 755 trail"))[0] == 550  # another name


@pytest_twisted.ensureDeferred
async def test_acct_is_superfluous(ftp):
    c = await ftp.client(login=False)
    assert (await c.cmd("ACCT billing"))[0] == 202
    c = await ftp.client()
    assert (await c.cmd("ACCT billing"))[0] == 202


ARGUMENTS = {
    "USER": "alice", "PASS": "x", "OPTS": "UTF8 ON", "TYPE": "I", "MODE": "S", "STRU": "F",
    "CWD": "/", "MKD": "newdir", "RMD": "nodir", "DELE": "f", "RNFR": "f", "RNTO": "g",
    "SIZE": "f", "MDTM": "f", "PORT": "127,0,0,1,200,10", "EPRT": "|1|127.0.0.1|51234|",
    "REST": "0", "RETR": "f", "STOR": "f", "APPE": "f", "MFMT": "20200101000000 f",
    "HASH": "f", "SITE": "HELP", "AUTH": "TLS", "PBSZ": "0", "PROT": "P", "ACCT": "x",
}  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_no_command_that_help_or_feat_lists_is_answered_500_or_502(ftp):
    await ftp.env.upload("/f", b"x")
    c = await ftp.client()
    listed = set(" ".join((await c.cmd("HELP"))[1].split("\n")[1:-1]).split())
    feat = (await c.cmd("FEAT"))[1].split("\n")[1:-1]
    listed |= {line.split()[0] for line in feat if line.split()[0] in COMMANDS}
    assert listed >= {"MFMT", "HASH", "SITE", "ACCT", "MLSD", "STAT", "HELP", "ALLO"}
    for verb in sorted(listed - {"QUIT", "USER", "PASS", "ABOR"}):
        if verb in ("RETR", "STOR", "APPE", "STOU", "LIST", "NLST", "MLSD"):
            port = await c.epsv()
            peer = await c.data_connection(port)
        else:
            peer = None
        code, text = await c.cmd(f"{verb} {ARGUMENTS.get(verb, '')}".rstrip())
        assert code not in (500, 502), (verb, code, text)
        if code == 150:
            if verb in ("STOR", "APPE", "STOU"):
                peer.transport.loseConnection()
            await peer.done
            code, text = await c.reply()
            assert code == 226, (verb, code, text)
        elif peer is not None:
            peer.transport.loseConnection()
    other = await ftp.client(login=False)
    for verb in ("USER", "PASS", "QUIT"):
        code, _ = await other.cmd(f"{verb} {ARGUMENTS.get(verb, '')}".rstrip())
        assert code not in (500, 502)


# -- the queue: ABOR, STAT and QUIT ahead of a flood --------------------------------


async def _blocked_retr(ftp, c, size: int = 32 * MiB):
    """A RETR whose reader never reads: it runs until aborted."""
    await ftp.env.upload("/big", payload(size))
    await c.cmd("TYPE I")
    port = await c.epsv()
    peer = await c.data_connection(port)
    peer.transport.pauseProducing()
    assert (await c.cmd("RETR big"))[0] == 150
    return peer


@pytest_twisted.ensureDeferred
async def test_abor_and_stat_act_at_once_behind_hundreds_of_queued_commands(ftp):
    c = await ftp.client()
    peer = await _blocked_retr(ftp, c)
    c.transport.write(b"NOOP\r\n" * 300)  # queued behind the running RETR
    await until(lambda: len(next(iter(ftp.factory.sessions))._queue) >= 300, "the queue")
    session = next(iter(ftp.factory.sessions))
    assert session._queue and not session._paused_reading
    c.send("STAT")
    code, text = await c.reply()
    assert code == 211 and "RETR in progress" in text
    c.send(b"\xff\xf4\xff\xf2ABOR")
    assert (await c.reply())[0] == 426
    assert (await c.reply())[0] == 226
    assert [(await c.reply())[0] for _ in range(300)] == [200] * 300
    assert (await c.cmd("PWD"))[0] == 257
    assert peer.received < 32 * MiB


@pytest_twisted.ensureDeferred
async def test_quit_leaves_at_once_when_the_queue_is_full(tmp_path):
    from twisted.internet import reactor

    env = await FTPEnv(reactor, tmp_path, FTPSettings(max_queued_commands=8)).start()
    try:
        c = await env.client()
        # Larger than what the kernel's socket buffers and the data
        # connection's own can hold, so the RETR is still running.
        await _blocked_retr(env, c, 32 * MiB)
        c.transport.write(b"NOOP\r\n" * 20 + b"QUIT\r\n")
        assert (await c.reply())[0] == 221
        await c.closed
        await until(lambda: not env.factory.sessions, "the session to end")
        other = await env.client()
        assert (await other.cmd("NOOP"))[0] == 200
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_a_flood_beyond_the_byte_cap_pauses_reading_and_is_still_answered(tmp_path):
    from twisted.internet import reactor

    env = await FTPEnv(reactor, tmp_path, FTPSettings(max_queued_bytes=4096)).start()
    try:
        c = await env.client()
        peer = await _blocked_retr(env, c, 32 * MiB)  # outlasts every buffer
        c.transport.write(b"NOOP\r\n" * 2000)
        session = next(iter(env.factory.sessions))
        await until(lambda: session._paused_reading, "reading to pause")
        assert session._queued_bytes <= 4096 + 64 * 1024  # one read beyond the cap at most
        peer.transport.resumeProducing()  # the download can finish now
        codes = [(await c.reply())[0] for _ in range(2001)]
        assert codes == [226] + [200] * 2000
        assert (await c.cmd("PWD"))[0] == 257
        assert not session._paused_reading
    finally:
        await env.stop()


# -- data connections that stall ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_retr_to_a_client_that_stops_reading_times_out_with_426(tmp_path):
    from twisted.internet import reactor

    env = await FTPEnv(reactor, tmp_path, FTPSettings(data_timeout=0.5)).start()
    try:
        c = await env.client()
        peer = await _blocked_retr(env, c)
        code, text = await c.reply()
        assert code == 426 and "timed out" in text
        peer.transport.resumeProducing()  # to notice the server's close
        await peer.done
        assert peer.received < 32 * MiB
        assert (await c.cmd("NOOP"))[0] == 200
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
async def test_stor_from_a_client_that_stops_sending_times_out_and_stays_resumable(tmp_path):
    from twisted.internet import reactor

    env = await FTPEnv(reactor, tmp_path, FTPSettings(data_timeout=0.5)).start()
    try:
        first, rest = payload(300_000), payload(200_000)
        c = await env.client()
        await c.cmd("TYPE I")
        port = await c.epsv()
        peer = await c.data_connection(port)
        assert (await c.cmd("STOR part"))[0] == 150
        peer.transport.write(first)  # ... then nothing, and no close
        code, text = await c.reply()
        assert code == 426 and "timed out" in text and "resume" in text
        await peer.done
        assert await c.cmd("SIZE part") == (213, str(len(first)))
        assert (await c.stor("part", rest, verb="APPE"))[0] == 226
        assert sha256(await c.retr("part")) == sha256(first + rest)
    finally:
        await env.stop()


def test_stall_watch_counts_activity_with_a_clock():
    """Unit: the watch fires only after ``timeout`` seconds without a byte."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from wsfront.ftp.data import DataChannel

    clock = Clock()
    channel = DataChannel()
    channel.makeConnection(StringTransport())
    fired = []
    channel.watch_stall(clock, 5.0, lambda: fired.append(clock.seconds()))
    channel.watch_for_close()
    clock.advance(4)
    channel.dataReceived(b"x")
    clock.advance(4)
    assert not fired and not channel.transport.disconnecting
    channel.consumer(None).write(b"y")
    clock.advance(4.9)
    assert not fired
    clock.advance(0.2)
    assert fired == [13.1] and channel.stalled


def test_a_data_connection_paused_by_storage_is_not_a_stalled_client():
    """Unit: while the upload's consumer (storage) holds reading paused, the
    stall watch waits; once reading resumes the client is watched again."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from wsfront.ftp.data import DataChannel

    class Session:
        producer = None

        def registerProducer(self, producer, streaming):
            self.producer = producer

        def write(self, data):
            pass

    clock = Clock()
    channel = DataChannel()
    channel.makeConnection(StringTransport())
    fired = []
    channel.watch_stall(clock, 5.0, lambda: fired.append(clock.seconds()))
    session = Session()
    channel.receive_into(session, None)
    session.producer.pauseProducing()  # storage is slow
    assert channel.transport.producerState == "paused"
    clock.pump([1.0] * 30)
    assert not fired
    session.producer.resumeProducing()
    assert channel.transport.producerState == "producing"
    clock.pump([1.0] * 6)
    assert fired and channel.stalled
