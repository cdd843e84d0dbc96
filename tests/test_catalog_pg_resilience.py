"""A PostgreSQL catalog against frozen peers and lost connections.

A front end frozen inside a catalog transaction (SIGSTOP, a paused VM)
keeps its row locks: the server must abort its transaction and the others
must stop waiting for a lock after a bound (CatalogUnavailable, never a
hang).  A connection the server ended (a restart, ``pg_terminate_backend``)
costs no failure when nothing was committed on it yet: the transaction
runs again on a new connection.  Only a connection lost inside the commit
is an error (it may have committed)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.threads import deferToThread

from tests.catalog_fixtures import postgres_schema_url
from wsfront.catalog import open_catalog
from wsfront.catalog.errors import CatalogUnavailable, NotFound
from wsfront.catalog.postgres import LIBPQ_DEFAULTS, PostgresBackend, libpq_settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url():
    """A fresh schema, its connections named so a test ends only its own."""
    for url in postgres_schema_url():
        yield f"{url}&application_name=wsfs_test_{secrets.token_hex(6)}"


def application(url: str) -> str:
    return url.rsplit("application_name=", 1)[1]


def terminate_all(url: str) -> int:
    """End every server connection of ``url``'s application; how many."""
    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application(url),),
        ).fetchall()
    return len(rows)


@contextmanager
def connection_lost_in(cat, step: str, url: str, times: int | None = None) -> Iterator[list[int]]:
    """While inside, the catalog backend's ``step`` (``"commit"`` or
    ``"rollback"``) first ends its connection's server process and waits
    for it to exit, the first ``times`` times (every time by default);
    yields the list of the ended backends' pids, and puts the step back
    on leaving."""
    backend = cat._runner.backend
    real = getattr(backend, step)
    ended: list[int] = []

    def lost(conn, cursor):
        if times is None or len(ended) < times:
            pid = conn.info.backend_pid
            with psycopg.connect(url, autocommit=True) as admin:
                # With a timeout: returns once the backend has exited.
                admin.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))
            ended.append(pid)
        return real(conn, cursor)

    setattr(backend, step, lost)
    try:
        yield ended
    finally:
        setattr(backend, step, real)


def with_options(url: str, options: str) -> str:
    """``url`` with ``options`` after the search path its schema set."""
    return url.replace("options=", f"options={quote(options + ' ')}", 1)


def begin(cat, path, blob):
    return cat.begin_upload(
        "alice",
        path,
        base_length=0,
        blob_id=blob,
        replicas=["s1", "s2"],
        wanted_replicas=2,
        owner="fe1",
        expires_at=cat._clock() + 3600,
    )


# -- time limits on every connection -------------------------------------------------


def test_every_connection_bounds_idle_transactions_lock_waits_and_statements(pg_url):
    conn = PostgresBackend(pg_url).connect()
    try:
        shown = {
            name: conn.execute(f"SHOW {name}").fetchone()[name]
            for name in ("idle_in_transaction_session_timeout", "lock_timeout", "statement_timeout")
        }
        assert shown == {
            "idle_in_transaction_session_timeout": "5s",
            "lock_timeout": "10s",
            "statement_timeout": "1min",
        }
    finally:
        conn.close()


def test_the_url_and_the_environment_override_the_limits(pg_url):
    conn = PostgresBackend(with_options(pg_url, "-c lock_timeout=3s")).connect()
    try:
        assert conn.execute("SHOW lock_timeout").fetchone()["lock_timeout"] == "3s"
        assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "1min"
    finally:
        conn.close()
    # 0 is a choice too (no limit), not a value to replace.
    conn = PostgresBackend(with_options(pg_url, "-c statement_timeout=0")).connect()
    try:
        assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "0"
        assert conn.execute("SHOW lock_timeout").fetchone()["lock_timeout"] == "10s"
    finally:
        conn.close()
    assert libpq_settings("postgresql://h/db", {}) == LIBPQ_DEFAULTS
    assert "connect_timeout" not in libpq_settings("postgresql://h/db?connect_timeout=2", {})
    assert "connect_timeout" not in libpq_settings("postgresql://h/db", {"PGCONNECT_TIMEOUT": "3"})
    assert "keepalives_idle" not in libpq_settings("postgresql://h/db?keepalives_idle=5", {})


@pytest_twisted.ensureDeferred
async def test_a_lock_held_by_a_frozen_client_makes_a_takeover_unavailable_not_hang(pg_url):
    # The probe's reproduction: another session locks every upload and
    # stays in its transaction; the takeover gives up at lock_timeout.
    cat = open_catalog(reactor, with_options(pg_url, "-c lock_timeout=200ms"), threads=1)
    try:
        await cat.add_user("alice", "pw")
        up = await begin(cat, "/f", "b1")
        await cat.interrupt_upload(up.upload_id, 1)
        with psycopg.connect(pg_url) as holder:
            holder.execute("SELECT * FROM uploads FOR UPDATE")
            with pytest.raises(CatalogUnavailable, match="lock"):
                await cat.take_over(up.upload_id, 1, "fe2")
        taken = await cat.take_over(up.upload_id, 1, "fe2")
        assert (taken.epoch, taken.owner) == (2, "fe2")
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_front_end_frozen_in_a_transaction_is_aborted_and_resumes_cleanly(pg_url):
    # Front end B freezes inside a checkpoint's transaction, its row lock
    # taken; the server aborts it once idle, so A's takeover goes through.
    # When B thaws, its transaction runs again on a new connection and
    # meets A's epoch, as a late checkpoint should.
    a = open_catalog(reactor, pg_url, threads=1)
    b = open_catalog(reactor, with_options(pg_url, "-c idle_in_transaction_session_timeout=300"))
    thaw, frozen = threading.Event(), threading.Event()
    runs = []
    try:
        await a.add_user("alice", "pw")
        up = await begin(a, "/f", "b1")
        await a.interrupt_upload(up.upload_id, 1)

        def checkpoint(tx):
            runs.append(tx.value("SELECT pg_backend_pid() AS pid"))
            changed = tx.execute(
                "UPDATE uploads SET checkpoint = 5 WHERE upload_id = ? AND epoch = 1",
                up.upload_id,
            )
            frozen.set()
            assert thaw.wait(30)
            return changed, tx.value("SELECT epoch FROM uploads WHERE upload_id = ?", up.upload_id)

        late = b._runner.run(checkpoint)
        await deferToThread(frozen.wait, 30)
        taken = await a.take_over(up.upload_id, 1, "fe2")
        assert taken.epoch == 2 and taken.checkpoint == 0  # B's update never committed
        thaw.set()
        # Run again, on a new connection, after A's commit: it changes nothing.
        assert await late == (0, 2)
        assert len(runs) == 2 and runs[0] != runs[1]
    finally:
        thaw.set()
        a.close()
        b.close()


# -- lost connections ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_pooled_connection_ended_by_the_server_costs_no_failure(pg_url):
    cat = open_catalog(reactor, pg_url, threads=4)
    try:
        # Open all four of the pool's connections: four reads at once,
        # each holding its thread until all four run.
        started = threading.Barrier(4)

        def read(tx):
            started.wait(30)
            return tx.value("SELECT pg_backend_pid() AS pid")

        pids = set(await _gather([cat._runner.run(read, write=False) for _ in range(4)]))
        assert len(pids) == 4
        assert terminate_all(pg_url) >= 4
        made = await _gather([cat.mkdir(f"/d{i}") for i in range(8)])
        assert len(made) == 8
        assert sorted(e.name for e in await cat.list_dir("/")) == [f"d{i}" for i in range(8)]
        after = await _gather([cat._runner.run(read, write=False) for _ in range(4)])
        assert not pids & set(after)
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_connection_lost_before_an_unsynced_begin_is_replaced_at_once(pg_url):
    cat = open_catalog(reactor, pg_url, threads=1)
    runner = cat._runner
    try:
        pid = await runner.run(lambda tx: tx.value("SELECT pg_backend_pid() AS pid"))
        terminate_all(pg_url)
        # begin() sends SET LOCAL first: the loss is found there.
        again = await runner.run(
            lambda tx: tx.value("SELECT pg_backend_pid() AS pid"), write=True, durable=False
        )
        assert again != pid
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_send_refused_before_the_connection_looks_bad_is_a_lost_connection(pg_url):
    """libpq can fail a send to a server that has just ended the
    connection ("sending query failed: terminating connection ...") while
    the connection still looks sound; the suite hit it once under load.
    The transaction runs again on a new connection, as for any loss."""
    cat = open_catalog(reactor, pg_url, threads=1)
    runner = cat._runner
    try:
        first = await runner.run(lambda tx: tx.value("SELECT pg_backend_pid() AS pid"))
        attempts = []

        def ended_under_us(tx):
            attempts.append(tx.value("SELECT pg_backend_pid() AS pid"))
            if len(attempts) == 1:
                terminate_all(pg_url)
                # What libpq raised, before psycopg saw the connection end.
                raise psycopg.OperationalError(
                    "sending query failed: terminating connection due to administrator command"
                )
            return attempts[-1]

        again = await runner.run(ended_under_us)
        assert attempts[0] == first
        assert again != first
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_connection_lost_inside_the_commit_is_never_run_again(pg_url):
    cat = open_catalog(reactor, pg_url, threads=1)
    runs = []
    try:
        with connection_lost_in(cat, "commit", pg_url), pytest.raises(CatalogUnavailable):
            await cat._runner.run(lambda tx: runs.append(tx.execute("SELECT 1")))
        assert len(runs) == 1
        await cat.mkdir("/after")
        assert [e.name for e in await cat.list_dir("/")] == ["after"]
    finally:
        cat.close()


@pytest.mark.parametrize("write", [True, False])
@pytest_twisted.ensureDeferred
async def test_a_connection_lost_inside_the_rollback_is_replaced_and_the_transaction_rerun(
    pg_url, write
):
    """A transaction that failed (here: its path does not exist) rolls
    back; a connection the server ended meanwhile fails that ROLLBACK
    ("consuming input failed: server closed the connection"), which was
    raised as it was (HTTP 500).  Nothing took effect: the dead connection
    is dropped and the transaction runs again on a new one, so the client
    gets its own answer (NotFound: 404 / 550), not an outage."""
    cat = open_catalog(reactor, pg_url, threads=1)
    try:
        await cat.mkdir("/d")
        lost = connection_lost_in(cat, "rollback", pg_url, times=1)
        with lost as ended, pytest.raises(NotFound):
            await (cat.rmdir("/d/missing") if write else cat.stat("/d/missing"))
        assert len(ended) == 1
        pid = await cat._runner.run(lambda tx: tx.value("SELECT pg_backend_pid() AS pid"))
        assert pid != ended[0]
        await cat.mkdir("/after")
        assert [e.name for e in await cat.list_dir("/")] == ["after", "d"]
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_rollbacks_that_keep_losing_their_connection_are_unavailable(pg_url):
    """Each run's ROLLBACK finds its connection ended: after the first
    connection and two new ones, the catalog is unavailable (503 / 451)."""
    cat = open_catalog(reactor, pg_url, threads=1)
    try:
        await cat.mkdir("/d")
        with (
            connection_lost_in(cat, "rollback", pg_url) as ended,
            pytest.raises(CatalogUnavailable),
        ):
            await cat.stat("/d/missing")
        assert len(set(ended)) == 3  # the first connection and two new ones
        await cat.mkdir("/after")
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_connection_that_keeps_dying_fails_after_a_few_new_ones(pg_url):
    cat = open_catalog(reactor, pg_url, threads=1)
    runs = []

    def suicidal(tx):
        runs.append(1)
        tx.value("SELECT pg_terminate_backend(pg_backend_pid())")

    try:
        with pytest.raises(CatalogUnavailable):
            await cat._runner.run(suicidal)
        assert len(runs) == 3  # the first connection and two new ones
        await cat.mkdir("/after")
    finally:
        cat.close()


@pytest_twisted.ensureDeferred
async def test_a_server_that_refuses_connections_is_still_unavailable(pg_url):
    cat = open_catalog(reactor, pg_url, threads=1)
    backend = cat._runner.backend
    try:
        terminate_all(pg_url)
        backend.url, url = "postgresql://127.0.0.1:1/test?connect_timeout=2", backend.url
        with pytest.raises(CatalogUnavailable):
            await cat.mkdir("/b")
        backend.url = url
        await cat.mkdir("/b")
    finally:
        cat.close()


async def _gather(ds):
    return await gatherResults(ds, consumeErrors=True)


# -- over HTTP ----------------------------------------------------------------------


@pytest.fixture
def tus_env(tmp_path, pg_url):
    """A tus site on a PostgreSQL catalog whose lock waits end after 200 ms."""
    from tests.tus_env import start_env, stop_env

    url = with_options(pg_url, "-c lock_timeout=200ms")
    env = pytest_twisted.blockon(ensureDeferred(start_env(reactor, tmp_path, catalog_url=url)))
    env.pg_url = pg_url
    yield env
    pytest_twisted.blockon(stop_env(env))


@pytest_twisted.ensureDeferred
async def test_a_tus_resume_behind_a_lock_never_released_is_503_then_resumes(tus_env):
    # The probe's reproduction: psql's "BEGIN; SELECT * FROM uploads FOR
    # UPDATE;" left open, then a client resumes its upload.
    from tests.tus_env import OCTETS, create, tus

    env = tus_env
    status, headers, _ = await create(env, 10, {"filename": "f"}, data=b"abcd")
    assert (status, headers["upload-offset"]) == (201, "4")
    location = headers["location"]
    with psycopg.connect(env.pg_url) as holder:
        holder.execute("SELECT * FROM uploads FOR UPDATE")
        status, headers, body = await tus(
            env, "PATCH", location, {**OCTETS, "Upload-Offset": "4"}, b"efghij"
        )
        assert status == 503, body
        assert headers["retry-after"] == "5"
    status, headers, body = await tus(
        env, "PATCH", location, {**OCTETS, "Upload-Offset": "4"}, b"efghij"
    )
    assert (status, headers["upload-offset"]) == (204, "10"), body
    r = await env.request("GET", "/f")
    assert (r.code, await treq.content(r)) == (200, b"abcdefghij")
