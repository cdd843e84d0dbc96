"""``twistd -n wslocal`` as a real subprocess, reached with curl."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess

import pytest

from tests.support import LoggedChild, python_env, require_tool, sigint_as_ctrl_c, twistd_argv

pytestmark = pytest.mark.slow


#: The URLs wslocal prints once the cluster is ready, and their ports.
URLS = r"^\s+(FTP|HTTP):\s+(\S+)$"
URL_PORTS = r"^\s+(FTP|HTTP):\s+\S+:(\d+)/$"


class WsLocal:
    """A running ``twistd -n wslocal`` with its announced URLs.

    It listens on ports the system picks and prints them; it is ready when
    it printed both URLs and holds both ports itself.  A start that fails
    stops it, and ``stop`` reaps it whatever happens."""

    def __init__(self, data, log_path, env=None):
        argv = twistd_argv(
            "wslocal", "--data", str(data),
            "--ftp", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1",
        )  # fmt: skip
        self.child = LoggedChild(
            "wslocal", argv, log_path, env=env, cwd=data.parent, preexec_fn=sigint_as_ctrl_c
        )
        self.urls: dict[str, str] = {}

    def start(self, timeout: float = 60.0) -> WsLocal:
        self.child.start().wait_ports(URL_PORTS, {"FTP", "HTTP"}, timeout)
        self.urls = dict(re.findall(URLS, self.child.log(), re.M))
        return self

    def stop(self, sig=signal.SIGINT) -> bool:
        """Ctrl-C; True when it shut down cleanly (within 60 s, else it is
        killed).  twistd re-raises the signal at exit, so -SIGINT is a clean
        exit code too."""
        code = self.child.stop(sig)
        return code in (0, -sig) and "Server Shut Down." in self.child.log()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("curl"), "-sS", *args], capture_output=True, timeout=60)


def test_wslocal_serves_http_and_ftp_and_keeps_data_and_login_across_restarts(tmp_path):
    data = tmp_path / "wsfs-data"
    log_path = tmp_path / "wslocal.log"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()

    first = WsLocal(data, log_path).start()
    try:
        http, ftp = first.urls["HTTP"], first.urls["FTP"]
        put = curl("-T", str(src), "-w", "%{http_code}", http + "via-http.bin")
        assert put.stdout.endswith(b"201"), put
        up = curl("-T", str(src), ftp + "via-ftp.bin")
        assert up.returncode == 0, up
        for name in ("via-http.bin", "via-ftp.bin"):
            got = curl(http + name)
            assert hashlib.sha256(got.stdout).hexdigest() == digest
        got = curl(ftp + "via-http.bin")
        assert got.returncode == 0, got
        assert hashlib.sha256(got.stdout).hexdigest() == digest
        # The server's own endpoints are mounted under /-/.
        metrics = curl(http + "-/metrics").stdout.decode()
        assert "wsfs_" in metrics
        # The maintenance service's GC counts what it purges there too.
        assert "\nwsfs_gc_purged_uploads_total 0.0\n" in metrics
        status = curl("-o", "/dev/null", "-w", "%{http_code}", http + "-/status")
        assert status.stdout == b"200", "the demo user administers the local cluster"
        anonymous = re.sub(r"//[^@]+@", "//", http)
        status = curl("-o", "/dev/null", "-w", "%{http_code}", anonymous + "-/status")
        assert status.stdout == b"401"
        tus = curl("-X", "OPTIONS", "-D", "-", "-o", "/dev/null", http + "-/uploads/")
        assert b"Tus-Version: 1.0.0" in tus.stdout
    finally:
        assert first.stop(), first.child.log()
    login = (data / "demo-login.txt").read_text().strip()
    assert stat_mode(data / "demo-login.txt") == 0o600

    second = WsLocal(data, log_path).start()
    try:
        assert login.split(":")[1] in second.urls["HTTP"], "the demo login is reused"
        got = curl(second.urls["HTTP"] + "via-ftp.bin")
        assert hashlib.sha256(got.stdout).hexdigest() == digest, "the data is reused"
    finally:
        assert second.stop()


def test_wslocal_starts_after_the_demo_user_was_deleted_with_its_files_kept(tmp_path):
    """``wsfs user del demo --keep-files`` leaves files under /demo, which
    a plain ``user add`` refuses to hand over: wslocal re-adds its demo
    user adopting them, says so once, and serves them under the new login."""
    import sys

    from tests.support import python_env

    data = tmp_path / "wsfs-data"
    src = tmp_path / "kept.txt"
    src.write_bytes(b"kept across the deletion\n")
    first = WsLocal(data, tmp_path / "first.log").start()
    try:
        put = curl("-T", str(src), "-w", "%{http_code}", first.urls["HTTP"] + "kept.txt")
        assert put.stdout.endswith(b"201"), put
    finally:
        assert first.stop(), first.child.log()
    catalog = f"sqlite:///{data / 'catalog.sqlite'}"
    deleted = subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "--catalog", catalog,
         "user", "del", "demo", "--keep-files"],
        capture_output=True, text=True, env=python_env(), timeout=60,
    )  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr

    second = WsLocal(data, tmp_path / "second.log").start()
    try:
        log = second.child.log()
        adopted = [line for line in log.splitlines() if "adopting the files under /demo" in line]
        assert len(adopted) == 1, log
        got = curl(second.urls["HTTP"] + "kept.txt")
        assert got.stdout == src.read_bytes()
    finally:
        assert second.stop(), second.child.log()


def stat_mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_the_socket_folder_a_killed_wslocal_left_is_taken_back_by_the_next_start(tmp_path):
    """A data folder whose path is too long for a UNIX socket puts the
    storage servers' sockets in a private folder of the temporary folder,
    which a stop removes and a SIGKILL cannot: the next start on the same
    data takes that folder back (not one more per killed run), serves
    through it, and removes it at its own stop."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    data = tmp_path / ("d" * 120) / "wsfs-data"
    data.parent.mkdir()
    log_path = tmp_path / "wslocal.log"
    env = python_env({"TMPDIR": str(tmp)})
    first = WsLocal(data, log_path, env=env).start()
    try:
        left = sorted(tmp.glob("wslocal-*"))
        assert len(left) == 1 and (left[0] / "s1.sock").is_socket(), left
    finally:
        assert first.child.stop(signal.SIGKILL) == -signal.SIGKILL
    assert (left[0] / "s1.sock").is_socket(), "a SIGKILL leaves the folder and its sockets"
    second = WsLocal(data, log_path, env=env).start()
    try:
        # Its data directory's locks make it the only wslocal of its
        # name: the killed one's is taken over without watching its lease.
        said = second.child.log()
        assert "watching its lease" not in said and "its previous life (host " in said, said
        assert sorted(tmp.glob("wslocal-*")) == left
        src = tmp_path / "src.bin"
        src.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
        put = curl("-T", str(src), "-w", "%{http_code}", second.urls["HTTP"] + "after-kill.bin")
        assert put.stdout.endswith(b"201"), put
        got = curl(second.urls["HTTP"] + "after-kill.bin")
        assert hashlib.sha256(got.stdout).digest() == hashlib.sha256(src.read_bytes()).digest()
    finally:
        assert second.stop(), second.child.log()
    assert not list(tmp.glob("wslocal-*")), "a clean stop removes it"
