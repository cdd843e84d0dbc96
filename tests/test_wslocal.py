"""``twistd -n wslocal`` as a real subprocess, reached with curl."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time

import pytest

from tests.support import python_env, require_tool, twistd_argv

pytestmark = pytest.mark.slow


class WsLocal:
    """A running ``twistd -n wslocal`` with its announced URLs."""

    def __init__(self, data, log_path):
        self.data = data
        self.log_path = log_path
        self.proc = None
        self.urls: dict[str, str] = {}

    def start(self, timeout: float = 60.0) -> WsLocal:
        self.offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        argv = twistd_argv(
            "wslocal", "--data", str(self.data),
            "--ftp", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1",
        )  # fmt: skip
        self.log = open(self.log_path, "a")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv, env=python_env(), stdout=self.log, stderr=subprocess.STDOUT,
            cwd=self.data.parent,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text()[self.offset :]
            found = dict(re.findall(r"^\s+(FTP|HTTP):\s+(\S+)$", text, re.M))
            if "HTTP" in found and "FTP" in found and text.count("cluster ready") >= 1:
                self.urls = found
                return self
            assert self.proc.poll() is None, f"wslocal exited:\n{text}"
            time.sleep(0.05)  # polling the log for the announcement
        raise AssertionError(f"wslocal did not start:\n{self.log_path.read_text()}")

    def stop(self, sig=signal.SIGINT) -> bool:
        """Ctrl-C; True when it shut down cleanly.  twistd re-raises the
        signal at exit, so -SIGINT is a clean exit code too."""
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # never leave a cluster running behind the test
            self.proc.wait()
            raise
        finally:
            self.log.close()
        return code in (0, -sig) and "Server Shut Down." in self.log_path.read_text()[self.offset :]


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
        status = curl("-o", "/dev/null", "-w", "%{http_code}", http + "-/status")
        assert status.stdout == b"200", "the demo user administers the local cluster"
        anonymous = re.sub(r"//[^@]+@", "//", http)
        status = curl("-o", "/dev/null", "-w", "%{http_code}", anonymous + "-/status")
        assert status.stdout == b"401"
        tus = curl("-X", "OPTIONS", "-D", "-", "-o", "/dev/null", http + "-/uploads/")
        assert b"Tus-Version: 1.0.0" in tus.stdout
    finally:
        assert first.stop(), log_path.read_text()
    login = (data / "demo-login.txt").read_text().strip()
    assert stat_mode(data / "demo-login.txt") == 0o600

    second = WsLocal(data, log_path).start()
    try:
        assert login.split(":")[1] in second.urls["HTTP"], "the demo login is reused"
        got = curl(second.urls["HTTP"] + "via-ftp.bin")
        assert hashlib.sha256(got.stdout).hexdigest() == digest, "the data is reused"
    finally:
        assert second.stop()


def stat_mode(path) -> int:
    return os.stat(path).st_mode & 0o777
