"""CatalogSnapshot: one catalog query per ttl however many scrapes and
status pages ask, concurrent askers share it, and a failing query keeps
the last numbers instead of failing the scrape."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from wsfront.metrics_catalog import CatalogSnapshot


class SlowCatalog:
    """Answers each query when the test says so."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Deferred]] = []
        self.broken = False

    def _ask(self, what: str) -> Deferred:
        if self.broken:
            return fail(RuntimeError("catalog down"))
        d: Deferred = Deferred()
        self.asked.append((what, d))
        return d

    def replica_health(self, with_paths=True):
        assert not with_paths, "the snapshot never needs the unavailable paths"
        return self._ask("health")

    def list_uploads(self):
        return self._ask("uploads")

    def list_jobs(self, states):
        return self._ask("jobs")

    def answer(self, count: int, uploads: list, jobs: list) -> None:
        answers = {"health": health(count), "uploads": uploads, "jobs": jobs}
        asked, self.asked = self.asked, []
        for what, d in asked:
            d.callback(answers[what])


def health(under: int, unavailable: int = 0) -> dict:
    """A ``replica_health`` answer: ``under`` blobs (and files) short of
    live replicas, ``unavailable`` of them with none."""
    return {
        "under_replicated": under,
        "under_replicated_files": under,
        "unavailable": unavailable,
        "unavailable_files": unavailable,
        "unavailable_paths": [],
    }


def upload(owner: str, state: str):
    return SimpleNamespace(owner=owner, state=state)


def test_concurrent_refreshes_share_one_query_and_the_ttl_holds_it():
    clock, catalog = Clock(), SlowCatalog()
    snap = CatalogSnapshot(clock, catalog, ttl=5.0)
    got = []
    snap.refresh().addCallback(got.append)
    snap.refresh().addCallback(got.append)
    assert len(catalog.asked) == 3 and got == []
    jobs = [SimpleNamespace(kind="repair", state="queued")]
    catalog.answer(4, [upload("fe-a", "active"), upload("fe-b", "interrupted")], jobs)
    assert got == [snap, snap]
    assert snap.under_replicated == 4
    assert snap.uploads_by_owner() == {"fe-a": {"active": 1}, "fe-b": {"interrupted": 1}}
    assert snap.jobs == {("repair", "queued"): 1}
    clock.advance(4.9)
    assert snap.refresh().called and catalog.asked == []
    clock.advance(0.2)
    snap.refresh()
    assert len(catalog.asked) == 3


def test_a_slow_query_gets_the_last_numbers_after_wait_and_goes_on():
    """A scrape waits at most ``wait`` on the replica counts' query (it
    reads every blob, and is slowest in an outage): then it gets the last
    numbers, and their age, while the query goes on for the next one."""
    clock, catalog = Clock(), SlowCatalog()
    snap = CatalogSnapshot(clock, catalog, ttl=5.0, wait=1.0)
    snap.refresh()
    catalog.answer(4, [], [])
    clock.advance(7.0)
    first, second = snap.refresh(), snap.refresh()
    assert not first.called and len(catalog.asked) == 3
    clock.advance(1.0)
    assert first.called and second.called
    assert snap.under_replicated == 4 and snap.age() == 8.0
    catalog.answer(9, [], [])
    assert snap.under_replicated == 9 and snap.age() == 0
    assert snap.refresh().called and catalog.asked == []


def test_a_failing_catalog_keeps_the_last_numbers_and_counts_the_error():
    clock, catalog = Clock(), SlowCatalog()
    snap = CatalogSnapshot(clock, catalog, ttl=0)
    snap.refresh()
    catalog.answer(2, [], [])
    catalog.broken = True
    d = snap.refresh()
    assert d.called and d.result is snap
    assert snap.under_replicated == 2
    assert snap.errors == 3


def test_an_answer_that_arrives_at_once_does_not_wedge_later_refreshes():
    clock = Clock()
    catalog = SimpleNamespace(
        replica_health=lambda with_paths: succeed(health(1)),
        list_uploads=lambda: succeed([]),
        list_jobs=lambda states: succeed([]),
    )
    snap = CatalogSnapshot(clock, catalog, ttl=1.0)
    assert snap.refresh().called
    catalog.replica_health = lambda with_paths: succeed(health(7, 2))
    clock.advance(1.0)
    assert snap.refresh().called
    assert (snap.under_replicated, snap.unavailable, snap.unavailable_files) == (7, 2, 2)
