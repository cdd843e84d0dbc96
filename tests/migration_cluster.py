"""Three ``twistd -n wsstorage`` and two ``twistd -n wsfront`` processes on one
catalog (SQLite file or a PostgreSQL schema), for session-migration tests.

Front ends are killed, frozen and restarted at exact moments through
failpoints (``WSFS_FAILPOINTS`` in a front end's environment); clients are
real (curl, lftp, tuspy) and run against either front end.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.storage_procs import StorageProcess
from tests.support import RUNNING, log_since, python_env, start_all, twistd_argv, wait_ports

USER, PASSWORD = "mia", "mia-password-42"

#: Port 0 on 127.0.0.1: the system picks, the log says which.
ANY_PORT = "tcp:0:interface=127.0.0.1"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(predicate, what: str, timeout: float = 60.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling a condition, not a guessed delay


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


class HeldPut:
    """An HTTP PUT of ``data`` (its whole length declared) whose body is
    sent in two parts: ``first`` bytes at once, the rest only when the test
    says (``finish``).

    A failpoint at a checkpoint (``kill@N``, ``stop@N``, N < ``first``)
    then fires while the upload still streams, whatever the load: the
    bytes held back keep it open, and the front end checkpoints what it
    got (at each MiB, and every 2 s).  A client that sends the whole body
    at a rate (curl ``--limit-rate``) can end it before a slow first
    checkpoint is recorded (a loaded machine's, outlasting the 0.75 s of
    12 MiB at 16 MB/s): the upload is committed with no later checkpoint
    and the failpoint never fires.  curl cannot hold back a body of a
    declared length (from a pipe it sends it chunked): a socket does.

    The first part is sent by a thread: the front end may freeze or die
    before it has read all of it."""

    def __init__(self, port: int, path: str, data: bytes, first: int) -> None:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Basic {token}\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        )
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.rest = data[first:]
        self._sender = threading.Thread(
            target=self._send, args=(head.encode() + data[:first],), daemon=True
        )
        self._sender.start()

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # the front end died or answered early: ``finish`` reads what it said

    def finish(self) -> int | None:
        """Send the rest (as much as the server takes before it answers or
        closes) and return the status of its answer, None if none came."""
        self._sender.join(120)
        self._send(self.rest)
        received = b""
        try:
            while chunk := self.sock.recv(65536):
                received += chunk
        except OSError:
            pass
        finally:
            self.close()
        m = re.match(rb"HTTP/1\.[01] (\d{3}) ", received)
        return int(m.group(1)) if m else None

    def close(self) -> None:
        """Drop the connection (a sender still blocked in it returns)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._sender.join(120)


class FrontEnd:
    """One ``twistd -n wsfront`` child with FTP and HTTP on 127.0.0.1.

    It asks for port 0 and the ports it got are read back from the log of
    the run (``ftp_port``, ``http_port``: a restart gets new ones), so no
    other process can take a port before it binds it."""

    def __init__(self, cluster: MigrationCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.ftp_port = 0  # known once started
        self.http_port = 0
        self.log_path = cluster.tmp / f"{name}.log"
        self.fp_log = cluster.tmp / f"{name}.failpoints"
        self.proc: subprocess.Popen | None = None
        self.log_file = None
        self._log_offset = 0  # where the current run's part of the log begins

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc is not None else None
        return f"<FrontEnd {self.name} pid={pid} ftp={self.ftp_port} http={self.http_port}>"

    @property
    def http(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.http_port}"

    @property
    def ftp(self) -> str:
        return f"ftp://{USER}:{PASSWORD}@127.0.0.1:{self.ftp_port}"

    def start(self, failpoints: str | None = None, *extra_args: str) -> FrontEnd:
        """Start and wait until this child serves FTP and HTTP on ports it
        holds itself, as this run's log names them; if it never does (it
        exits, or a minute passes), stop it and raise."""
        c = self.cluster
        argv = twistd_argv(
            "wsfront", "--name", self.name, "--catalog", c.catalog_url,
            "--secret-file", str(c.tmp / "secret"), "--replicas", "2",
            "--ftp", ANY_PORT, "--http", ANY_PORT, "--checkpoint-mib", "1",
            *[a for s in c.storage for a in ("--storage", f"{s.name}={s.endpoint}")],
            *extra_args,
        )  # fmt: skip
        extra = {}
        if failpoints:
            extra = {"WSFS_FAILPOINTS": failpoints, "WSFS_FAILPOINT_LOG": str(self.fp_log)}
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        if self.log_file is not None:
            self.log_file.close()  # a restart: the previous run's
        self.log_file = open(self.log_path, "a")  # noqa: SIM115 (closed in stop)
        try:
            self.proc = subprocess.Popen(
                argv, env=python_env(extra), stdout=self.log_file, stderr=subprocess.STDOUT,
                cwd=c.tmp,
            )  # fmt: skip
            RUNNING.add(self)
            serves = rf"wsfront {re.escape(self.name)} serves (ftp|http) on .*?port=(\d+)"
            ports = wait_ports(self.proc, self.run_log, serves, {"ftp", "http"})
        except BaseException:
            self.stop()
            raise
        self.ftp_port, self.http_port = ports["ftp"], ports["http"]
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def run_log(self) -> str:
        """The complete lines this run added to the log."""
        return log_since(self.log_path, self._log_offset)

    def wait_failpoint(self, name: str, timeout: float = 60.0) -> int:
        """Wait for failpoint ``name`` to fire; return the count it fired at."""

        def fired() -> bool:
            return self.fp_log.exists() and f"failpoint {name} fired" in self.fp_log.read_text()

        wait_until(fired, f"failpoint {name} on {self.name}", timeout)
        m = re.search(rf"failpoint {re.escape(name)} fired count=(\S+)", self.fp_log.read_text())
        return int(m.group(1)) if m.group(1) != "None" else -1

    def wait_killed(self) -> None:
        assert self.proc.wait(60) == -signal.SIGKILL, self.log()[-3000:]

    def wait_stopped(self) -> None:
        wait_until(lambda: process_state(self.proc.pid) == "T", f"{self.name} to stop")

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Terminate the child (SIGKILL after 30 s), reap it; idempotent."""
        RUNNING.discard(self)
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    def resumed_at(self) -> list[int]:
        """Offsets this front end resumed uploads at (from its log)."""
        return [int(x) for x in re.findall(r"resuming at (\d+)", self.log())]


class MigrationCluster:
    """Storage processes, a catalog with user ``mia``, front ends A and B."""

    def __init__(self, tmp: Path, catalog_url: str) -> None:
        self.tmp = tmp
        self.catalog_url = catalog_url
        self.storage = [StorageProcess(tmp, f"s{i}") for i in (1, 2, 3)]
        self.a = FrontEnd(self, "fe-a")
        self.b = FrontEnd(self, "fe-b")

    def start(self) -> MigrationCluster:
        """Start the storage processes and add user ``mia``; if anything
        fails, stop every process already started before raising (the
        fixture's teardown does not run when its setup raises)."""
        try:
            start_all(self.storage)
            self.wsfs("user", "add", USER, stdin=PASSWORD + "\n")
        except BaseException:
            self.stop()
            raise
        return self

    def wsfs(self, *args: str, stdin: str = "") -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "wsfront.cli", "--catalog", self.catalog_url, *args],
            input=stdin, capture_output=True, text=True, env=python_env(), timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def stop(self) -> None:
        for fe in (self.a, self.b):
            fe.stop()
        for s in self.storage:
            s.stop()
