"""Long catalog work against PostgreSQL's time limits.

A ``wsfs user del --purge`` of a big tree holds its locks for its whole
transaction: it must not hold the directory that holds the account's root,
where other accounts (a shared folder, an admin's ``/``) keep writing.  A
whole-table maintenance scan (GC, compaction candidates, ``wsfs status``) on
a catalog of tens of millions of rows may run longer than the statement
limit a request gets: it runs without one, and only it (add_user, a write
holding directories others write in, keeps it).  (The parent's
mtime after a purge is checked on both backends in test_catalog_accounts.)

Long work is made long without sleeping: a connection of the test holds a
lock the work needs, and the test waits until the server shows the work
waiting on it (``pg_blocking_pids``)."""

from __future__ import annotations

import secrets

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests.catalog_fixtures import postgres_schema_url
from tests.test_catalog_pg_resilience import with_options
from wsfront.catalog import open_catalog
from wsfront.catalog.errors import CatalogUnavailable, NotEmpty, NotFound


@pytest.fixture
def pg_url():
    for url in postgres_schema_url():
        yield f"{url}&application_name=wsfs_test_{secrets.token_hex(6)}"


async def upload(cat, user, path, size, blob):
    up = await cat.begin_upload(
        user, path, base_length=0, blob_id=blob, replicas=["s1"], wanted_replicas=1,
        owner="fe1", expires_at=cat._clock() + 3600,
    )  # fmt: skip
    return await cat.commit_upload(up.upload_id, up.epoch, size)


async def waiting_on(url: str, pid: int, count: int = 1) -> list[int]:
    """The server pids of ``count`` backends waiting on a lock the backend
    ``pid`` holds, once that many wait (oldest first)."""
    with psycopg.connect(url, autocommit=True) as watcher:
        for _ in range(1500):  # 30 s at most
            rows = watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
                " ORDER BY query_start",
                (pid,),
            ).fetchall()
            if len(rows) >= count:
                return [r[0] for r in rows]
            await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"nothing waited on a lock of backend {pid}")


async def running_longer_than(url: str, pid: int, seconds: float) -> bool:
    """Wait until ``pid``'s statement has run ``seconds``; False if it ended first."""
    with psycopg.connect(url, autocommit=True) as watcher:
        for _ in range(1500):
            row = watcher.execute(
                "SELECT state = 'active' AS active,"
                " clock_timestamp() - query_start > make_interval(secs => %s) AS long"
                " FROM pg_stat_activity WHERE pid = %s",
                (seconds, pid),
            ).fetchone()
            if row is None or not row[0]:
                return False
            if row[1]:
                return True
            await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"backend {pid} neither ended nor ran {seconds}s")


# -- user del --purge --------------------------------------------------------------


async def _shared_tree(cat) -> None:
    """alice's root /shared/alice inside a folder others write in; a tree
    under it of a few directories and files."""
    await cat.add_user("alice", "pw", root="/shared/alice")
    await cat.mkdir("/shared/alice/d1")
    await cat.mkdir("/shared/alice/d1/d2")
    await upload(cat, "alice", "/shared/alice/a.txt", 3, "blob-a")
    await upload(cat, "alice", "/shared/alice/d1/d2/b.txt", 4, "blob-b")
    await upload(cat, "alice", "/shared/x.txt", 2, "blob-x")


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_a_purge_in_progress_leaves_the_roots_parent_free_for_writes(pg_url):
    """The old purge locked /shared first and held it to its end: a mkdir
    there waited (up to lock_timeout, then 503/451).  Here the purge is
    held up inside alice's tree while others write in /shared."""
    purged_at = 2_000_000.0
    now = [purged_at]
    purger = open_catalog(reactor, pg_url, clock=lambda: now[0], threads=1)
    # A short lock wait, so the old code fails here instead of hanging.
    # Its writes come while the purge runs: later.
    other = open_catalog(
        reactor, with_options(pg_url, "-c lock_timeout=1s"), clock=lambda: now[0] + 10
    )
    try:
        await _shared_tree(purger)
        d1 = (await purger.stat("/shared/alice/d1")).inode
        with psycopg.connect(pg_url) as holder:
            # A client of another front end holds alice's d1 (its own
            # transaction, say): the purge walks down to it and waits.
            holder.execute("SELECT inode FROM inodes WHERE inode = %s FOR UPDATE", (d1,))
            purging = purger.delete_user("alice", "purge")
            [purge_pid] = await waiting_on(pg_url, holder.info.backend_pid)
            made = await other.mkdir("/shared/new")
            assert made.path == "/shared/new"
            assert (await other.stat("/shared")).mtime == purged_at + 10
            assert (await other.stat("/shared/x.txt")).size == 2
            # A rename between the parent and the tree (parent locked
            # first, then the root): it waits for the purge, which never
            # waits for the parent, so no deadlock either way round.
            moving = other.rename("/shared/x.txt", "/shared/alice/x.txt")
            await waiting_on(pg_url, purge_pid)
            assert not purging.called
            now[0] += 20  # the purge lasted
            holder.rollback()
        done = await purging
        assert (done["files_deleted"], done["uploads_aborted"]) == (2, 0)
        with pytest.raises(NotFound):
            await moving
        with pytest.raises(NotFound):
            await purger.stat("/shared/alice")
        # The parent's mtime is set after the purge's commit, to the time of
        # that touch (not of the purge's start, before the mkdir's).
        assert (await purger.stat("/shared")).mtime == purged_at + 20
        assert sorted(e.name for e in await purger.list_dir("/shared")) == ["new", "x.txt"]
    finally:
        purger.close()
        other.close()


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_a_purge_refuses_a_root_added_inside_its_tree_after_its_first_check(pg_url):
    """The purge refuses a root shared with another account; it read the
    users once, at its start, so an add_user of a root inside the tree that
    committed between that read and the walk had its new root deleted (and
    the account left without one).  Here the purge is held up between the
    two (on the lock of its user's pending upload) while bob is added."""
    purger = open_catalog(reactor, pg_url, threads=1)
    other = open_catalog(reactor, pg_url)
    try:
        await purger.add_user("alice", "pw", root="/shared/alice")
        await upload(purger, "alice", "/shared/alice/a.txt", 3, "blob-a")
        up = await purger.begin_upload(
            "alice", "/shared/alice/p.bin", base_length=0, blob_id="bp", replicas=["s1"],
            wanted_replicas=1, owner="fe1", expires_at=purger._clock() + 3600,
        )  # fmt: skip
        with psycopg.connect(pg_url) as holder:
            holder.execute(
                "SELECT upload_id FROM uploads WHERE upload_id = %s FOR UPDATE", (up.upload_id,)
            )
            purging = purger.delete_user("alice", "purge")
            await waiting_on(pg_url, holder.info.backend_pid)
            await other.add_user("bob", "pw", root="/shared/alice/bob")
            holder.rollback()
        with pytest.raises(NotEmpty, match="shared with bob"):
            await purging
        users = {u.name: u.root for u in await other.list_users()}
        assert users == {"alice": "/shared/alice", "bob": "/shared/alice/bob"}
        assert (await other.stat("/shared/alice/bob")).kind == "dir"
        assert (await other.stat("/shared/alice/a.txt")).size == 3
        assert (await other.get_upload(up.upload_id)).state == "active"
    finally:
        purger.close()
        other.close()


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_a_purge_walking_into_a_root_being_added_waits_then_refuses(pg_url):
    """The other order: bob's add_user holds its root (an empty directory of
    alice's tree) when the purge starts, so the purge's first read of the
    users does not see him; its walk waits on that directory until bob is
    committed, and must not then delete his root."""
    purger = open_catalog(reactor, pg_url, threads=1)
    adder = open_catalog(reactor, pg_url, threads=1)
    try:
        # A file a former account "bob" owns: the new bob's add_user
        # disowns it, and the test holds it to hold add_user up.
        await purger.add_user("bob", "pw", root="/old-bob")
        kept = await upload(purger, "bob", "/old-bob/x.txt", 2, "blob-x")
        await purger.delete_user("bob", "keep")
        await purger.add_user("alice", "pw", root="/shared/alice")
        await purger.mkdir("/shared/alice/d1")
        await upload(purger, "alice", "/shared/alice/a.txt", 3, "blob-a")
        with psycopg.connect(pg_url) as holder:
            holder.execute("SELECT inode FROM inodes WHERE inode = %s FOR UPDATE", (kept.inode,))
            adding = adder.add_user("bob", "pw", root="/shared/alice/d1")
            [adder_pid] = await waiting_on(pg_url, holder.info.backend_pid)
            purging = purger.delete_user("alice", "purge")
            await waiting_on(pg_url, adder_pid)
            holder.rollback()
        await adding
        with pytest.raises(NotEmpty, match="shared with bob"):
            await purging
        users = {u.name: u.root for u in await adder.list_users()}
        assert users == {"alice": "/shared/alice", "bob": "/shared/alice/d1"}
        assert (await adder.stat("/shared/alice/d1")).kind == "dir"
        assert (await adder.stat("/shared/alice/a.txt")).size == 3
    finally:
        purger.close()
        adder.close()


# -- whole-table maintenance scans -------------------------------------------------


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_maintenance_scans_outlast_a_low_statement_limit_requests_do_not(pg_url):
    """statement_timeout set low for the connection (as an operator could for
    the role); lock_timeout off, so only the statement limit can end a wait.
    A table lock the test holds makes any statement on that table long."""
    limit = 0.2
    url = with_options(pg_url, f"-c statement_timeout={int(limit * 1000)} -c lock_timeout=0")
    cat = open_catalog(reactor, url, threads=1)  # one connection for all
    try:
        await cat.add_user("alice", "pw")
        await upload(cat, "alice", "/alice/a.txt", 3, "blob-a")
        scans = {
            "status": lambda: cat.status(),
            "gc": lambda: cat.collectable_blobs(10),
            "repair": lambda: cat.under_replicated(10),
            "count": lambda: cat.count_under_replicated(),
            "compaction": lambda: cat.compaction_candidates(2, 10),
        }
        for name, scan in scans.items():
            with psycopg.connect(pg_url) as holder:
                holder.execute("LOCK TABLE blobs, inodes IN ACCESS EXCLUSIVE MODE")
                running = scan()
                [pid] = await waiting_on(pg_url, holder.info.backend_pid)
                # Well past the limit, and still running.
                assert await running_longer_than(pg_url, pid, 3 * limit), name
                assert not running.called, name
                holder.rollback()
            await running
        # The same pooled connection still bounds a request's statements.
        with psycopg.connect(pg_url) as holder:
            holder.execute("LOCK TABLE inodes IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(CatalogUnavailable, match="statement timeout"):
                await cat.list_dir("/alice")
            holder.rollback()
        assert [e.name for e in await cat.list_dir("/alice")] == ["a.txt"]
        shown = await cat._runner.run(lambda tx: tx.value("SHOW statement_timeout"), write=False)
        assert shown == "200ms"
    finally:
        cat.close()


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_adding_a_user_keeps_the_statement_limit_so_the_roots_parent_frees(pg_url):
    """add_user's usage scan reads inodes whole, inside the write transaction
    that created the root and so holds the root's parent (/shared, where
    others write).  Without a statement limit, a long scan made every write
    there wait lock_timeout and fail; with the connection's limit, the scan
    is cancelled and the parent is free again.  The adder's lock_timeout is
    off, so only the statement limit can end its wait."""
    limit = 0.2
    url = with_options(pg_url, f"-c statement_timeout={int(limit * 1000)} -c lock_timeout=0")
    adder = open_catalog(reactor, url, threads=1)
    # A short lock wait, so the old code fails here instead of hanging.
    other = open_catalog(reactor, with_options(pg_url, "-c lock_timeout=2s"))
    try:
        await adder.add_user("alice", "pw", root="/shared/alice")
        await upload(adder, "alice", "/shared/alice/a.txt", 3, "blob-a")
        await adder.delete_user("alice", "keep")
        with psycopg.connect(pg_url) as holder:
            # Stands in for a scan that is simply long on a huge catalog:
            # the usage scan (_owned reads versions) waits, /shared held.
            holder.execute("LOCK TABLE versions IN ACCESS EXCLUSIVE MODE")
            adding = adder.add_user("bob", "pw", root="/shared/bob", adopt_files=True)
            await waiting_on(pg_url, holder.info.backend_pid)
            made = await other.mkdir("/shared/carol")
            assert made.path == "/shared/carol"
            with pytest.raises(CatalogUnavailable, match="statement timeout"):
                await adding
            holder.rollback()
        with pytest.raises(NotFound):
            await other.get_user("bob")
        # Once the scan is quick again, the same command works.
        await other.add_user("alice", "pw2", root="/shared/alice", adopt_files=True)
        assert (await other.get_user("alice")).used_files == 1
    finally:
        adder.close()
        other.close()
