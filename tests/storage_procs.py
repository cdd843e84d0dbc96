"""Real storage servers for integration tests: in-process and as subprocesses.

``StorageProcess`` runs ``twistd -n wsstorage`` in a child process with its
log in a file, and waits for its port by polling a connect (and watching the
child so a crash at startup fails fast instead of timing out).  Given
``tls=make_tls(...)`` it listens with TLS and ``endpoint`` is the ``tls:``
client string that trusts the test CA.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer

from tests.storage_tls import TlsFiles
from tests.support import free_port, python_env, twistd_argv
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

    def start(self, timeout: float = 30.0, extra: tuple[str, ...] = ()) -> StorageProcess:
        self.port = free_port()
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
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.tmp,
                env=python_env(self.extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_listening(timeout)
        return self

    def wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"wsstorage exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"wsstorage did not listen:\n{self.log()}") from None
                time.sleep(0.02)  # polling interval of the connect, not a synchronisation

    def secret(self) -> bytes:
        return self.secret_file.read_bytes().strip()

    def client(self, reactor: Any, **kw: Any) -> StorageClient:
        return StorageClient(reactor, self.name, self.endpoint, self.secret(), **kw)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
