"""A running front end follows the catalog's storage registry.

Found by chaos testing: a front end built its storage pool once, at its
start, from the registry.  A server registered afterwards by another front
end's ``--storage`` stayed unknown to it (a file stored only there: HTTP
503, FTP RETR failed, a resume logged a bare ``'s4'``), and a server
re-registered at a new port was still probed at its old one, while the two
front ends took turns writing "up" and "down" for it into the registry.

Real processes: four ``twistd -n wsstorage``, two ``twistd -n wsfront`` on
one SQLite or PostgreSQL catalog, ``curl`` and ``wsfs``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time

import pytest

from tests.catalog_fixtures import postgres_schema_url
from tests.migration_cluster import MigrationCluster, sha256, wait_until
from tests.storage_procs import StorageProcess
from tests.support import free_port, require_tool

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def cluster(request, tmp_path):
    if request.param == "sqlite":
        urls = iter([f"sqlite:///{tmp_path / 'catalog.sqlite'}"])
    else:
        urls = postgres_schema_url()
    c = MigrationCluster(tmp_path, next(urls)).start()
    yield c
    c.stop()
    for _ in urls:  # drops the PostgreSQL schema
        pass


def node_states(cluster: MigrationCluster) -> dict[str, dict]:
    """``wsfs status``'s registry rows, by server name."""
    return {n["name"]: n for n in json.loads(cluster.wsfs("--json", "status"))["nodes"]}


def ok_replicas(cluster: MigrationCluster, name: str) -> set[str]:
    """The servers holding an ok replica of top-level file ``name``."""
    query = (
        "SELECT DISTINCT r.node FROM dirents d JOIN versions v ON v.inode = d.inode "
        "JOIN version_extents e ON e.version_id = v.version_id "
        "JOIN replicas r ON r.blob_id = e.blob_id WHERE d.name = {} AND r.state = 'ok'"
    )
    if cluster.catalog_url.startswith("sqlite:"):
        with sqlite3.connect(cluster.tmp / "catalog.sqlite") as db:
            rows = db.execute(query.format("?"), (name,)).fetchall()
    else:
        import psycopg

        with psycopg.connect(cluster.catalog_url) as db:
            rows = db.execute(query.format("%s"), (name,)).fetchall()
    return {node for (node,) in rows}


def get(curl: str, url: str) -> tuple[int, bytes]:
    """HTTP status and body of a GET."""
    out = subprocess.run(
        [curl, "-sS", "-o", "-", "-w", "\n%{http_code}", url], capture_output=True, timeout=60
    )
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code), body


def wait_down(cluster: MigrationCluster, *names: str) -> None:
    wait_until(
        lambda: all(node_states(cluster)[n]["state"] == "down" for n in names),
        f"{names} recorded down",
    )


def test_a_server_registered_by_another_front_end_serves_reads_through_this_one(cluster, tmp_path):
    a, b = cluster.a, cluster.b
    a.start()  # knows s1..s3 only
    s4 = StorageProcess(tmp_path, "s4").start()
    cluster.storage.append(s4)  # stopped with the cluster
    b.start()  # registers s4
    for s in cluster.storage[:2]:
        s.stop()
    wait_down(cluster, "s1", "s2")
    curl = require_tool("curl")
    src = tmp_path / "s4only.bin"
    data = b"only on s4 " * 3000
    src.write_bytes(data)
    subprocess.run([curl, "-sSf", "-T", str(src), f"{b.http}/s4only"], check=True, timeout=60)
    assert ok_replicas(cluster, "s4only") == {"s3", "s4"}
    cluster.storage[2].stop()  # now s4 holds its only copy
    assert get(curl, f"{a.http}/s4only") == (200, data), a.run_log()[-3000:]
    ftp = subprocess.run([curl, "-sS", f"{a.ftp}/s4only"], capture_output=True, timeout=60)
    assert (ftp.returncode, ftp.stdout) == (0, data), ftp.stderr
    assert re.search(r"storage server s4 was registered at \S+: this front end uses it", a.log())
    assert node_states(cluster)["s4"]["state"] == "up"


def test_a_moved_server_is_followed_and_its_health_does_not_flap(cluster, tmp_path):
    a, b = cluster.a, cluster.b
    a.start()
    b.start()
    curl = require_tool("curl")
    # Files until one has a replica on s3 (two of three servers hold each).
    data = b"moved " * 5000
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    for i in range(12):
        subprocess.run([curl, "-sSf", "-T", str(src), f"{a.http}/f{i}"], check=True, timeout=60)
        if "s3" in ok_replicas(cluster, f"f{i}"):
            name = f"f{i}"
            break
    else:
        raise AssertionError("no file was placed on s3")
    s3 = cluster.storage[2]
    old = s3.endpoint
    s3.stop()
    s3.start()  # same data directory, a new port
    assert s3.endpoint != old
    b.stop()
    b.start()  # re-registers s3 at its new endpoint; fe-a is not restarted
    moved = f"storage server s3 was registered at {s3.endpoint} (was {old})"
    wait_until(lambda: moved in a.run_log(), "fe-a following s3's move", proc=a.proc)
    taken = f"storage server s3 answers at {s3.endpoint}: reads and writes go there"
    wait_until(lambda: taken in a.run_log(), "fe-a taking s3's new endpoint", proc=a.proc)
    # Through fe-a, with the file's other replica gone: read from s3's new port.
    for s in cluster.storage[:2]:
        if s.name in ok_replicas(cluster, name):
            s.stop()
    assert get(curl, f"{a.http}/{name}") == (200, data), a.run_log()[-3000:]
    # Both front ends record s3 at its new address only: over three of
    # their health rounds (5 s each), it never shows the old one's "down".
    seen = []
    deadline = time.monotonic() + 16
    while time.monotonic() < deadline:
        row = node_states(cluster)["s3"]
        seen.append((row["state"], row.get("last_error")))
    assert seen and all(state == "up" for state, _ in seen), seen


def test_an_upload_resumes_on_this_front_end_from_a_server_registered_by_another(cluster, tmp_path):
    """Its current blob's only reachable replica is on s4, which fe-b
    registered after fe-a started: fe-a's takeover fences it there (it
    failed with a bare "'s4'" and a 503)."""
    a, b = cluster.a, cluster.b
    a.start()
    cluster.storage.append(StorageProcess(tmp_path, "s4").start())
    b.start(f"transfer.after_checkpoint=kill@{3 << 20}")  # registers s4
    for s in cluster.storage[:2]:
        s.stop()
    wait_down(cluster, "s1", "s2")
    curl = require_tool("curl")
    data = os.urandom((12 << 20) + 321)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    # A slow client (4 MB/s): the front end dies mid-upload, at a checkpoint.
    first = subprocess.run(
        [curl, "-sS", "--limit-rate", "4M", "-T", str(src), f"{b.http}/big.bin"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert first.returncode != 0, "the client saw its front end die"
    b.wait_killed()
    checkpoint = b.wait_failpoint("transfer.after_checkpoint")
    cluster.storage[2].stop()  # s3: the blob's other replica
    head = subprocess.run([curl, "-sS", "-I", f"{a.http}/big.bin"], capture_output=True, timeout=60)
    offset = int(re.search(rb"(?im)^upload-offset:\s*(\d+)", head.stdout).group(1))
    assert offset == checkpoint >= 3 << 20
    second = subprocess.run(
        [curl, "-sS", "-C", str(offset), "-T", str(src), "-w", "%{http_code}",
         f"{a.http}/big.bin"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert second.stdout.decode() in ("201", "204"), (second, a.run_log()[-3000:])
    assert "missed the fence: 's4'" not in a.log()
    code, got = get(curl, f"{a.http}/big.bin")
    assert code == 200 and sha256(got) == sha256(data)


class Typo:
    """A ``--storage`` entry an operator mistyped: its server's name, a
    port nothing listens on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.endpoint = f"tcp:127.0.0.1:{free_port()}"


def test_a_typo_in_one_front_ends_storage_does_not_stop_writes_through_another(cluster, tmp_path):
    """fe-b starts with s3 mistyped, which re-registers s3 at a dead port
    for every front end: fe-a, running, goes on writing to s3 at the
    endpoint that works (before, it took the new one at once, and s3 was
    down for its writes until the typo was mended).  A correct move that follows is
    taken as soon as the new endpoint answers."""
    a, b = cluster.a, cluster.b
    a.start()
    curl = require_tool("curl")
    s1, s2, s3 = cluster.storage
    typo = Typo("s3")
    cluster.storage = [s1, s2, typo]
    try:
        b.start()
    finally:
        cluster.storage = [s1, s2, s3]
    assert node_states(cluster)["s3"]["endpoint"] == typo.endpoint
    moved = f"storage server s3 was registered at {typo.endpoint}"
    wait_until(lambda: moved in a.run_log(), "fe-a following the typo", proc=a.proc)
    s1.stop()
    wait_until(lambda: "storage server s1 is down" in a.run_log(), "fe-a seeing s1 down")
    data = b"typo " * 4000
    src = tmp_path / "t.bin"
    src.write_bytes(data)
    for i in range(3):
        subprocess.run([curl, "-sSf", "-T", str(src), f"{a.http}/t{i}"], check=True, timeout=60)
        assert ok_replicas(cluster, f"t{i}") == {"s2", "s3"}, a.run_log()[-3000:]
    pending = f"storage server s3: the endpoint it is registered at, {typo.endpoint}, is not taken"
    assert pending in a.run_log()
    # What the registry shows: the typo's endpoint, down (both front ends
    # record the probe of the endpoint it names).
    wait_down(cluster, "s3")
    # The server really moves (a new port, the same data directory), and
    # fe-b is restarted with the right endpoint: fe-a follows.
    old = s3.endpoint
    s3.stop()
    s3.start()
    assert s3.endpoint != old
    b.stop()
    b.start()
    taken = f"storage server s3 answers at {s3.endpoint}: reads and writes go there"
    wait_until(lambda: taken in a.run_log(), "fe-a taking s3's new endpoint", proc=a.proc)
    s2.stop()  # t0's only other replica
    assert get(curl, f"{a.http}/t0") == (200, data), a.run_log()[-3000:]
    wait_until(
        lambda: (
            node_states(cluster)["s3"]["state"] == "up"
            and node_states(cluster)["s3"]["endpoint"] == s3.endpoint
        ),
        "s3 recorded up at its new endpoint",
    )
