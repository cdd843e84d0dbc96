"""Interrupted uploads hold no descriptors while they wait to be resumed.

Every upload cut short (an HTTP PUT whose client hung up, an FTP STOR the
client ABORed) stays pending, resumable from its durable offset until it
expires (a day by default).  Its replicas' blob files (``.data`` and
``.sums`` on each of two replicas) stayed open all that time: 100 aborted
3-byte PUTs took ``wslocal`` from 105 to 505 descriptors, so one user
could exhaust the process's limit.  Here a real ``twistd -n wslocal`` is
driven over real sockets, and its descriptors are read from ``/proc``.
"""

from __future__ import annotations

import base64
import ftplib
import hashlib
import io
import os
import re
import socket
import sqlite3
import sys
import time
from collections.abc import Callable

import pytest

from tests.storage_procs import pattern
from tests.test_wslocal import WsLocal, curl

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/fd"),
]

#: Uploads cut short per protocol: each held 4 descriptors before.
N = 24
#: Descriptors the process may gain for good meanwhile: pooled storage
#: connections (both ends are in the process), the catalog's, logs.
SLACK = 40


def open_files(pid: int) -> list[str]:
    """What each descriptor of ``pid`` points at."""
    fd_dir = f"/proc/{pid}/fd"
    targets = []
    for fd in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(os.path.join(fd_dir, fd)))
        except FileNotFoundError:
            pass  # closed meanwhile
    return targets


def blob_files(pid: int, data) -> list[str]:
    blobs = str(data)
    return [t for t in open_files(pid) if t.startswith(blobs) and "/blobs/" in t]


def no_blob_file_open(pid: int, data) -> None:
    """Wait until the process holds no blob file open (its writers are let
    go of after the catalog recorded the interruption)."""
    left: list[str] = []

    def none_left() -> bool:
        left[:] = blob_files(pid, data)
        return not left

    eventually(none_left, lambda: f"no blob file open ({len(left)} are, e.g. {left[:4]})")


def eventually(
    condition: Callable[[], bool], what: str | Callable[[], str], timeout: float = 30.0
) -> None:
    """Wait until ``condition()`` holds (the server finishes an
    interruption after its client is gone: nothing to wait on but it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what if isinstance(what, str) else what()}")
        time.sleep(0.02)  # polling interval, not a synchronisation


@pytest.fixture
def wslocal(tmp_path):
    data = tmp_path / "wsfs-data"
    server = WsLocal(data, tmp_path / "wslocal.log").start()
    try:
        user, password = (data / "demo-login.txt").read_text().strip().split(":", 1)
        yield server, data, user, password
    finally:
        server.stop()


def http_port(server: WsLocal) -> int:
    return int(server.urls["HTTP"].rstrip("/").rsplit(":", 1)[1])


def ftp_port(server: WsLocal) -> int:
    return int(server.urls["FTP"].rstrip("/").rsplit(":", 1)[1])


def cut_put(port: int, auth: str, path: str, declared: int, sent: bytes) -> None:
    """A PUT that announces ``declared`` bytes, sends ``sent`` and hangs up."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        s.sendall(head.encode() + sent)


def interrupted(data) -> dict[str, int]:
    """The durable offset of every upload the catalog records as
    interrupted, by "/" and its file name (read from its SQLite file, as
    ``wsfs sessions`` does; the path there is below the user's root)."""
    db = sqlite3.connect(f"file:{data / 'catalog.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT path, checkpoint FROM uploads WHERE state = 'interrupted'")
        return {"/" + path.rsplit("/", 1)[1]: checkpoint for path, checkpoint in rows}
    finally:
        db.close()


def wait_interrupted(data, paths) -> dict[str, int]:
    """Wait until every upload on ``paths`` is recorded interrupted, then
    until no blob file is open (the writers are let go of after that);
    fire with their durable offsets."""
    found: dict[str, int] = {}

    def recorded() -> bool:
        found.update(interrupted(data))
        return set(paths) <= set(found)

    eventually(recorded, "every cut upload is recorded interrupted")
    return {p: found[p] for p in paths}


def test_interrupted_puts_hold_no_descriptors_and_resume_to_the_right_bytes(wslocal, tmp_path):
    server, data, user, password = wslocal
    pid = server.child.proc.pid
    port, http = http_port(server), server.urls["HTTP"]
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    # Warm up the pools (storage connections) with one whole upload.
    warm = tmp_path / "warm"
    warm.write_bytes(b"warm")
    assert curl("-T", str(warm), "-w", "%{http_code}", http + "warm").stdout.endswith(b"201")
    before = len(open_files(pid))

    # Small ones (a put at commit), and ones past the put limit (streams).
    sizes = {f"/small{i}": 100 for i in range(N // 2)}
    sizes.update({f"/big{i}": 300_000 + i for i in range(N - N // 2)})
    payloads = {path: pattern(size, seed=i) for i, (path, size) in enumerate(sizes.items())}
    for path, payload in payloads.items():
        cut_put(port, auth, path, len(payload), payload[: len(payload) // 3])

    offsets = wait_interrupted(data, payloads)
    no_blob_file_open(pid, data)
    assert len(open_files(pid)) <= before + SLACK, open_files(pid)

    for path, payload in payloads.items():
        n = offsets[path]
        assert n == len(payload) // 3, "what arrived before the client hung up is kept"
        rest = tmp_path / "rest"
        rest.write_bytes(payload[n:])
        put = curl(
            "-T", str(rest), "-w", "%{http_code}",
            "-H", f"Content-Range: bytes {n}-{len(payload) - 1}/{len(payload)}",
            http + path.lstrip("/"),
        )  # fmt: skip
        assert put.stdout.endswith(b"201"), put
        got = curl(http + path.lstrip("/")).stdout
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest(), path
    # The last read's blob files are closed by the server after its last
    # bytes went out: the client cannot see when, so that is waited for.
    no_blob_file_open(pid, data)
    assert len(open_files(pid)) <= before + SLACK, open_files(pid)


def bytes_arrived(ftp: ftplib.FTP) -> None:
    """Ask STAT until the running transfer has moved some bytes (the server
    answers STAT at once while a transfer runs)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ftp.putcmd("STAT")
        status = ftp.getmultiline()
        assert status.startswith("211"), status
        moved = re.search(r"in progress, (\d+) bytes moved", status)
        if moved is not None and int(moved.group(1)) > 0:
            return
    raise AssertionError("the server took none of the upload's bytes in 60 s")


def test_abored_ftp_uploads_hold_no_descriptors_and_resume_to_the_right_bytes(wslocal):
    server, data, user, password = wslocal
    pid = server.child.proc.pid
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", ftp_port(server), timeout=30)
    ftp.login(user, password)
    try:
        ftp.storbinary("STOR warm", io.BytesIO(b"warm"))
        before = len(open_files(pid))
        payloads = {f"f{i}": pattern(200_000 + i * 1000, seed=100 + i) for i in range(N)}
        kept = []
        for name, payload in payloads.items():
            conn = ftp.transfercmd(f"STOR {name}")
            conn.sendall(payload[: len(payload) // 2])
            if len(kept) < N // 2:
                # Half of them ABOR once the server took some bytes (STAT
                # during the transfer says how many): else an ABOR read
                # before the data connection's bytes can overtake every one
                # on a busy machine (seen in CI), and nothing is kept.
                bytes_arrived(ftp)
            ftp.putcmd("ABOR")
            conn.close()
            aborted = ftp.getmultiline()
            assert aborted.startswith("426"), name
            assert ftp.getmultiline().startswith("226"), name
            # An ABOR read before any of the bytes is a STOR that received
            # nothing: no upload is kept (the 426 says which).
            if "the upload is kept" in aborted:
                kept.append(name)
            else:
                assert "nothing arrived" in aborted, (name, aborted)
        assert kept, "every ABOR overtook its bytes: nothing was interrupted"

        offsets = wait_interrupted(data, [f"/{name}" for name in kept])
        no_blob_file_open(pid, data)
        assert len(open_files(pid)) <= before + SLACK, open_files(pid)

        for name, payload in payloads.items():
            if name not in kept:
                assert f"/{name}" not in interrupted(data), name
                ftp.storbinary(f"STOR {name}", io.BytesIO(payload))
                continue
            n = ftp.size(name)
            # ABOR may cut off bytes the data connection still carried.
            assert n == offsets[f"/{name}"] and 0 <= n <= len(payload) // 2, (name, n)
            ftp.storbinary(f"STOR {name}", io.BytesIO(payload[n:]), rest=n)
            got = hashlib.sha256()
            ftp.retrbinary(f"RETR {name}", got.update)
            assert got.hexdigest() == hashlib.sha256(payload).hexdigest(), name
        # The last read's blob files are closed by the server after its last
        # bytes went out: the client cannot see when, so that is waited for.
        no_blob_file_open(pid, data)
        assert len(open_files(pid)) <= before + SLACK, open_files(pid)
    finally:
        ftp.close()


def test_storage_processes_hold_no_files_of_interrupted_uploads_resumed_anywhere(tmp_path):
    """The multi-process layout: front ends and storage servers talk over
    TCP.  The storage servers close a blob's files when its writer's stream
    ends, and the front end keeps no stream or socket per interrupted
    upload; each resumes, on its own front end or on another one (a
    takeover: fence, then a new blob), to the right bytes."""
    from tests.migration_cluster import PASSWORD as MIA_PASSWORD
    from tests.migration_cluster import USER as MIA
    from tests.migration_cluster import MigrationCluster

    cluster = MigrationCluster(tmp_path, f"sqlite:///{tmp_path / 'catalog.sqlite'}").start()
    try:
        a, b = cluster.a.start(), cluster.b.start()
        warm = tmp_path / "warm"
        warm.write_bytes(b"warm")
        assert curl("-T", str(warm), "-w", "%{http_code}", a.http + "/warm").stdout.endswith(b"201")
        before = len(open_files(a.proc.pid))
        auth = base64.b64encode(f"{MIA}:{MIA_PASSWORD}".encode()).decode()
        payloads = {
            f"/m{i}": pattern(100 if i % 2 else 300_000 + i, seed=200 + i) for i in range(N)
        }
        for path, payload in payloads.items():
            cut_put(a.http_port, auth, path, len(payload), payload[: len(payload) // 3])
        offsets = wait_interrupted(tmp_path, payloads)
        for server in cluster.storage:
            no_blob_file_open(server.proc.pid, server.data)
        assert len(open_files(a.proc.pid)) <= before + SLACK, open_files(a.proc.pid)

        for i, (path, payload) in enumerate(payloads.items()):
            n = offsets[path]
            assert n == len(payload) // 3
            rest = tmp_path / "rest"
            rest.write_bytes(payload[n:])
            front = (a, b)[i % 2]
            put = curl(
                "-T", str(rest), "-w", "%{http_code}",
                "-H", f"Content-Range: bytes {n}-{len(payload) - 1}/{len(payload)}",
                front.http + path,
            )  # fmt: skip
            assert put.stdout.endswith(b"201"), put
            got = curl(b.http + path).stdout
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest(), path
        # The last read's blob files are closed by the server after its last
        # bytes went out: the client cannot see when, so that is waited for.
        for server in cluster.storage:
            no_blob_file_open(server.proc.pid, server.data)
    finally:
        cluster.stop()
