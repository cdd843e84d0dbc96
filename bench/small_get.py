"""Deterministic cost of small GETs/HEADs: catalog trips and Python calls.

    python bench/small_get.py [--requests 1000] [--size 4096] [--storage-procs]
                              [--profile out.prof] [--top N]

Runs three real storage servers (real BlobStores, real TCP; in this process,
or as ``twistd wsstorage`` subprocesses with ``--storage-procs``), a SQLite
catalog, the transfer layer and the HTTP site; a client thread sends
``--requests`` GETs of one small file over one keep-alive connection, then
HEADs, conditional GETs answered 304 and single-range GETs.  Timing on a
loaded 2-core machine is noise, so this prints what does not depend on the
load: catalog transactions, storage read streams and storage connections
opened per request, and the Python function calls the reactor thread made
per request (cProfile profiles only the thread it runs in: the client
thread and the catalog's threads are not counted).  ``--profile`` saves the
GET profile for pstats.
"""

from __future__ import annotations

import sys

if sys.path and sys.path[0] == __import__("os").path.dirname(
    __import__("os").path.abspath(__file__)
):
    del sys.path[0]  # this directory holds http.py, which would shadow the stdlib's

import argparse
import base64
import cProfile
import http.client
import os
import pstats
import tempfile
from pathlib import Path

from twisted.internet import defer, task, threads
from twisted.internet.endpoints import serverFromString

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import start_storage  # noqa: E402
from tests.transfer_env import PASSWORD, SECRET, TransferEnv  # noqa: E402
from wsfront.auth import CachingAuthenticator  # noqa: E402
from wsfront.http.site import make_site  # noqa: E402
from wsstorage import client as storage_client  # noqa: E402


class Counters:
    """Counts catalog transactions, storage reads and new storage connections."""

    def __init__(self, env: TransferEnv) -> None:
        self.catalog = 0
        self.reads = 0
        self.connects = 0
        runner = env.catalog._runner
        run = runner.run

        def counted_run(*a, **kw):
            self.catalog += 1
            return run(*a, **kw)

        runner.run = counted_run
        for c in env.clients:
            self._wrap_client(c)
        build = storage_client._ClientFactory.buildProtocol
        counters = self

        def counted_build(factory, addr):
            counters.connects += 1
            return build(factory, addr)

        storage_client._ClientFactory.buildProtocol = counted_build

    def _wrap_client(self, c) -> None:
        read = c.read

        def counted_read(*a, **kw):
            self.reads += 1
            return read(*a, **kw)

        c.read = counted_read

    def snapshot(self) -> tuple[int, int, int]:
        return self.catalog, self.reads, self.connects


def client_loop(port: int, path: str, n: int, method: str, headers: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    hdrs = {"Authorization": f"Basic {token}", **headers}
    statuses = set()
    for _ in range(n):
        conn.request(method, path, headers=hdrs)
        r = conn.getresponse()
        r.read()
        statuses.add(r.status)
    conn.close()
    return statuses


class SubprocessStorage(TransferEnv):
    """TransferEnv whose storage servers are ``twistd wsstorage`` processes,
    so that the profile holds the front end's calls only."""

    async def start(self) -> TransferEnv:
        secret_file = self.tmp_path / "secret"
        secret_file.write_bytes(SECRET)
        self.procs = []
        for i in range(1, self.node_count + 1):
            name = f"s{i}"
            proc, ep = start_storage(self.tmp_path / name, name, secret_file)
            self.procs.append(proc)
            self.endpoints[name] = ep
        self.catalog_url = f"sqlite:///{self.tmp_path / 'catalog.sqlite'}"
        self.catalog = self._open_catalog()
        for name, ep in self.endpoints.items():
            await self.catalog.register_node(name, ep)
        self.user = await self.catalog.add_user("alice", PASSWORD)
        self.transfers = await self.front_end("fe-a")
        return self

    async def stop(self) -> None:
        await super().stop()
        for proc in self.procs:
            proc.terminate()
            proc.wait()


async def main(reactor, args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="wsfs-smallget-"))
    kind = SubprocessStorage if args.storage_procs else TransferEnv
    env = await kind(reactor, tmp).start()
    auth = CachingAuthenticator(env.catalog, reactor)
    site = make_site(reactor, env.transfers, auth, None)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    pnum = port.getHost().port
    data = os.urandom(args.size)
    await env.upload("/small.bin", data)
    # Warm up: the login cache, pooled storage connections.
    await threads.deferToThread(client_loop, pnum, "/small.bin", 20, "GET", {})
    counters = Counters(env)
    etag = (await env.transfers.stat(env.user, "/small.bin")).etag
    rows = []
    for label, method, headers in (
        ("GET", "GET", {}),
        ("HEAD", "HEAD", {}),
        ("GET If-None-Match (304)", "GET", {"If-None-Match": f'"{etag}"'}),
        ("GET Range 0-99 (206)", "GET", {"Range": "bytes=0-99"}),
    ):
        before = counters.snapshot()
        prof = cProfile.Profile()
        prof.enable()
        statuses = await threads.deferToThread(
            client_loop, pnum, "/small.bin", args.requests, method, headers
        )
        prof.disable()
        after = counters.snapshot()
        st = pstats.Stats(prof)
        calls = st.total_calls
        n = args.requests
        rows.append(
            (
                label,
                sorted(statuses),
                (after[0] - before[0]) / n,
                (after[1] - before[1]) / n,
                (after[2] - before[2]) / n,
                calls / n,
            )
        )
        if label == "GET" and args.profile:
            prof.dump_stats(args.profile)
        if label == "GET" and args.top:
            st.sort_stats("tottime").print_stats(args.top)
    print(
        f"{'per request':26} {'status':>8} {'catalog':>8} {'reads':>6} "
        f"{'connects':>8} {'py calls':>9}"
    )
    for label, statuses, cat, reads, conns, calls in rows:
        print(
            f"{label:26} {','.join(map(str, statuses)):>8} {cat:8.2f} {reads:6.2f} "
            f"{conns:8.2f} {calls:9.0f}"
        )
    await port.stopListening()
    await env.stop()


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--profile", default=None, help="save the GET profile here")
    p.add_argument(
        "--storage-procs",
        action="store_true",
        help="storage servers as twistd subprocesses (profile the front end alone)",
    )
    p.add_argument("--top", type=int, default=0, help="print the top N functions of GET")
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
