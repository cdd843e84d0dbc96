"""LIST/NLST arguments: ``ls`` options against names that start with '-'.

Only whole words of letters (``-la``) are options
(``listing.parse_list_argument``); ``-old*``, ``-la/`` and ``-2024-backup``
are names.  The old pattern ate every leading ``-[A-Za-z0-9]+``, so
``NLST -old*`` listed the whole directory, and an ``mdelete -old*`` would
have deleted files the pattern does not match.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.ftp_env import FTPEnv
from wsfront.ftp.factory import FTPSettings


@pytest.fixture
def ftp(tmp_path):
    from twisted.internet import reactor

    env = FTPEnv(reactor, tmp_path, FTPSettings(data_timeout=10.0))
    pytest_twisted.blockon(defer.ensureDeferred(env.start()))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))


@pytest_twisted.ensureDeferred
async def test_names_that_start_with_a_dash_are_not_taken_for_options(ftp):
    for name in ["-old1.txt", "-old2.txt", "keep1.txt", "keep2.txt"]:
        await ftp.env.upload(f"/{name}", b"x")
    for directory in ["-la", "-2024-backup"]:
        await ftp.transfers.mkdir(ftp.env.user, f"/{directory}")
        await ftp.env.upload(f"/{directory}/inside-{directory[1:]}.txt", b"y")
    c = await ftp.client()
    assert sorted((await c.listing("NLST", "-old*")).split()) == ["-old1.txt", "-old2.txt"]
    assert (await c.listing("NLST", "-la/")).split() == ["inside-la.txt"]
    assert (await c.listing("NLST", "-2024-backup")).split() == ["inside-2024-backup.txt"]
    assert "inside-la.txt" in await c.listing("LIST", "-la/")
    # Options are still options: the whole cwd, long form.
    listed = await c.listing("LIST", "-la")
    assert all(name in listed for name in ["keep1.txt", "-old1.txt", "-2024-backup"])
    assert len((await c.listing("NLST", "-a -l")).split()) == 6


async def listed(c, line: str) -> str:
    """What ``line`` (sent exactly: FTPClient.listing strips the end) lists."""
    peer = await c.data_connection(await c.epsv())
    code, text = await c.cmd(line)
    assert code == 150, (line, code, text)
    data = await peer.done
    assert (await c.reply())[0] == 226
    return data.decode("utf-8")


@pytest_twisted.ensureDeferred
async def test_names_with_spaces_at_either_end_are_listed_as_sent(ftp):
    """LIST/NLST take the path as sent, as RETR and MLSD do: stripped,
    ``trail `` and `` lead`` named nothing (550), so ``ls 'trail '`` in
    lftp failed on a directory it had just made."""
    await ftp.transfers.mkdir(ftp.env.user, "/trail ")
    await ftp.env.upload("/trail /inside.txt", b"x")
    await ftp.env.upload("/ lead", b"y")
    c = await ftp.client()
    assert await listed(c, "NLST trail ") == "inside.txt\r\n"
    assert "inside.txt" in await listed(c, "LIST trail ")
    assert "inside.txt" in await listed(c, "LIST -la trail ")
    assert await listed(c, "NLST  lead") == " lead\r\n"
    assert (await listed(c, "LIST  lead")).endswith("  lead\r\n")
    # Spaces alone name no path: the cwd is listed.
    assert sorted((await listed(c, "NLST   ")).split("\r\n")) == ["", " lead", "trail "]
