"""The queue-fed thread runner (``wsstorage.threadwork``) shared by the
catalog's single writer and the in-process puts."""

from __future__ import annotations

import threading

from twisted.logger import globalLogPublisher

from wsstorage.threadwork import QueueRunner


class Recording:
    """A reactor that runs what is handed back to it at once, in the
    worker's thread, and notes it; ``refuse`` results raise instead."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.calls: list[object] = []
        self.called = threading.Event()

    def callFromThread(self, f, *args) -> None:
        if self.refuse:
            self.refuse -= 1
            raise RuntimeError("the reactor is gone")
        self.calls.append(f)
        self.called.set()
        f(*args)


def test_calls_run_in_order_and_a_failure_fails_only_its_own_deferred():
    reactor = Recording()
    runner = QueueRunner(reactor, "test")
    results: list[object] = []

    def fails():
        raise ValueError("this one")

    for d in (runner.run(str, 1), runner.run(fails), runner.run(str, 3)):
        d.addBoth(results.append)
    runner.end_one()
    thread = threading.Thread(target=runner.work)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert results[0] == "1" and results[2] == "3"
    assert results[1].check(ValueError)


def test_an_idle_thread_asks_the_reactor_and_goes_on_waiting():
    """After ``idle`` seconds without work, ``on_idle`` is handed to the
    reactor; the thread still takes what comes after, and ends when told."""
    reactor = Recording()
    runner = QueueRunner(reactor, "test")
    idled = threading.Event()
    thread = threading.Thread(target=runner.work, args=(0.01, idled.set))
    thread.start()
    assert idled.wait(30)
    results: list[object] = []
    runner.run(str, 7).addCallback(results.append)
    runner.end_one()
    thread.join(30)
    assert not thread.is_alive()
    assert results == ["7"]
    assert reactor.calls[0] == idled.set


def test_a_result_the_reactor_refuses_is_logged_and_the_thread_goes_on():
    reactor = Recording(refuse=1)
    runner = QueueRunner(reactor, "test runner")
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        results: list[object] = []
        runner.run(str, 1).addBoth(results.append)
        runner.run(str, 2).addBoth(results.append)
        runner.end_one()
        thread = threading.Thread(target=runner.work)
        thread.start()
        thread.join(30)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert results == ["2"]
    [event] = [e for e in logged if "log_failure" in e]
    assert event["what"] == "test runner"
    assert event["log_failure"].check(RuntimeError)
