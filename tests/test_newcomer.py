"""What a newcomer does: a fresh venv, ``pip install .``, ``twistd -n wslocal``,
then curl up and down.  Proves the wheel carries the twistd plugins (the
``twisted.plugins`` namespace portion) and the ``wsfs`` console script, and
that the addresses the README sends a newcomer to are wslocal's defaults."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from tests.support import REPO, LoggedChild, require_tool, sigint_as_ctrl_c
from tests.test_wslocal import URL_PORTS, URLS

#: The README's quick start: "FTP on 127.0.0.1:2121 and HTTP on 127.0.0.1:8080".
README_ADDRESSES = r"FTP on\s+([\d.]+):(\d+)\s+and HTTP on\s+([\d.]+):(\d+)"
#: Its curl examples: ``http://demo:PASSWORD@127.0.0.1:8080/...`` (not https).
README_URLS = r"\b(ftp|http)://[^\s@/]*@([\d.]+):(\d+)/"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.pop("WSFS_FAILPOINTS", None)
    return env


def test_the_readme_sends_newcomers_to_wslocals_default_ports():
    """The quick-start test below runs wslocal on ports the system picks
    (2121 and 8080 may be taken on a test host), so this checks, without
    binding anything, that the endpoints ``twistd wslocal`` listens on when
    given none are the addresses the README names and its curl lines use."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    said = re.search(README_ADDRESSES, readme)
    assert said, "the README no longer says where wslocal listens"
    promised = {"ftp": (said[1], int(said[2])), "http": (said[3], int(said[4]))}
    assert promised == {"ftp": ("127.0.0.1", 2121), "http": ("127.0.0.1", 8080)}
    used = {(scheme, host, int(port)) for scheme, host, port in re.findall(README_URLS, readme)}
    assert used == {(scheme, *address) for scheme, address in promised.items()}

    from twisted.plugins.wsfront_plugin import wslocal

    options = wslocal.options()
    options.parseOptions([])
    reactor = MemoryReactor()  # records what would be listened on
    for scheme in promised:
        serverFromString(reactor, options[scheme]).listen(Factory())
    listened = [(interface, port) for port, _, _, interface in reactor.tcpServers]
    assert listened == list(promised.values())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fresh_venv_pip_install_then_wslocal_serves_files(tmp_path):
    curl = require_tool("curl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(REPO)],
        capture_output=True, text=True, env=clean_env(), timeout=540,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-3000:]
    twistd = str(venv / "bin" / "twistd")
    help_text = subprocess.run(
        [twistd, "--help"], capture_output=True, text=True, env=clean_env(), cwd=tmp_path
    ).stdout
    for plugin in ("wsstorage", "wsfront", "wslocal"):
        assert re.search(rf"^\s+{plugin}\s", help_text, re.M), help_text
    wsfs = subprocess.run([str(venv / "bin" / "wsfs"), "--help"], capture_output=True, text=True)
    assert wsfs.returncode == 0 and "user" in wsfs.stdout

    # Ports the system picks, read back from what wslocal prints: the
    # documented 2121 and 8080 may be in use on a test host.
    wslocal = LoggedChild(
        "wslocal",
        [twistd, "-n", "--pidfile=", "wslocal", "--ftp", "tcp:0:interface=127.0.0.1",
         "--http", "tcp:0:interface=127.0.0.1"],
        tmp_path / "wslocal.log", env=clean_env(), cwd=tmp_path, preexec_fn=sigint_as_ctrl_c,
    )  # fmt: skip
    try:
        wslocal.start().wait_ports(URL_PORTS, {"HTTP"})
        url = dict(re.findall(URLS, wslocal.log(), re.M))["HTTP"]
        assert (tmp_path / "wsfs-data" / "catalog.sqlite").exists(), "default --data"
        payload = os.urandom(1 << 20)
        (tmp_path / "up.bin").write_bytes(payload)
        put = subprocess.run([curl, "-sS", "-T", str(tmp_path / "up.bin"), url + "up.bin"],
                             capture_output=True, timeout=60)  # fmt: skip
        assert put.returncode == 0, put
        got = subprocess.run([curl, "-sS", url + "up.bin"], capture_output=True, timeout=60)
        assert hashlib.sha256(got.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
    finally:
        code = wslocal.stop(signal.SIGINT)
    assert code != -signal.SIGKILL, f"Ctrl-C did not stop wslocal in 60 s:\n{wslocal.log()}"
