"""Contract: storage-node registry, admin jobs, leases, status, close."""

import pytest
import pytest_twisted

from wsfront.catalog import ICatalog, open_catalog
from wsfront.catalog.errors import CatalogClosed, LeaseHeld, NotFound

pytest_plugins = ["tests.catalog_fixtures"]


def test_both_backends_provide_the_interface(catalog):
    from zope.interface.verify import verifyObject

    assert verifyObject(ICatalog, catalog)


def test_unknown_url_schemes_are_refused():
    from twisted.internet import reactor

    with pytest.raises(ValueError):
        open_catalog(reactor, "mysql://x/y")
    with pytest.raises(ValueError):
        open_catalog(reactor, "sqlite://relative/path")


@pytest_twisted.ensureDeferred
async def test_a_nodes_store_id_is_set_by_compare_and_set(catalog, clock):
    """The first id is taken once (of two front ends, one wins); a
    replacement only from the id the registry holds, recording the old
    id, when and how many replicas were lost; re-registering keeps it."""
    first, second, third = "a" * 32, "b" * 32, "c" * 32
    await catalog.register_node("s1", "tcp:127.0.0.1:7001")
    [node] = await catalog.list_nodes()
    assert node.store_id is None
    assert await catalog.set_node_store("s1", None, first)
    assert not await catalog.set_node_store("s1", None, second)  # another took it first
    [node] = await catalog.list_nodes()
    assert (node.store_id, node.store_replaced, node.store_replaced_at) == (first, None, None)
    assert not await catalog.set_node_store("s1", second, third, 1)  # not what it holds
    clock.advance(7)
    assert await catalog.set_node_store("s1", first, second, 4)
    assert not await catalog.set_node_store("s1", first, third, 4)  # already replaced
    await catalog.register_node("s1", "tcp:127.0.0.1:7009")
    [node] = await catalog.list_nodes()
    assert (node.store_id, node.store_replaced, node.store_lost) == (second, first, 4)
    assert node.store_replaced_at == clock()
    assert not await catalog.set_node_store("s9", None, first)  # no such server


@pytest_twisted.ensureDeferred
async def test_register_node_upserts_and_health_is_recorded(catalog):
    await catalog.register_node("s1", "tcp:127.0.0.1:7001")
    await catalog.register_node("s2", "tcp:127.0.0.1:7002")
    node = await catalog.register_node("s1", "tcp:127.0.0.1:7101")
    assert node.endpoint == "tcp:127.0.0.1:7101"
    await catalog.set_node_health("s1", "up", 10, 100, 5.0)
    nodes = await catalog.list_nodes()
    assert [(n.name, n.state, n.free_bytes, n.total_bytes, n.seen_at) for n in nodes] == [
        ("s1", "up", 10, 100, 5.0),
        ("s2", "unknown", None, None, None),
    ]
    with pytest.raises(NotFound):
        await catalog.set_node_health("s9", "up", 1, 1, 1.0)


@pytest_twisted.ensureDeferred
async def test_health_of_an_endpoint_no_longer_registered_is_not_recorded(catalog):
    """A front end that has not caught up with a move records nothing of
    the old address over what the registry says of the new one (``wsfs
    status`` flapped between the two front ends' views)."""
    await catalog.register_node("s1", "tcp:127.0.0.1:7001")
    await catalog.set_node_health("s1", "up", 10, 100, 5.0, None, "tcp:127.0.0.1:7001")
    await catalog.register_node("s1", "tcp:127.0.0.1:7101")  # moved, by another front end
    stale = await catalog.set_node_health(
        "s1", "down", None, None, None, "connection refused", "tcp:127.0.0.1:7001"
    )
    assert stale is None
    [node] = await catalog.list_nodes()
    assert (node.state, node.seen_at, node.last_error) == ("up", 5.0, None)
    fresh = await catalog.set_node_health("s1", "up", 20, 100, 9.0, None, "tcp:127.0.0.1:7101")
    assert (fresh.state, fresh.free_bytes, fresh.seen_at) == ("up", 20, 9.0)
    with pytest.raises(NotFound):
        await catalog.set_node_health("s9", "up", 1, 1, 1.0, None, "tcp:127.0.0.1:7001")


@pytest_twisted.ensureDeferred
async def test_a_down_node_keeps_why_as_one_short_line_until_it_is_up(catalog):
    from wsfront.catalog._cluster import NODE_ERROR_MAX

    await catalog.register_node("s1", "tcp:127.0.0.1:7001")
    node = await catalog.set_node_health("s1", "down", None, None, None, "connection refused")
    assert (node.state, node.last_error) == ("down", "connection refused")
    # A server's own message is flattened to one line and capped.
    said = "server closed the connection:\n\x1b[31mgo away\x00 " + "x" * 1000
    node = await catalog.set_node_health("s1", "down", None, None, None, said)
    assert node.last_error.startswith("server closed the connection: [31mgo away x")
    assert len(node.last_error) == NODE_ERROR_MAX and node.last_error.endswith("...")
    assert [n.last_error for n in await catalog.list_nodes()] == [node.last_error]
    assert (await catalog.status())["nodes"][0].last_error == node.last_error
    up = await catalog.set_node_health("s1", "up", 10, 100, 5.0)
    assert up.last_error is None
    assert (await catalog.set_node_health("s1", "down", 1, 2, 3.0, " \n ")).last_error is None


@pytest_twisted.ensureDeferred
async def test_job_lifecycle_queued_running_done(catalog):
    job = await catalog.enqueue_job("repair", {"limit": 5})
    assert (job.state, job.owner, job.args) == ("queued", None, {"limit": 5})
    assert await catalog.claim_job("fe1", ["drain"]) is None
    claimed = await catalog.claim_job("fe1", ["repair", "drain"])
    assert (claimed.job_id, claimed.state, claimed.owner) == (job.job_id, "running", "fe1")
    assert await catalog.claim_job("fe2", ["repair"]) is None
    with pytest.raises(LeaseHeld):
        await catalog.update_job(job.job_id, "fe2", claimed.claim, {"done": 1})
    updated = await catalog.update_job(job.job_id, "fe1", claimed.claim, {"done": 1})
    assert updated.progress == {"done": 1}
    done = await catalog.finish_job(job.job_id, "fe1", claimed.claim, result={"copied": 3})
    assert (done.state, done.result) == ("done", {"copied": 3})
    assert (await catalog.get_job(job.job_id)) == done
    with pytest.raises(LeaseHeld):
        await catalog.finish_job(job.job_id, "fe1", claimed.claim)


@pytest_twisted.ensureDeferred
async def test_a_job_claimed_again_under_the_same_name_refuses_the_earlier_claim(catalog):
    """A restarted front end has the name of the run before it: once the
    job was re-queued and claimed again under that name, only the new
    claim changes it; the old run's progress, end, failure and re-queue
    are refused (LeaseHeld) and leave the new run's row as it was."""
    job = await catalog.enqueue_job("repair", {})
    assert job.claim == 0
    first = await catalog.claim_job("fe1", ["repair"])
    await catalog.update_job(job.job_id, "fe1", first.claim, {"run": 1})
    await catalog.requeue_job(job.job_id, "fe1", first.claim, "fe1 restarted; re-queued")
    second = await catalog.claim_job("fe1", ["repair"])
    assert (second.job_id, second.owner) == (job.job_id, "fe1")
    assert (first.claim, second.claim) == (1, 2)
    held = await catalog.update_job(job.job_id, "fe1", second.claim, {"run": 2})
    old_run = [
        lambda: catalog.update_job(job.job_id, "fe1", first.claim, {"run": 1, "more": 1}),
        lambda: catalog.finish_job(job.job_id, "fe1", first.claim, result={"run": 1}),
        lambda: catalog.finish_job(job.job_id, "fe1", first.claim, error="old run failed"),
        lambda: catalog.requeue_job(job.job_id, "fe1", first.claim, "old run; re-queued"),
    ]
    for change in old_run:
        with pytest.raises(LeaseHeld, match="claimed again by fe1"):
            await change()
        assert await catalog.get_job(job.job_id) == held
    done = await catalog.finish_job(job.job_id, "fe1", second.claim, result={"run": 2})
    assert (done.state, done.claim, done.error) == ("done", 2, None)
    assert (done.progress, done.result) == ({"run": 2}, {"run": 2})


@pytest_twisted.ensureDeferred
async def test_failed_jobs_keep_their_error_and_jobs_list_by_state(catalog):
    a = await catalog.enqueue_job("repair", {})
    b = await catalog.enqueue_job("repair", {})
    claimed = await catalog.claim_job("fe1", ["repair"])
    failed = await catalog.finish_job(a.job_id, "fe1", claimed.claim, error="no nodes")
    assert (failed.state, failed.error) == ("failed", "no nodes")
    assert [j.job_id for j in await catalog.list_jobs(["queued"])] == [b.job_id]
    assert [j.job_id for j in await catalog.list_jobs()] == [a.job_id, b.job_id]
    with pytest.raises(NotFound):
        await catalog.get_job(10**6)


@pytest_twisted.ensureDeferred
async def test_a_lease_has_one_holder_until_released_or_expired(catalog, clock):
    assert await catalog.acquire_lease("repair", "fe1", 30)
    assert not await catalog.acquire_lease("repair", "fe2", 30)
    assert await catalog.acquire_lease("repair", "fe1", 30)  # renewal
    clock.advance(31)
    assert await catalog.acquire_lease("repair", "fe2", 30)
    assert not await catalog.release_lease("repair", "fe1")
    assert await catalog.release_lease("repair", "fe2")
    assert await catalog.acquire_lease("repair", "fe1", 30)


@pytest_twisted.ensureDeferred
async def test_a_lease_is_renewed_only_by_the_life_that_holds_it(catalog, clock):
    """Leases went by owner name alone: a second process given a front
    end's --name renewed the first one's leases as its own."""
    assert await catalog.acquire_lease("front-end:a", "a", 30, "life1", "host h pid 1")
    assert not await catalog.acquire_lease("front-end:a", "a", 30, "life2", "host h pid 2")
    assert not await catalog.acquire_lease("front-end:a", "a", 30)  # no token: no life's
    assert await catalog.acquire_lease("front-end:a", "a", 30, "life1", "host h pid 1")
    row = await catalog.get_lease_row("front-end:a")
    assert (row.owner, row.token, row.holder) == ("a", "life1", "host h pid 1")
    assert (row.expires_at, row.ttl_seconds) == (clock.now + 30, 30)
    # Another life cannot give it back for the holder.
    assert not await catalog.release_lease("front-end:a", "a", "life2")
    clock.advance(31)
    assert await catalog.acquire_lease("front-end:a", "a", 30, "life2", "host h pid 2")
    # The first life, back from a freeze, finds it lost the name.
    assert not await catalog.acquire_lease("front-end:a", "a", 30, "life1", "host h pid 1")
    assert await catalog.release_lease("front-end:a", "a", "life2")
    assert await catalog.get_lease_row("front-end:a") is None


@pytest_twisted.ensureDeferred
async def test_a_name_claim_never_takes_another_lifes_lease_by_its_expiry(catalog, clock):
    """``lapsed=False``: "expired" is the caller's clock, which may run
    ahead of the holder's; only a free lease or the life's own is taken.
    The default (the maintenance lease between front ends) keeps expiry."""
    assert await catalog.acquire_lease("front-end:a", "a", 30, "life1", "pid 1", lapsed=False)
    clock.advance(31)
    assert not await catalog.acquire_lease("front-end:a", "a", 30, "life2", "pid 2", lapsed=False)
    assert (await catalog.get_lease_row("front-end:a")).token == "life1"
    assert await catalog.acquire_lease("front-end:a", "a", 30, "life1", "pid 1", lapsed=False)
    clock.advance(31)
    assert await catalog.acquire_lease("front-end:a", "a", 30, "life2", "pid 2")
    assert await catalog.acquire_lease("maintenance", "a", 30, "life2", "pid 2")
    clock.advance(31)
    assert await catalog.acquire_lease("maintenance", "b", 30, "life3", "pid 3")


@pytest_twisted.ensureDeferred
async def test_a_lease_is_taken_over_only_as_it_was_seen(catalog, clock):
    """The compare-and-set of a start that watched a lease for a renewal:
    one that lands meanwhile wins."""
    assert await catalog.acquire_lease("front-end:a", "a", 30, "life1", "pid 1")
    seen = await catalog.get_lease_row("front-end:a")
    clock.advance(1)
    assert await catalog.acquire_lease("front-end:a", "a", 30, "life1", "pid 1")  # renewed
    assert not await catalog.take_over_lease("front-end:a", "a", 30, "life2", "pid 2", seen)
    seen = await catalog.get_lease_row("front-end:a")
    assert await catalog.take_over_lease("front-end:a", "a", 9, "life2", "pid 2", seen)
    row = await catalog.get_lease_row("front-end:a")
    assert (row.token, row.holder, row.expires_at) == ("life2", "pid 2", clock.now + 9)
    assert not await catalog.take_over_lease("front-end:a", "a", 9, "life3", "pid 3", seen)


@pytest_twisted.ensureDeferred
async def test_get_lease_reads_the_holder_and_expiry_and_changes_nothing(catalog, clock):
    assert await catalog.get_lease("maintenance") is None
    assert await catalog.acquire_lease("maintenance", "fe1", 30)
    assert await catalog.get_lease("maintenance") == ("fe1", clock.now + 30)
    clock.advance(31)
    # Expired, and still shown as it is: asking took nothing over.
    assert await catalog.get_lease("maintenance") == ("fe1", clock.now - 1)
    assert await catalog.acquire_lease("maintenance", "fe1", 30)
    assert await catalog.release_lease("maintenance", "fe1")
    assert await catalog.get_lease("maintenance") is None


@pytest_twisted.ensureDeferred
async def test_list_leases_matches_the_prefix_exactly(catalog, clock):
    names = ["front-end:a", "front-end:b", "FRONT-END:c", "front-endXd", "front-end", "maint"]
    names += ["a_b%:1", "aXbY:2", "a_b%"]
    for name in names:
        assert await catalog.acquire_lease(name, "o-" + name, 30)
    until = clock.now + 30
    assert await catalog.list_leases("front-end:") == {
        "front-end:a": ("o-front-end:a", until),
        "front-end:b": ("o-front-end:b", until),
    }
    # LIKE's wildcards in a prefix are plain characters.
    assert list(await catalog.list_leases("a_b%")) == ["a_b%", "a_b%:1"]
    assert len(await catalog.list_leases("")) == len(names)
    assert await catalog.list_leases("nothing") == {}


@pytest_twisted.ensureDeferred
async def test_list_leases_fetches_only_the_matching_rows(catalog):
    """The prefix is filtered by the database, not after reading every lease."""
    from wsfront.catalog import _cluster

    for i in range(20):
        assert await catalog.acquire_lease(f"other:{i}", "x", 30)
    assert await catalog.acquire_lease("front-end:a", "fe-a", 30)
    fetched = []

    class CountingTx:
        def __init__(self, tx):
            self._tx = tx

        def all(self, sql, *params):
            rows = self._tx.all(sql, *params)
            fetched.extend(rows)
            return rows

    leases = await catalog._runner.run(
        lambda tx: _cluster.list_leases(CountingTx(tx), "front-end:"), write=False
    )
    assert list(leases) == ["front-end:a"]
    assert len(fetched) == 1


@pytest_twisted.ensureDeferred
async def test_status_counts_files_bytes_uploads_and_nodes(catalog):
    await catalog.register_node("s1", "tcp:127.0.0.1:7001")
    await catalog.mkdir("/d")
    up = await catalog.begin_upload(
        "alice", "/d/f", base_length=0, blob_id="b1", replicas=["s1"],
        wanted_replicas=2, owner="fe1", expires_at=catalog._clock() + 60,
    )  # fmt: skip
    await catalog.commit_upload(up.upload_id, 1, 123)
    await catalog.begin_upload(
        "alice", "/d/g", base_length=0, blob_id="b2", replicas=["s1"],
        wanted_replicas=2, owner="fe1", expires_at=catalog._clock() + 60,
    )  # fmt: skip
    status = await catalog.status()
    assert {k: status[k] for k in ("files", "bytes", "dirs", "live_uploads")} == {
        "files": 1,
        "bytes": 123,
        "dirs": 2,
        "live_uploads": 1,
    }
    assert status["under_replicated"] == 1
    assert [n.name for n in status["nodes"]] == ["s1"]


@pytest_twisted.ensureDeferred
async def test_status_counts_only_replicas_on_servers_not_recorded_down(catalog):
    """A replica on a server recorded down (a draining one too: it keeps
    its state and records the error) does not count; a file with no other
    is unavailable and named.  A server never probed counts."""
    for name in ("s1", "s2", "s3", "s4"):
        await catalog.register_node(name, f"tcp:127.0.0.1:700{name[1]}")
    await catalog.mkdir("/d")
    for path, blob, replicas in (("/d/a", "b1", ["s1", "s2"]), ("/d/b", "b2", ["s1", "s3"]),
                                 ("/d/c", "b3", ["s2", "s4"])):  # fmt: skip
        up = await catalog.begin_upload(
            "alice", path, base_length=0, blob_id=blob, replicas=replicas,
            wanted_replicas=2, owner="fe1", expires_at=catalog._clock() + 60,
        )  # fmt: skip
        await catalog.commit_upload(up.upload_id, 1, 10)
    status = await catalog.status()
    assert (status["under_replicated"], status["unavailable"]) == (0, 0)
    await catalog.set_node_health("s1", "down", None, None, None, "connection refused")
    await catalog.set_node_draining("s3", True)
    await catalog.set_node_health("s3", "down", None, None, None, "connection refused")
    await catalog.set_node_health("s2", "up", 1, 2, catalog._clock())
    status = await catalog.status()
    assert (status["under_replicated"], status["under_replicated_files"]) == (2, 2)
    assert (status["unavailable"], status["unavailable_files"]) == (1, 1)
    assert status["unavailable_paths"] == ["/d/b"]
    await catalog.set_node_health("s3", "up", 1, 2, catalog._clock())  # still draining
    status = await catalog.status()
    assert (status["under_replicated"], status["unavailable"], status["unavailable_paths"]) == (
        2, 0, []
    )  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_a_closed_catalog_refuses_work(catalog):
    await catalog.close()
    with pytest.raises(RuntimeError):
        await catalog.stat("/")
    with pytest.raises(CatalogClosed, match="catalog is closed"):
        await catalog.mkdir("/d")


@pytest_twisted.ensureDeferred
async def test_work_waiting_to_ask_the_catalog_is_told_when_it_closes(catalog):
    called = []
    catalog.when_closed(lambda: called.append("a"))
    forget = catalog.when_closed(lambda: called.append("b"))
    catalog.when_closed(lambda: called.append("c"))
    forget()
    assert not catalog.closed and called == []
    await catalog.close()
    assert catalog.closed and called == ["a", "c"]
    await catalog.close()  # once only
    catalog.when_closed(lambda: called.append("late"))  # at once
    assert called == ["a", "c", "late"]
