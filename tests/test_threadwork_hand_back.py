"""``HandBack``: results of several threads given to the reactor with one
wake-up while it has not yet taken them (``wsstorage.threadwork``), as
the in-process puts of every storage server of a process share it."""

from __future__ import annotations

import gc
import threading
import weakref

from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from wsstorage import putthreads
from wsstorage.threadwork import HandBack, QueueRunner


class Holding:
    """A reactor that keeps what it is given to run until ``run_all``."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.given: list[tuple] = []

    def callFromThread(self, f, *args) -> None:
        if self.refuse:
            self.refuse -= 1
            raise RuntimeError("the reactor is gone")
        self.given.append((f, args))

    def run_all(self) -> None:
        given, self.given = self.given, []
        for f, args in given:
            f(*args)


def _work(runners: list[QueueRunner]) -> None:
    threads = [threading.Thread(target=r.work) for r in runners]
    for r in runners:
        r.end_one()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()


def test_results_of_two_runners_wake_the_reactor_once_until_it_takes_them():
    fake = Holding()
    hand_back = HandBack(fake)
    first, second = QueueRunner(fake, "a", hand_back), QueueRunner(fake, "b", hand_back)
    results: list[object] = []
    first.run(str, 1).addCallback(results.append)
    second.run(str, 2).addCallback(results.append)
    _work([first, second])
    assert len(fake.given) == 1  # one wake-up for both results
    fake.run_all()
    assert sorted(results) == ["1", "2"]
    # Taken: the next result wakes the reactor again.
    first.run(str, 3).addCallback(results.append)
    _work([first])
    assert len(fake.given) == 1
    fake.run_all()
    assert results[-1] == "3"


def test_a_call_that_raises_is_logged_and_the_others_still_run():
    fake = Holding()
    hand_back = HandBack(fake)
    ran: list[int] = []
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        hand_back(lambda: 1 / 0)
        hand_back(ran.append, 2)
        fake.run_all()
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert ran == [2]
    assert any(e.get("log_failure") is not None for e in logged)


def test_a_reactor_that_refuses_gets_the_results_again_with_the_next():
    fake = Holding(refuse=1)
    hand_back = HandBack(fake)
    ran: list[int] = []
    try:
        hand_back(ran.append, 1)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the refusal was swallowed")
    hand_back(ran.append, 2)
    fake.run_all()
    assert ran == [1, 2]  # kept, not lost


def test_a_result_given_while_the_reactor_refuses_is_not_lost():
    """Another thread's result, given while the first was being refused,
    was told the reactor was asked: it runs with the next hand-back."""
    ran: list[int] = []

    class Refusing(Holding):
        def callFromThread(self, f, *args) -> None:
            if self.refuse:
                self.refuse -= 1
                hand_back(ran.append, 2)  # joins the call being refused
                raise RuntimeError("the reactor is gone")
            super().callFromThread(f, *args)

    fake = Refusing(refuse=1)
    hand_back = HandBack(fake)
    try:
        hand_back(ran.append, 1)
    except RuntimeError:
        pass
    assert fake.given == []
    hand_back(ran.append, 3)
    assert len(fake.given) == 1
    fake.run_all()
    assert ran == [1, 2, 3]


def test_the_process_hand_back_does_not_keep_its_reactor_alive():
    fake = Holding()
    hand_back = putthreads.hand_back(fake)
    assert putthreads.hand_back(fake) is hand_back
    gone = weakref.ref(fake)
    del fake, hand_back
    gc.collect()
    assert gone() is None


def test_every_storage_server_puts_hand_back_through_one_hand_back():
    """The replicas of an upload are on different servers: their put
    threads share the process's HandBack."""

    class Factory:
        def __init__(self, name: str) -> None:
            self.reactor = reactor
            self.name = name
            self.run_blocking = None

    threads = [putthreads.put_threads(Factory(n)) for n in ("s1", "s2")]
    try:
        assert threads[0]._hand_back is threads[1]._hand_back
        assert isinstance(threads[0]._hand_back, HandBack)
    finally:
        for t in threads:
            t.stop()
