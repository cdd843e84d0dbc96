"""Names are chosen by whoever uploads a file or is given an account;
``wsfs`` shows them to the operator with their control characters escaped
(ESC, BEL, DEL, C1 would otherwise drive the terminal: retitle it, recolour
it, rewrite what it shows), and gives them unchanged in ``--json``."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest_twisted

from tests.support import python_env
from wsfront.catalog import open_catalog

#: A name that retitles an xterm, rings the bell, turns the text red, and
#: holds a DEL, a tab and a C1 CSI.
HOSTILE = "evil\x1b]0;pwned\x07\x1b[31mRED\x7f\t\x9bend"
SHOWN = "evil\\x1b]0;pwned\\x07\\x1b[31mRED\\x7f\\x09\\x9bend"
#: What must not reach a terminal: C0 controls but a newline, DEL, C1.
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def wsfs(catalog: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, *args],
        input=stdin, capture_output=True, text=True, env=python_env(), timeout=60,
    )  # fmt: skip


def clean(text: str) -> str:
    assert not CONTROL.search(text), repr(text)
    return text


@pytest_twisted.ensureDeferred
async def test_ls_user_list_and_messages_escape_control_characters(tmp_path):
    from twisted.internet import reactor

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    user = "u" + HOSTILE.replace("\t", "")
    user_shown = "u" + SHOWN.replace("\\x09", "")
    catalog = open_catalog(reactor, url)
    try:
        await catalog.add_user("ann", "pw-123456")
        await catalog.mkdir("/ann/" + HOSTILE)
    finally:
        await catalog.close()

    listing = wsfs(url, "ls", "/ann")
    assert listing.returncode == 0, listing.stderr
    assert SHOWN + "/" in clean(listing.stdout)
    [entry] = json.loads(wsfs(url, "--json", "ls", "/ann").stdout)
    assert entry["name"] == HOSTILE

    added = wsfs(url, "user", "add", user, stdin="pw-123456\n")
    assert added.returncode == 0, added.stderr
    assert f"user {user_shown} added" in clean(added.stdout)
    users = wsfs(url, "user", "list")
    assert user_shown in clean(users.stdout)
    assert user in [u["name"] for u in json.loads(wsfs(url, "--json", "user", "list").stdout)]

    missing = wsfs(url, "ls", "/ann/" + HOSTILE + "x")
    assert missing.returncode == 1 and SHOWN + "x" in clean(missing.stderr), missing.stderr


#: A name holding a line end and what follows it, made to look like a line
#: of wsfs's own.
FORGED = "x\nwsfs: all replicas verified"


@pytest_twisted.ensureDeferred
async def test_a_line_end_in_a_name_cannot_forge_a_line(tmp_path):
    """Messages keep their own line structure, but a LF in a name put into
    one is escaped like any control character (it was kept).  File and
    user names cannot hold one (the catalog refuses it); a storage
    server's name, or one typed on the command line, can."""
    from twisted.internet import reactor

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    catalog = open_catalog(reactor, url)
    try:
        await catalog.add_user("ann", "pw-123456")
        await catalog.register_node(FORGED, "tcp:127.0.0.1:1")
        await catalog.set_node_draining(FORGED, True)
    finally:
        await catalog.close()
    shown = "x\\x0awsfs: all replicas verified"

    undrained = wsfs(url, "undrain", FORGED)
    assert undrained.returncode == 0, undrained.stderr
    assert undrained.stdout.splitlines() == [
        f"{shown} is no longer draining: it takes new replicas again"
    ], undrained.stdout

    unknown = wsfs(url, "undrain", "no" + FORGED)
    assert unknown.returncode == 1, unknown.stderr
    assert len(unknown.stderr.splitlines()) == 1, unknown.stderr


#: "evil", a right-to-left override, "txt.exe", a line separator, "x":
#: shown raw, it reads as "evilexe.txt" and breaks the line in two.
SPOOFING = "evil\u202etxt.exe\u2028x\u2066y\u2069\u200f"
SPOOFING_SHOWN = "evil\\u202etxt.exe\\u2028x\\u2066y\\u2069\\u200f"


@pytest_twisted.ensureDeferred
async def test_ls_escapes_bidirectional_controls_and_line_separators(tmp_path):
    """A name can read as another (a right-to-left override turns
    "evil<RLO>txt.exe" into "evilexe.txt" on screen) or break a line (the
    Unicode line separator): both are shown escaped, as ``\\uNNNN``, and
    given unchanged in ``--json``; other non-ASCII letters stay as they are."""
    from twisted.internet import reactor

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    catalog = open_catalog(reactor, url)
    try:
        await catalog.add_user("ann", "pw-123456")
        await catalog.mkdir("/ann/" + SPOOFING)
        await catalog.mkdir("/ann/été-日本")
    finally:
        await catalog.close()

    listing = wsfs(url, "ls", "/ann")
    assert listing.returncode == 0, listing.stderr
    assert SPOOFING_SHOWN + "/" in listing.stdout
    assert "été-日本/" in listing.stdout
    assert not re.search("[\u202a-\u202e\u2066-\u2069\u2028\u2029\u200e\u200f]", listing.stdout)
    names = {entry["name"] for entry in json.loads(wsfs(url, "--json", "ls", "/ann").stdout)}
    assert names == {SPOOFING, "été-日本"}
