"""What a newcomer does: a fresh venv, ``pip install .``, ``twistd -n wslocal``,
then curl up and down.  Proves the wheel carries the twistd plugins (the
``twisted.plugins`` namespace portion) and the ``wsfs`` console script."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys

import pytest

from tests.support import REPO, LoggedChild, require_tool, sigint_as_ctrl_c
from tests.test_wslocal import URL_PORTS, URLS

pytestmark = pytest.mark.slow


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.pop("WSFS_FAILPOINTS", None)
    return env


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
