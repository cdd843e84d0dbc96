"""Helpers shared by the benchmarks: subprocess servers, a socket-copy
reference, peak RSS.  Benchmarks print figures; they assert nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support import free_port

REPO = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a process in MiB (its peak resident set)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_storage(
    data_dir: Path, name: str, secret_file: Path, port: int | None = None
) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "--nodaemon", "--pidfile=", "wsstorage",
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--data", str(data_dir),
         "--name", name, "--secret-file", str(secret_file)],
        env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port)
    return proc, f"tcp:127.0.0.1:{port}"


def socket_copy_mbps(total: int, chunk: int = 256 * 1024) -> float:
    """Reference: bytes through a plain loopback TCP socket, one sender
    thread and this thread receiving, in MB/s."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    block = os.urandom(chunk)

    def send():
        conn, _ = server.accept()
        sent = 0
        while sent < total:
            n = min(chunk, total - sent)
            conn.sendall(block[:n])
            sent += n
        conn.close()

    t = threading.Thread(target=send)
    t.start()
    client = socket.create_connection(("127.0.0.1", port))
    start = time.perf_counter()
    got = 0
    buf = bytearray(chunk)
    while True:
        n = client.recv_into(buf)
        if not n:
            break
        got += n
    elapsed = time.perf_counter() - start
    client.close()
    t.join()
    server.close()
    assert got == total
    return total / elapsed / 1e6
