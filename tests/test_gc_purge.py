"""GC's pass purges the rows of uploads finished longer ago than the
retention, after it expired the overdue ones: in transactions of its batch,
counted in its result and in one log line; with real storage servers, on
both catalog backends, nothing stored or resumable is lost by it."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher

from tests.maintenance_env import blobs_on, full_path, payload
from tests.transfer_env import Feeder, TransferEnv
from wsfront.catalog import errors as catalog_errors
from wsfront.catalog import open_catalog
from wsfront.catalog.records import FINISHED_STATES, UPLOAD_STATES
from wsfront.maintenance.gc import GarbageCollector, GCSettings
from wsfront.maintenance.inventory import referenced_blob_ids

pytest_plugins = ["tests.catalog_fixtures"]

DAY = 86400.0
PURGED = "gc: purged {count} upload(s) finished over {days:g} days ago"


@pytest.fixture
def env(tmp_path, catalog_url):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, nodes=3, catalog_url=catalog_url)
    pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


@pytest.fixture
def purge_lines():
    """The GC purge's log events, as they come."""
    seen: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_format") == PURGED:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def collector(env, clock, **settings) -> GarbageCollector:
    settings.setdefault("grace_seconds", 100.0)
    settings.setdefault("orphan_grace_seconds", 100.0)
    return GarbageCollector(clock, env.catalog, env.transfers.pool, GCSettings(**settings))


def counting_purges(env) -> list[tuple[int | None, int]]:
    """(limit, purged) of each ``purge_uploads`` call from now on."""
    calls: list[tuple[int | None, int]] = []
    purge = env.catalog.purge_uploads

    async def counted(before, limit=None, after=None):
        purged = await purge(before, limit, after)
        calls.append((limit, purged.count))
        return purged

    env.catalog.purge_uploads = counted
    return calls


async def all_uploads(env) -> list:
    return await env.catalog.list_uploads(states=sorted(UPLOAD_STATES))


async def interrupted(env, vpath: str, data: bytes) -> None:
    from twisted.internet import reactor

    session = await env.transfers.open_write(env.user, vpath)
    await Feeder(reactor, session, data).start()
    await session.interrupt()


@pytest_twisted.ensureDeferred
async def test_a_pass_expires_then_purges_old_finished_uploads_in_batches(env, purge_lines):
    from twisted.internet import reactor

    files = {f"/f{i}.bin": payload(20_000 + i) for i in range(4)}
    for vpath, data in files.items():
        await env.upload(vpath, data)
    files["/f0.bin"] = payload(30_000)
    await env.upload("/f0.bin", files["/f0.bin"])  # a second committed upload of one file
    whole = payload(9000)
    await interrupted(env, "/abandoned.bin", payload(5000))
    await interrupted(env, "/kept.bin", whole[:7000])
    kept = await env.catalog.find_upload(full_path(env, "/kept.bin"))
    assert len(await all_uploads(env)) == 7
    calls = counting_purges(env)
    clock = task.Clock()
    # Past the upload expiry and the retention: the abandoned upload expires
    # in this pass, the committed ones are purged; the one expired now is
    # kept for the retention from now (its expiry is its end).
    clock.advance(reactor.seconds() + env.settings.upload_expiry + 8 * DAY)
    # /kept.bin's client is still around: its upload is kept from expiring.
    await env.catalog.checkpoint(kept.upload_id, kept.epoch, kept.checkpoint,
                                 expires_at=clock.seconds() + DAY)  # fmt: skip
    await env.catalog.interrupt_upload(kept.upload_id, kept.epoch)
    gc = collector(env, clock, batch=2)
    result = await gc.run_pass()
    assert result["expired_uploads"] == 1
    assert result["purged_uploads"] == 5
    assert calls == [(2, 2), (2, 2), (2, 1)]
    assert [(e["count"], e["days"]) for e in purge_lines] == [(5, 7.0)]
    assert sorted((u.path, u.state) for u in await all_uploads(env)) == [
        (full_path(env, "/abandoned.bin"), "expired"),
        (full_path(env, "/kept.bin"), "interrupted"),
    ]
    # The files are whole; the interrupted one resumes; after the grace the
    # blobs stored are exactly those referenced (the abandoned one's freed).
    for vpath, data in files.items():
        assert (await env.download(vpath))[0] == data
    session = await env.transfers.open_write(env.user, "/kept.bin", 7000, resume=True)
    assert session.upload_id == kept.upload_id
    await Feeder(reactor, session, whole[7000:]).start()
    await session.finish()
    assert (await env.download("/kept.bin"))[0] == whole
    clock.advance(7 * DAY)
    later = await gc.run_pass()
    assert later["purged_uploads"] == 2  # the expired one, and /kept.bin's commit
    assert await all_uploads(env) == []
    stored = set()
    for name in env.nodes:
        stored |= await blobs_on(env, name)
    assert stored == await referenced_blob_ids(env.catalog)


@pytest_twisted.ensureDeferred
async def test_recent_finished_uploads_stay_until_their_retention_is_over(env, purge_lines):
    from twisted.internet import reactor

    await env.upload("/a.bin", payload(1000))
    await env.upload("/b.bin", payload(2000))
    [first, second] = await all_uploads(env)
    clock = task.Clock()
    clock.advance(reactor.seconds() + 6 * DAY)
    gc = collector(env, clock)
    assert (await gc.run_pass())["purged_uploads"] == 0
    assert len(await all_uploads(env)) == 2
    clock.advance(1 * DAY + 60)
    assert (await gc.run_pass())["purged_uploads"] == 2
    for upload in (first, second):
        with pytest.raises(catalog_errors.NotFound):
            await env.catalog.get_upload(upload.upload_id)
    assert [(e["count"], e["days"]) for e in purge_lines] == [(2, 7.0)]


@pytest_twisted.ensureDeferred
async def test_no_retention_keeps_every_finished_upload(env):
    from twisted.internet import reactor

    await env.upload("/a.bin", payload(1000))
    calls = counting_purges(env)
    clock = task.Clock()
    clock.advance(reactor.seconds() + 1000 * DAY)
    result = await collector(env, clock, upload_retention_seconds=None).run_pass()
    assert result["purged_uploads"] == 0 and calls == []
    assert [u.state for u in await all_uploads(env)] == ["committed"]


@pytest_twisted.ensureDeferred
async def test_a_pass_that_lost_the_lease_stops_purging_between_batches(env):
    from twisted.internet import reactor

    for i in range(5):
        await env.upload(f"/f{i}.bin", payload(100 + i))
    calls = counting_purges(env)
    lease = [True]
    purge = env.catalog.purge_uploads

    async def then_lose_the_lease(before, limit=None, after=None):
        purged = await purge(before, limit, after)
        lease[0] = False
        return purged

    env.catalog.purge_uploads = then_lose_the_lease
    clock = task.Clock()
    clock.advance(reactor.seconds() + 8 * DAY)
    result = await collector(env, clock, batch=2).run_pass(keep_going=lambda: lease[0])
    assert result["purged_uploads"] == 2 and calls == [(2, 2)]
    assert len(await all_uploads(env)) == 3
    lease[0] = True
    env.catalog.purge_uploads = purge
    assert (await collector(env, clock, batch=2).run_pass())["purged_uploads"] == 3
    assert not [u for u in await all_uploads(env) if u.state in FINISHED_STATES]


@pytest_twisted.ensureDeferred
async def test_each_batch_of_a_pass_starts_at_the_previous_ones_last_finish(env):
    """The pass hands the catalog's cursor on (``after``: the latest
    ``updated_at`` of the previous batch), so no batch rescans from the
    index's oldest end what earlier ones deleted."""
    from twisted.internet import reactor

    for i in range(5):
        await env.upload(f"/f{i}.bin", payload(100 + i))
    finishes = sorted(u.updated_at for u in await all_uploads(env))
    seen: list[tuple[float | None, object]] = []
    purge = env.catalog.purge_uploads

    async def recorded(before, limit=None, after=None):
        result = await purge(before, limit, after)
        seen.append((after, result))
        return result

    env.catalog.purge_uploads = recorded
    clock = task.Clock()
    clock.advance(reactor.seconds() + 8 * DAY)
    assert (await collector(env, clock, batch=2).run_pass())["purged_uploads"] == 5
    assert [after for after, _ in seen] == [None, finishes[1], finishes[3]]
    assert [r.count for _, r in seen] == [2, 2, 1]
    assert await all_uploads(env) == []


@pytest_twisted.ensureDeferred
async def test_a_backlog_longer_than_a_pass_may_purge_takes_several_passes(env, purge_lines):
    """A pass stops purging once ``purge_pass_seconds`` have gone by on its
    clock (here each batch takes 4 s of it): a backlog that outlasts the
    bound waits for the next pass instead of holding the maintenance tick;
    the next pass goes on where this one stopped."""
    from twisted.internet import reactor

    for i in range(5):
        await env.upload(f"/f{i}.bin", payload(100 + i))
    clock = task.Clock()
    clock.advance(reactor.seconds() + 8 * DAY)
    purge = env.catalog.purge_uploads

    async def slow(before, limit=None, after=None):
        result = await purge(before, limit, after)
        clock.advance(4.0)
        return result

    env.catalog.purge_uploads = slow
    gc = collector(env, clock, batch=1, purge_pass_seconds=10.0)
    assert (await gc.run_pass())["purged_uploads"] == 3
    assert len(await all_uploads(env)) == 2
    assert (await gc.run_pass())["purged_uploads"] == 2
    assert await all_uploads(env) == []
    assert [e["count"] for e in purge_lines] == [3, 2]


@pytest.mark.parametrize("seconds", [0, 0.0, -1.0, float("nan"), float("inf")])
def test_a_purge_pass_with_no_time_to_purge_is_refused_when_the_settings_are_built(seconds):
    """0 or less would purge nothing, silently, pass after pass (NaN never
    compares, inf never stops: neither bounds a pass)."""
    with pytest.raises(ValueError, match="purge_pass_seconds must be a number of seconds above 0"):
        GCSettings(purge_pass_seconds=seconds)
    assert GCSettings(purge_pass_seconds=0.5).purge_pass_seconds == 0.5


@pytest_twisted.ensureDeferred
async def test_a_pass_that_lost_the_lease_stops_expiring_between_batches(env):
    """The lease goes during the first transaction of expiries: the pass
    expires no further batch, and purges and collects nothing after it."""
    from twisted.internet import reactor

    for i in range(3):
        await interrupted(env, f"/i{i}.bin", payload(1000 + i))
    calls = counting_purges(env)
    lease = [True]
    expire = env.catalog.expire_uploads
    batches = []

    async def then_lose_the_lease(now=None, limit=None):
        expired = await expire(now, limit)
        batches.append(len(expired))
        lease[0] = False
        return expired

    env.catalog.expire_uploads = then_lose_the_lease
    clock = task.Clock()
    clock.advance(reactor.seconds() + env.settings.upload_expiry + 8 * DAY)
    gc = collector(env, clock, batch=1, grace_seconds=0.0)
    result = await gc.run_pass(keep_going=lambda: lease[0])
    assert batches == [1] and result["expired_uploads"] == 1
    assert calls == [] and result["purged_uploads"] == 0
    assert result["forgotten"] == 0  # the expired upload's blob waits for the next pass
    assert sorted(u.state for u in await all_uploads(env)) == [
        "expired",
        "interrupted",
        "interrupted",
    ]
    lease[0] = True
    env.catalog.expire_uploads = expire
    assert (await gc.run_pass())["expired_uploads"] == 2


def slow_purges(env, clock, seconds: float = 4.0) -> list[float | None]:
    """Each ``purge_uploads`` call from now on takes ``seconds`` of
    ``clock``; returns the ``after`` of each call, in order."""
    afters: list[float | None] = []
    purge = env.catalog.purge_uploads

    async def slow(before, limit=None, after=None):
        afters.append(after)
        result = await purge(before, limit, after)
        clock.advance(seconds)
        return result

    env.catalog.purge_uploads = slow
    return afters


async def finished_by_a_late_clock(env, vpath: str, finished_at: float) -> str:
    """An upload committed by a front end whose clock says ``finished_at``
    (far behind the collector's); returns its id."""
    late = open_catalog(env.reactor, env.catalog_url, clock=lambda: finished_at)
    try:
        started = await late.start_upload(
            env.user.name, full_path(env, vpath), offset=0, blob_id="blate" + vpath[1:4],
            replicas=["s1"], wanted_replicas=1, owner="fe-late", expires_at=finished_at + DAY,
        )  # fmt: skip
        await late.commit_upload(started.upload.upload_id, 1, 0)
    finally:
        await late.close()
    return started.upload.upload_id


@pytest_twisted.ensureDeferred
async def test_a_pass_goes_on_from_the_cursor_where_the_last_one_stopped(env):
    """The purge's keyset cursor outlives the pass: a backlog several
    passes share is walked once, not from its oldest end by each pass;
    once a pass finds nothing more the next starts at the oldest end."""
    from twisted.internet import reactor

    for i in range(5):
        await env.upload(f"/f{i}.bin", payload(100 + i))
    finishes = sorted(u.updated_at for u in await all_uploads(env))
    clock = task.Clock()
    clock.advance(reactor.seconds() + 8 * DAY)
    afters = slow_purges(env, clock)
    gc = collector(env, clock, batch=1, purge_pass_seconds=10.0)
    assert (await gc.run_pass())["purged_uploads"] == 3
    assert afters == [None, finishes[0], finishes[1]]
    del afters[:]
    assert (await gc.run_pass())["purged_uploads"] == 2
    assert afters == [finishes[2], finishes[3], finishes[4]]  # the last finds nothing more
    del afters[:]
    assert (await gc.run_pass())["purged_uploads"] == 0
    assert afters == [None]
    assert await all_uploads(env) == []


@pytest_twisted.ensureDeferred
async def test_a_row_finished_behind_the_cursor_is_purged_when_the_walk_starts_again(env):
    """A front end whose clock is two days behind finishes an upload while
    a backlog keeps the cursor: the row lands below it.  The walk starts
    again at the oldest end after ``purge_restart_passes`` passes, even
    though the backlog is not over, and purges it."""
    from twisted.internet import reactor

    for i in range(8):
        await env.upload(f"/f{i}.bin", payload(100 + i))
    clock = task.Clock()
    clock.advance(reactor.seconds() + 8 * DAY)
    afters = slow_purges(env, clock)
    gc = collector(env, clock, batch=1, purge_pass_seconds=10.0, purge_restart_passes=2)
    assert (await gc.run_pass())["purged_uploads"] == 3
    late = await finished_by_a_late_clock(env, "/late.bin", reactor.seconds() - 2 * DAY)
    assert (await gc.run_pass())["purged_uploads"] == 3  # above the cursor: not the late row
    assert (await env.catalog.get_upload(late)).state == "committed"
    del afters[:]
    assert (await gc.run_pass())["purged_uploads"] == 3  # pass 3: the walk starts again
    assert afters[0] is None
    with pytest.raises(catalog_errors.NotFound):
        await env.catalog.get_upload(late)
    assert (await gc.run_pass())["purged_uploads"] == 0
    assert await all_uploads(env) == []


@pytest_twisted.ensureDeferred
async def test_a_clock_stepped_back_below_the_cursor_starts_the_walk_again(env):
    """The collector's clock steps back a day and a half: its cutoff is now
    below the cursor, whose range is empty; the pass starts at the oldest
    end instead, and purges what is past the new cutoff (a row another
    front end finished two days behind)."""
    from twisted.internet import reactor

    for i in range(5):
        await env.upload(f"/f{i}.bin", payload(100 + i))
    clock = task.Clock()
    clock.advance(reactor.seconds() + 8 * DAY)
    afters = slow_purges(env, clock)
    gc = collector(env, clock, batch=1, purge_pass_seconds=10.0)
    assert (await gc.run_pass())["purged_uploads"] == 3
    late = await finished_by_a_late_clock(env, "/late.bin", reactor.seconds() - 2 * DAY)
    clock.rightNow -= 1.5 * DAY
    del afters[:]
    assert (await gc.run_pass())["purged_uploads"] == 1
    assert afters[0] is None
    with pytest.raises(catalog_errors.NotFound):
        await env.catalog.get_upload(late)
    assert len(await all_uploads(env)) == 2  # finished after the new cutoff: kept


@pytest.mark.parametrize("passes", [0, -1, 1.5])
def test_a_purge_walk_of_no_pass_is_refused_when_the_settings_are_built(passes):
    with pytest.raises(ValueError, match="purge_restart_passes must be a whole number"):
        GCSettings(purge_restart_passes=passes)
    assert GCSettings(purge_restart_passes=1).purge_restart_passes == 1


@pytest.mark.parametrize("batch", [0, -5, 2.0])
def test_a_gc_batch_of_nothing_is_refused_when_the_settings_are_built(batch):
    """A batch of 0 never comes back short, so the expiry would loop for
    ever; refused where the settings are built, with what was given."""
    with pytest.raises(ValueError, match="batch must be a whole number, at least 1"):
        GCSettings(batch=batch)
    assert GCSettings(batch=1).batch == 1
