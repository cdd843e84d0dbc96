"""The maintenance lease keeper on a catalog whose answers the test holds
back: a renewal still in flight when the service stops must not take the
lease back after it was released."""

from __future__ import annotations

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock

from wsfront.maintenance.lease import LeaseKeeper


class HeldBackCatalog:
    """acquire_lease answers only when the test says so; every call to the
    lease is recorded in order."""

    def __init__(self) -> None:
        self.asked: list[Deferred] = []
        self.calls: list[str] = []

    def acquire_lease(self, name: str, owner: str, ttl: float) -> Deferred:
        self.calls.append("acquire")
        d: Deferred = Deferred()
        self.asked.append(d)
        return d

    def release_lease(self, name: str, owner: str) -> Deferred:
        self.calls.append("release")
        d: Deferred = Deferred()
        d.callback(None)
        return d


def test_a_renewal_in_flight_at_stop_is_released_after_it_answers():
    catalog = HeldBackCatalog()
    keeper = LeaseKeeper(Clock(), catalog, "fe-a", ttl_seconds=30)
    keeper.start()
    assert catalog.calls == ["acquire"]
    stopped = keeper.stop()
    assert not stopped.called and catalog.calls == ["acquire"]  # waits for the answer
    catalog.asked[0].callback(True)  # the catalog granted it meanwhile
    assert stopped.called
    assert catalog.calls == ["acquire", "release"]
    assert not keeper.held


def test_a_stopped_keeper_neither_asks_nor_claims_the_lease():
    catalog = HeldBackCatalog()
    keeper = LeaseKeeper(Clock(), catalog, "fe-a", ttl_seconds=30)
    keeper.start()
    catalog.asked[0].callback(True)
    assert keeper.held
    keeper.stop()
    assert catalog.calls == ["acquire", "release"] and not keeper.held
    renewed = ensureDeferred(keeper.renew())
    assert renewed.called and renewed.result is False
    assert catalog.calls == ["acquire", "release"]  # not asked again


class AnsweringCatalog:
    """acquire_lease answers at once with the next of ``answers``."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = list(answers)

    def acquire_lease(self, name: str, owner: str, ttl: float) -> Deferred:
        d: Deferred = Deferred()
        d.callback(self.answers.pop(0))
        return d


def test_losing_the_lease_and_renewing_it_after_it_lapsed_are_logged():
    """Found by hand: a front end SIGSTOPped for 40 s (liveness lease 30 s)
    lost the maintenance lease to the other one, which also marked its
    uploads interrupted; once continued, its log said nothing of either."""
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock = Clock()
        catalog = AnsweringCatalog([True, True, True, False])
        keeper = LeaseKeeper(clock, catalog, "fe-a", ttl_seconds=30)
        ensureDeferred(keeper.renew())
        clock.advance(10)
        ensureDeferred(keeper.renew())  # on time: nothing to say
        clock.advance(45)  # frozen past the expiry
        ensureDeferred(keeper.renew())
        ensureDeferred(keeper.renew())  # another front end has it now
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [
        e["log_format"].format(**e)
        for e in events
        if e.get("log_namespace") == "wsfront.maintenance.lease"
    ]
    assert said == [
        "fe-a holds the maintenance lease",
        "fe-a renewed the maintenance lease 15.0s after it lapsed",
        "fe-a no longer holds the maintenance lease",
    ]


class LifeCatalog:
    """acquire_lease answers with the next of ``answers`` (an exception is
    raised: the catalog did not answer); records the token asked under."""

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.tokens: list[str | None] = []
        self.released: list[str | None] = []

    def acquire_lease(self, name, owner, ttl, token=None, holder=None) -> Deferred:
        self.tokens.append(token)
        answer = self.answers.pop(0)
        d: Deferred = Deferred()
        if isinstance(answer, Exception):
            d.errback(answer)
        else:
            d.callback(answer)
        return d

    def release_lease(self, name, owner, token=None) -> Deferred:
        self.released.append(token)
        d: Deferred = Deferred()
        d.callback(True)
        return d


def test_a_life_renews_under_its_token_and_hears_of_a_refusal_not_of_an_outage():
    """A refused renewal of the liveness lease means another life has the
    front end's name (``FrontendService._name_lost``); a catalog that did
    not answer means nothing of the kind."""
    from wsfront.maintenance.name_claim import Life

    refused: list[bool] = []
    catalog = LifeCatalog([True, ConnectionError("catalog down"), True, False])
    keeper = LeaseKeeper(
        Clock(), catalog, "fe-a", "front-end:fe-a", 30,
        life=Life("t1", "host h, pid 1"), on_refused=lambda: refused.append(True),
    )  # fmt: skip
    for _ in range(3):
        ensureDeferred(keeper.renew())
    assert refused == [] and keeper.held
    ensureDeferred(keeper.renew())
    assert refused == [True] and not keeper.held
    assert catalog.tokens == ["t1"] * 4
    keeper = LeaseKeeper(Clock(), catalog, "fe-a", life=Life("t2", "h"))
    catalog.answers = [True]
    keeper.start()
    keeper.stop()
    assert catalog.released == ["t2"]  # given back under its own token only
