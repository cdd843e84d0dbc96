"""Real FTP clients against the in-process server on 127.0.0.1.

ftplib runs in a thread; curl, lftp and aria2c run as subprocesses through
``getProcessOutputAndValue``, so the reactor (and the server in it) keeps
running while they work.  Every byte is checked with sha256, and resumes
are checked to move fewer bytes than the file.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, threads
from twisted.internet.utils import getProcessOutputAndValue

from tests.ftp_env import PASSWORD, FTPEnv, sha256, until
from tests.support import require_tool

MiB = 1 << 20


def payload(size: int) -> bytes:
    block = os.urandom(min(size, 64 * 1024) or 1)
    return (block * (size // len(block) + 1))[:size]


def file_sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def ftp(tmp_path):
    from twisted.internet import reactor

    env = FTPEnv(reactor, tmp_path / "server")
    pytest_twisted.blockon(defer.ensureDeferred(env.start()))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


async def run(tool: str, *args: str, cwd=None) -> tuple[str, str]:
    exe = require_tool(tool)
    out, err, code = await getProcessOutputAndValue(
        exe, list(args), env=dict(os.environ), path=str(cwd) if cwd else None
    )
    text_out, text_err = out.decode(errors="replace"), err.decode(errors="replace")
    assert code == 0, f"{tool} {' '.join(args)} exited {code}: {text_err[-2000:]}"
    return text_out, text_err


def _ftplib(ftp_env):
    client = ftplib.FTP()
    client.connect("127.0.0.1", ftp_env.port, timeout=30)
    client.login("alice", PASSWORD)
    return client


# -- ftplib ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ftplib_round_trip_with_rest_rename_and_ascii(ftp):
    data = payload(2 * MiB + 5)

    def session():
        c = _ftplib(ftp)
        c.mkd("dir")
        c.cwd("dir")
        c.storbinary("STOR f.bin", io.BytesIO(data))
        assert c.size("f.bin") == len(data)
        got = io.BytesIO()
        c.retrbinary("RETR f.bin", got.write)
        tail = io.BytesIO()
        c.retrbinary("RETR f.bin", tail.write, rest=12345)
        c.rename("f.bin", "g.bin")
        names = c.nlst()
        c.storlines("STOR t.txt", io.BytesIO(b"one\r\ntwo\r\n"))
        lines: list[str] = []
        c.retrlines("RETR t.txt", lines.append)
        c.voidcmd("TYPE I")
        raw = io.BytesIO()
        c.retrbinary("RETR t.txt", raw.write)
        c.delete("g.bin")
        after = c.nlst()
        c.quit()
        return got.getvalue(), tail.getvalue(), names, lines, raw.getvalue(), after

    got, tail, names, lines, raw, after = await threads.deferToThread(session)
    assert sha256(got) == sha256(data)
    assert tail == data[12345:]
    assert names == ["g.bin"]
    assert lines == ["one", "two"]
    assert raw == b"one\ntwo\n"  # TYPE A stored Unix line ends
    assert after == ["t.txt"]


@pytest_twisted.ensureDeferred
async def test_ftplib_active_mode(ftp):
    data = payload(300_000)

    def session():
        c = _ftplib(ftp)
        c.set_pasv(False)
        c.storbinary("STOR a.bin", io.BytesIO(data))
        got = io.BytesIO()
        c.retrbinary("RETR a.bin", got.write)
        c.quit()
        return got.getvalue()

    assert sha256(await threads.deferToThread(session)) == sha256(data)


@pytest_twisted.ensureDeferred
async def test_ftplib_abort_during_retr_is_answered_and_the_session_goes_on(ftp):
    """ftplib's abort() sends ``ABOR\\r\\n`` with its LF as TCP urgent data."""
    await ftp.env.upload("/big", payload(32 * MiB))

    def session():
        c = _ftplib(ftp)
        c.sock.settimeout(10)  # a hung ABOR fails the test instead of hanging it
        c.voidcmd("TYPE I")
        conn = c.transfercmd("RETR big")
        got = conn.recv(65536)
        first = c.abort()
        conn.close()
        second = c.getmultiline()
        c.voidcmd("NOOP")
        c.quit()
        return got, first, second

    got, first, second = await threads.deferToThread(session)
    assert got
    assert first[:3] == "426" and second[:3] == "226", (first, second)


@pytest_twisted.ensureDeferred
async def test_ftplib_abort_during_stor_keeps_what_arrived_resumable(ftp):
    data = payload(300_000)
    client: list[ftplib.FTP] = []

    def start():
        c = _ftplib(ftp)
        c.sock.settimeout(10)
        c.voidcmd("TYPE I")
        conn = c.transfercmd("STOR part")
        conn.sendall(data)
        client.extend([c, conn])

    def abort():
        c, conn = client
        first = c.abort()
        second = c.getmultiline()
        conn.close()
        size = c.size("part")
        c.quit()
        return first, second, size

    await threads.deferToThread(start)
    await until(
        lambda: any(s.received >= len(data) for s in ftp.transfers.sessions.values()),
        "the server to relay the first bytes",
    )
    first, second, size = await threads.deferToThread(abort)
    assert first[:3] == "426" and second[:3] == "226", (first, second)
    assert size == len(data)  # pending, resumable with REST or APPE


@pytest_twisted.ensureDeferred
async def test_ftplib_mget_style_nlst_expands_a_pattern(ftp):
    """Classic ``ftp mget *.bin`` sends ``NLST *.bin`` and RETRs each name
    it gets back; a name with a literal ``*`` is still listed as itself,
    and ``mget sub/d.bin`` gets ``sub/d.bin`` back, to RETR."""
    files = {"a.bin": b"A", "b.bin": b"BB", "c.txt": b"C", ".h.bin": b"H", "sub/d.bin": b"D"}
    await ftp.transfers.mkdir(ftp.env.user, "/sub")
    for name, data in files.items():
        await ftp.env.upload("/" + name, data)
    await ftp.env.upload("/star*", b"*")

    def session():
        c = _ftplib(ftp)
        got = {}
        for name in c.nlst("*.bin"):
            buf = io.BytesIO()
            c.retrbinary(f"RETR {name}", buf.write)
            got[name] = buf.getvalue()
        sub = c.nlst("sub/?.bin")
        named = c.nlst("sub/d.bin")  # mget sub/d.bin: NLST, then RETR what it gave
        buf = io.BytesIO()
        c.retrbinary(f"RETR {named[0]}", buf.write)
        got[named[0]] = buf.getvalue()
        classes = c.nlst("[ab].bin")
        star = c.nlst("star*")
        lines: list[str] = []
        c.retrlines("LIST *.txt", lines.append)
        try:
            c.nlst("nodir/*.bin")
            missing = "listed"
        except ftplib.error_perm as e:
            missing = str(e)
        c.quit()
        return got, sub, named, classes, star, lines, missing

    got, sub, named, classes, star, lines, missing = await threads.deferToThread(session)
    assert got == {"a.bin": b"A", "b.bin": b"BB", "sub/d.bin": b"D"}
    assert sub == ["sub/d.bin"]
    # A file named by its path is listed as that path, as a pattern's
    # matches are: its name alone ("d.bin") named nothing to RETR.
    assert named == ["sub/d.bin"]
    assert classes == ["a.bin", "b.bin"]
    assert star == ["star*"]
    assert len(lines) == 1 and lines[0].endswith(" c.txt")
    assert missing.startswith("550")


# -- curl ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_curl_upload_and_download(ftp, tmp_path):
    data = payload(3 * MiB + 1)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    base = f"ftp://127.0.0.1:{ftp.port}"
    user = f"alice:{PASSWORD}"
    await run("curl", "-sS", "-u", user, "-T", str(src), f"{base}/up/src.bin", "--ftp-create-dirs")
    dst = tmp_path / "dst.bin"
    await run("curl", "-sS", "-u", user, "-o", str(dst), f"{base}/up/src.bin")
    assert file_sha(dst) == sha256(data)
    await run("curl", "-sS", "--ftp-pasv", "--disable-epsv", "-u", user, "-o", str(dst),
              f"{base}/up/src.bin")  # fmt: skip
    assert file_sha(dst) == sha256(data)


@pytest_twisted.ensureDeferred
async def test_curl_resumes_an_interrupted_download_with_rest(ftp, tmp_path):
    data = payload(4 * MiB)
    await ftp.env.upload("/big.bin", data)
    partial = tmp_path / "big.bin"
    partial.write_bytes(data[: 3 * MiB + 7])  # what an interrupted download left
    before = ftp.factory.stats.bytes_sent
    await run("curl", "-sS", "-u", f"alice:{PASSWORD}", "-C", "-", "-o", str(partial),
              f"ftp://127.0.0.1:{ftp.port}/big.bin")  # fmt: skip
    assert file_sha(partial) == sha256(data)
    assert ftp.factory.stats.bytes_sent - before == len(data) - (3 * MiB + 7)


@pytest_twisted.ensureDeferred
async def test_curl_resumes_an_interrupted_upload_with_size_and_appe(ftp, tmp_path):
    data = payload(4 * MiB)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    # An interrupted upload: the server committed what arrived.
    c = await ftp.client()
    assert (await c.stor("/up.bin", data[: MiB + 3]))[0] == 226
    before = ftp.factory.stats.bytes_received
    await run("curl", "-sS", "-u", f"alice:{PASSWORD}", "-C", "-", "-T", str(src),
              f"ftp://127.0.0.1:{ftp.port}/up.bin")  # fmt: skip
    received = ftp.factory.stats.bytes_received - before
    assert received == len(data) - (MiB + 3) < len(data)
    got, _ = await ftp.env.download("/up.bin")
    assert sha256(got) == sha256(data)


# -- lftp ------------------------------------------------------------------------


def _tree(root, files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _read_tree(root) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = file_sha(full)
    return out


async def lftp(ftp, script: str, cwd) -> str:
    out, _ = await run(
        "lftp",
        "-c",
        f"set net:max-retries 1; set net:timeout 20; set ftp:ssl-allow no; "
        f"open -u 'alice,{PASSWORD}' -p {ftp.port} 127.0.0.1; {script}",
        cwd=cwd,
    )
    return out


@pytest_twisted.ensureDeferred
async def test_lftp_mirror_a_nested_tree_up_and_back(ftp, tmp_path):
    src = tmp_path / "src"
    files = {
        "a.txt": b"alpha\n",
        "empty": b"",
        "d1/b.bin": payload(700_000),
        "d1/d2/c.bin": payload(1_500_000),
        "d1/d2/d3/deep name.txt": "caf\u00e9 \u2603\n".encode(),
        "z/\u00fcnicode-\u00e9.bin": payload(1000),
    }
    _tree(src, files)
    await lftp(ftp, f"mirror -R {src} /tree", tmp_path)
    back = tmp_path / "back"
    await lftp(ftp, f"mirror /tree {back}", tmp_path)
    assert _read_tree(back) == {k: sha256(v) for k, v in files.items()}


@pytest_twisted.ensureDeferred
async def test_lftp_reget_and_reput_resume(ftp, tmp_path):
    data = payload(3 * MiB)
    await ftp.env.upload("/r.bin", data)
    local = tmp_path / "r.bin"
    local.write_bytes(data[:MiB])
    sent = ftp.factory.stats.bytes_sent
    await lftp(ftp, f"reget /r.bin -o {local}", tmp_path)
    assert file_sha(local) == sha256(data)
    assert ftp.factory.stats.bytes_sent - sent == len(data) - MiB

    up = tmp_path / "u.bin"
    up.write_bytes(data)
    c = await ftp.client()
    assert (await c.stor("/u.bin", data[: 2 * MiB]))[0] == 226  # interrupted earlier
    received = ftp.factory.stats.bytes_received
    await lftp(ftp, f"reput {up} -o /u.bin", tmp_path)
    assert ftp.factory.stats.bytes_received - received == len(data) - 2 * MiB
    got, _ = await ftp.env.download("/u.bin")
    assert sha256(got) == sha256(data)


# -- aria2c ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_aria2c_segmented_download_with_four_connections(ftp, tmp_path):
    data = payload(8 * MiB + 333)
    await ftp.env.upload("/seg.bin", data)
    await run(
        "aria2c",
        "-q",
        "-x4",
        "-s4",
        "-k1M",
        "--file-allocation=none",
        "--ftp-user=alice",
        f"--ftp-passwd={PASSWORD}",
        "-d",
        str(tmp_path),
        "-o",
        "seg.bin",
        f"ftp://127.0.0.1:{ftp.port}/seg.bin",
    )
    assert file_sha(tmp_path / "seg.bin") == sha256(data)
    assert ftp.factory.stats.connections >= 2


async def run_status(tool: str, *args: str) -> int:
    exe = require_tool(tool)
    _out, _err, code = await getProcessOutputAndValue(exe, list(args), env=dict(os.environ))
    return code


class _Ended(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred = defer.Deferred()

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)


async def curl_cut_once(args: list[str], started, what: str) -> None:
    """Run curl with ``args`` (rate-limited so that it lasts seconds) and
    kill it once ``started()`` holds: a real interruption mid-file, at a
    moment picked by what the transfer did rather than by a clock (a
    ``--max-time 1`` could end before a loaded machine moved any byte)."""
    from twisted.internet import reactor

    exe = require_tool("curl")
    watcher = _Ended()
    proc = reactor.spawnProcess(watcher, exe, [exe, *args], env=dict(os.environ))
    try:
        await until(lambda: started() or watcher.ended.called, what)
        assert not watcher.ended.called, f"curl ended before {what}"
    finally:
        if not watcher.ended.called:
            proc.signalProcess("KILL")
        await watcher.ended


@pytest_twisted.ensureDeferred
async def test_curl_really_interrupted_download_then_resumed(ftp, tmp_path):
    data = payload(16 * MiB)
    await ftp.env.upload("/big.bin", data)
    local = tmp_path / "big.bin"
    url = f"ftp://127.0.0.1:{ftp.port}/big.bin"
    user = f"alice:{PASSWORD}"
    sent = ftp.factory.stats.bytes_sent
    # At 1 MB/s the 16 MiB take 16 s: curl is killed once some arrived.
    await curl_cut_once(
        ["-sS", "-u", user, "--limit-rate", "1M", "-o", str(local), url],
        lambda: local.exists() and local.stat().st_size > 0,
        "curl wrote some of the file",
    )
    partial = local.stat().st_size
    assert 0 < partial < len(data)
    # The server counts a download's bytes when it notices its data
    # connection is gone, which may come after curl's end reached us.
    await until(lambda: ftp.factory.stats.bytes_sent > sent, "the cut download to be counted")
    before = ftp.factory.stats.bytes_sent
    await run("curl", "-sS", "-u", user, "-C", "-", "-o", str(local), url)
    assert file_sha(local) == sha256(data)
    assert ftp.factory.stats.bytes_sent - before == len(data) - partial


@pytest_twisted.ensureDeferred
async def test_curl_really_interrupted_upload_then_resumed(ftp, tmp_path):
    data = payload(8 * MiB)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    url = f"ftp://127.0.0.1:{ftp.port}/up.bin"
    user = f"alice:{PASSWORD}"
    # At 1 MB/s the 8 MiB take 8 s: curl is killed once some arrived.
    await curl_cut_once(
        ["-sS", "-u", user, "--limit-rate", "1M", "-T", str(src), url],
        lambda: any(s.received > 0 for s in ftp.transfers.sessions.values()),
        "the server received some of the upload",
    )
    # The server commits what arrived when the data connection drops.
    await until(lambda: not ftp.transfers.sessions, "the cut upload to be let go of")
    first = ftp.factory.stats.bytes_received
    assert 0 < first < len(data)
    await run("curl", "-sS", "-u", user, "-C", "-", "-T", str(src), url)
    second = ftp.factory.stats.bytes_received - first
    assert second < len(data)
    assert first + second >= len(data)
    got, _ = await ftp.env.download("/up.bin")
    assert sha256(got) == sha256(data)


@pytest_twisted.ensureDeferred
async def test_lftp_mirror_r_twice_uploads_nothing_the_second_time(ftp, tmp_path):
    """lftp sets each uploaded file's time with MFMT (FEAT lists it) and
    compares size and time on the next run: unchanged files stay put."""
    src = tmp_path / "src"
    files = {
        "a.txt": b"alpha\n",
        "d1/b.bin": payload(300_000),
        "d1/d2/c.bin": payload(100_000),
    }
    _tree(src, files)
    old = 1_600_000_000.5  # a time with a fraction: MDTM/MLSD show whole seconds
    for rel in files:
        os.utime(src / rel, (old, old))
    await lftp(ftp, f"mirror -R {src} /m", tmp_path)
    assert ftp.factory.stats.uploads_committed == len(files)
    entry = await ftp.catalog.stat(ftp.env.user.root + "/m/d1/b.bin")
    assert int(entry.mtime) == int(old)  # MFMT set the local time
    await lftp(ftp, f"mirror -R {src} /m", tmp_path)
    assert ftp.factory.stats.uploads_committed == len(files)  # nothing again
    (src / "a.txt").write_bytes(b"alpha, changed\n")
    await lftp(ftp, f"mirror -R {src} /m", tmp_path)
    assert ftp.factory.stats.uploads_committed == len(files) + 1  # only the changed one
