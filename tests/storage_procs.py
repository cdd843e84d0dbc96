"""Real storage servers for integration tests: in-process and as subprocesses.

``StorageProcess`` runs ``twistd -n wsstorage`` in a child process with its
log in a file.  The server listens on a port the kernel picks; the harness
learns it from the server's log line and checks that the child itself holds
that listening socket (watching the child so a crash at startup fails fast
instead of timing out).  A start that fails stops the child.  Given
``tls=make_tls(...)`` it listens with TLS and ``endpoint`` is the ``tls:``
client string that trusts the test CA.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer

from tests.storage_tls import TlsFiles
from tests.support import RUNNING, listening_ports, log_since, python_env, stop_process, twistd_argv
from wsstorage.client import StorageClient


def twistd_storage_argv(*args: str) -> list[str]:
    return twistd_argv("wsstorage", *args)


class StorageProcess:
    """One ``twistd -n wsstorage`` child on 127.0.0.1."""

    def __init__(
        self,
        tmp: Path,
        name: str = "s1",
        env: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.tmp = tmp
        self.tls = tls
        self.name = name
        self.data = tmp / f"data-{name}"
        self.secret_file = tmp / "secret"
        self.log_path = tmp / f"{name}.log"
        self.extra_env = env or {}
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0  # where this run's part of the log begins

    @property
    def endpoint(self) -> str:
        """The client endpoint string front ends register (TLS if started so)."""
        if self.tls is not None:
            return self.tls.connect(self.port)
        return f"tcp:127.0.0.1:{self.port}"

    @property
    def listen(self) -> str:
        if self.tls is not None:
            return self.tls.listen(self.port)
        return f"tcp:{self.port}:interface=127.0.0.1"

    def start(
        self, timeout: float = 30.0, extra: tuple[str, ...] = (), port: int = 0
    ) -> StorageProcess:
        """Start the child and wait until *it* listens; return self.

        With ``port`` 0 (the default) the server binds a port the kernel
        picks and names it in its log, so no other process can hold it (a
        port picked beforehand with ``free_port`` can be taken in between).
        A fixed ``port`` that another process holds fails the start: the
        child exits with "Address already in use".  Whatever fails, the
        child is stopped before the AssertionError, so none is left behind.
        """
        self.port = port
        argv = twistd_storage_argv(
            "--listen",
            self.listen,
            "--data",
            str(self.data),
            "--name",
            self.name,
            "--secret-file",
            str(self.secret_file),
            *extra,
        )
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.tmp,
                env=python_env(self.extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        RUNNING.add(self)
        try:
            self.wait_listening(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_listening(self, timeout: float) -> None:
        """Wait for this run's "listening on" log line and for the child to
        hold that listening socket itself (``listening_ports``): a connect
        would also succeed on a port some other process listens on."""
        assert self.proc is not None
        listening = re.compile(rf"wsstorage {re.escape(self.name)} listening on .*?port=(\d+)")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"wsstorage exited with {self.proc.returncode}:\n{self.log()}")
            m = listening.search(self.run_log())
            if m is not None:
                port = int(m.group(1))
                if self.port not in (0, port):
                    raise AssertionError(f"wsstorage listens on {port}, not {self.port}")
                if port in listening_ports(self.proc.pid):
                    self.port = port
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"wsstorage did not listen:\n{self.log()}")
            time.sleep(0.02)  # polling interval of the log, not a synchronisation

    def secret(self) -> bytes:
        return self.secret_file.read_bytes().strip()

    def client(self, reactor: Any, **kw: Any) -> StorageClient:
        return StorageClient(reactor, self.name, self.endpoint, self.secret(), **kw)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def run_log(self) -> str:
        """The complete lines this run added to the log."""
        return log_since(self.log_path, self._log_offset)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Terminate the child (SIGKILL after 10 s) and reap it; idempotent."""
        RUNNING.discard(self)
        if self.proc is not None:
            stop_process(self.proc, timeout=10)

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc is not None else None
        return f"<StorageProcess {self.name} pid={pid} port={self.port}>"


class DrainConsumer:
    """An IConsumer that hashes what it gets instead of keeping it."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.count = 0
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.count += len(data)


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking test bytes."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    reps = size // len(block) + 1
    return (block * reps)[:size]


@defer.inlineCallbacks
def write_blob(
    client: StorageClient,
    blob_id: str,
    data: bytes,
    epoch: int = 1,
    commit: bool = True,
    chunk: int = 100_000,
) -> Any:
    """Write ``data`` as one stream; commit (fires with BlobInfo) or flush."""
    w = yield client.write(blob_id, epoch, 0, {"test": blob_id})
    for i in range(0, len(data), chunk):
        w.write(data[i : i + chunk])
    if commit:
        info = yield w.commit()
        return info
    durable = yield w.flush()
    return w, durable


@defer.inlineCallbacks
def read_sha(client: StorageClient, blob_id: str, offset: int = 0, length: int | None = None):
    c = DrainConsumer()
    n = yield client.read(blob_id, offset, length, c)
    assert n == c.count
    return c.sha.hexdigest(), n


def kill_and_wait(proc: subprocess.Popen) -> int:
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(10)
