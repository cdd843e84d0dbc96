"""A new upload whose replicas all run out of room while a checkpoint of
it is on its way to the catalog: whether it is ``discarded`` (nothing of
it durable) is decided once that checkpoint has settled, and kept.

The checkpoint flushed its bytes to every replica and is held at the
catalog by a real lock (SQLite's write lock, PostgreSQL's lock on the
upload's row, from another connection) while the disks fill behind the
front end's back (``tests.full_disks``) and the next bytes are refused
for room.  Once the lock goes, the checkpoint records its durable bytes:
the upload is kept interrupted there, resumable, not aborted, and the
session says so (``left_pending``, not ``discarded``) as the catalog does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.ftp_env import payload, until
from tests.full_disks import fill_all, small_disks
from tests.transfer_env import Feeder, TransferEnv
from wsfront.catalog.records import INTERRUPTED
from wsfront.transfer.errors import StorageFull

pytest_plugins = ["tests.catalog_fixtures"]

MiB = 1 << 20


@pytest.fixture
def env(tmp_path, catalog_url):
    from twisted.internet import reactor

    with small_disks(tmp_path):
        e = TransferEnv(
            reactor, tmp_path, catalog_url=catalog_url,
            checkpoint_seconds=3600.0,  # no timer checkpoints meanwhile
        )  # fmt: skip
        pytest_twisted.blockon(defer.ensureDeferred(e.start()))
        yield e
        pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@contextmanager
def catalog_held(env: TransferEnv, upload_id: str) -> Iterator:
    """Hold what the upload's checkpoint must write, from another
    connection; yields a check that the catalog's write waits behind it."""
    url = env.catalog_url
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Every write goes through the catalog's one writer thread,
            # where this one waits for the lock.
            yield lambda: env.catalog._runner._writes_out > 0
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url) as conn, psycopg.connect(url, autocommit=True) as watch:
        conn.execute("SELECT 1 FROM uploads WHERE upload_id = %s FOR UPDATE", (upload_id,))
        pid = conn.info.backend_pid

        def waits() -> bool:
            row = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (pid,),
            ).fetchone()
            return row[0] > 0

        try:
            yield waits
        finally:
            conn.rollback()


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_in_flight_when_room_ran_out_keeps_the_new_upload(env, tmp_path):
    session = await env.transfers.open_write(env.user, "/big.bin", 0)
    first = payload(MiB)
    await Feeder(env.reactor, session, first).start()
    assert session.durable == 0
    with catalog_held(env, session.upload_id) as catalog_waits:
        checkpoint = session.checkpoint()
        await until(catalog_waits, "the checkpoint to wait at the catalog")
        fill_all(tmp_path, env.transfers.pool)
        failed = session.when_failed()
        Feeder(env.reactor, session, payload(2 * MiB)).start()
        with pytest.raises(StorageFull):
            await failed
        assert not session.discarded  # not decided before the checkpoint settles
    await checkpoint
    await session.when_recorded()
    upload = await env.catalog.get_upload(session.upload_id)
    assert (upload.state, upload.checkpoint) == (INTERRUPTED, MiB)
    assert session.durable == MiB
    assert session.left_pending and not session.discarded
    assert env.transfers.pending_per_user.count("alice") == 1
