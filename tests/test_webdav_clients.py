"""Real WebDAV clients against wsfront's site on 127.0.0.1: rclone, cadaver.

rclone's webdav remote lists with PROPFIND (Depth 1) and copies with
MKCOL/PUT/GET; cadaver checks OPTIONS' ``DAV`` header before anything.
Before PROPFIND existed, rclone failed with ``method not allowed: 405`` and
cadaver with ``not WebDAV-enabled?``.  Every copied byte is compared.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue

from tests.http_env import HttpEnv, payload
from tests.support import require_tool
from tests.transfer_env import PASSWORD

#: A small tree with the names that trip encoders: spaces, XML's specials,
#: percent signs, non-ASCII, and an empty file.
TREE = {
    "top.txt": b"top level\n",
    "a dir/b <&> c.bin": payload(70_000),
    "a dir/100% sure.txt": b"",
    "a dir/deeper/ünïcode ✓.txt": "ünïcode\n".encode(),
    "other/x.json": b'{"x": 1}\n',
}


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = pytest_twisted.blockon(defer.ensureDeferred(HttpEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def write_tree(root, tree: dict[str, bytes]) -> None:
    for name, data in tree.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def read_tree(root) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


async def run(env, argv: list[str], home, stdin: bytes | None = None):
    """Run a client with its own HOME (config, .netrc); (out, err, code)."""
    environ = dict(os.environ, HOME=str(home))
    if stdin is None:
        return await getProcessOutputAndValue(argv[0], argv[1:], env=environ, path=str(home))
    # getProcessOutputAndValue has no stdin: cadaver reads its commands there.
    return await getProcessOutputAndValue(
        "/bin/sh",
        ["-c", 'printf "%s" "$1" | "$0" "$2"', argv[0], stdin.decode(), argv[1]],
        env=environ,
        path=str(home),
    )


async def rclone(env, home, *args: str):
    binary = require_tool("rclone")
    return await run(env, [binary, "--config", str(home / "rclone.conf"), *args], home)


@pytest_twisted.ensureDeferred
async def test_rclone_copies_a_tree_up_lists_it_and_copies_it_back(env):
    home = env.tmp_path / "home"
    home.mkdir()
    out, err, code = await rclone(
        env, home, "config", "create", "w", "webdav",
        f"url={env.base}/", "vendor=other", "user=alice", f"pass={PASSWORD}",
    )  # fmt: skip
    assert code == 0, err
    local = env.tmp_path / "local"
    write_tree(local, TREE)
    out, err, code = await rclone(env, home, "copy", str(local), "w:up")
    assert code == 0, err
    for name, data in TREE.items():
        got, _ = await env.transfer.download("/up/" + name)
        assert got == data, name
    out, err, code = await rclone(env, home, "lsf", "-R", "w:")
    assert code == 0, err
    dirs = {"up/", "up/a dir/", "up/a dir/deeper/", "up/other/"}
    assert set(out.decode().splitlines()) == dirs | {"up/" + n for n in TREE}
    out, err, code = await rclone(env, home, "lsl", "w:up/a dir")
    assert code == 0, err
    assert f"{len(TREE['a dir/b <&> c.bin'])} " in out.decode()
    back = env.tmp_path / "back"
    out, err, code = await rclone(env, home, "copy", "w:up", str(back))
    assert code == 0, err
    assert read_tree(back) == read_tree(local)
    out, err, code = await rclone(env, home, "check", str(local), "w:up")
    assert code == 0, err
    # A change rclone must notice by size: check now fails.
    await env.upload("/up/top.txt", b"changed, and longer\n")
    out, err, code = await rclone(env, home, "check", str(local), "w:up")
    assert code != 0
    assert b"top.txt" in err


@pytest_twisted.ensureDeferred
async def test_rclone_lists_a_directory_larger_than_a_catalog_page(env):
    import attrs

    env.site.context.settings = attrs.evolve(env.site.context.settings, listing_page=7)
    home = env.tmp_path / "home"
    home.mkdir()
    names = [f"f{i:03d}" for i in range(30)]
    await env.request("MKCOL", "/many")
    for name in names:
        await env.upload(f"/many/{name}", name.encode())
    obscured = await rclone_obscure(env, home)
    remote = f":webdav,url='{env.base}/',vendor=other,user=alice,pass={obscured}:many"
    out, err, code = await rclone(env, home, "lsf", remote)
    assert code == 0, err
    assert out.decode().splitlines() == names


async def rclone_obscure(env, home) -> str:
    out, err, code = await rclone(env, home, "obscure", PASSWORD)
    assert code == 0, err
    return out.decode().strip()


@pytest_twisted.ensureDeferred
async def test_cadaver_lists_a_collection(env):
    cadaver = require_tool("cadaver")
    home = env.tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    # Quoted: the password has spaces.
    netrc.write_text(f'machine 127.0.0.1\nlogin alice\npassword "{PASSWORD}"\n')
    netrc.chmod(0o600)
    await env.request("MKCOL", "/docs")
    await env.upload("/docs/report <1>.txt", b"x" * 1234)
    await env.request("MKCOL", "/docs/sub dir")
    out, err, code = await run(env, [cadaver, f"{env.base}/docs/"], home, stdin=b"ls\n")
    text = out.decode()
    assert code == 0, (text, err)
    assert "Listing collection `/docs/': succeeded." in text, text
    listed = [line.split() for line in text.splitlines() if line.startswith(("Coll:", "     "))]
    assert listed == [
        ["Coll:", "sub", "dir", "0", *listed[0][4:]],
        ["report", "<1>.txt", "1234", *listed[1][3:]],
    ], text
