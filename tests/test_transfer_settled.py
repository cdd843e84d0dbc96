"""``writer.settled``: what the seal of every upload waits on, in place of
``DeferredList(consumeErrors=True)``; it must give what DeferredList gave."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from wsfront.transfer.writer import settled


def test_fires_once_all_fired_with_results_in_their_order():
    a, b, c = Deferred(), Deferred(), Deferred()
    got = []
    settled([a, b, c]).addCallback(got.append)
    c.callback("c")
    b.errback(ValueError("b broke"))
    assert got == []
    a.callback("a")
    [(ok_a, va), (ok_b, vb), (ok_c, vc)] = got[0]
    assert (ok_a, va, ok_c, vc) == (True, "a", True, "c")
    assert ok_b is False and isinstance(vb, Failure) and vb.check(ValueError)
    # The error was consumed: the failed Deferred holds None, not a Failure
    # (which would be logged as unhandled when collected).
    assert b.result is None
    # A result stays on its Deferred for whoever else waits on it.
    assert a.result == "a" and c.result == "c"


def test_no_deferreds_fires_at_once():
    got = []
    settled([]).addCallback(got.append)
    assert got == [[]]


def test_cancel_cancels_each_and_fires_with_what_they_gave():
    a = Deferred()
    b = Deferred()  # no canceller: cancel errbacks it with CancelledError
    done = settled([a, b])
    got = []
    done.addCallback(got.append)
    done.cancel()
    [(ok_a, va), (ok_b, vb)] = got[0]
    assert not ok_a and va.check(CancelledError)
    assert not ok_b and vb.check(CancelledError)


def test_cancel_of_one_whose_canceller_answers_gives_that_answer():
    answered = Deferred(lambda d: d.callback("sealed anyway"))
    done = settled([answered])
    got = []
    done.addCallback(got.append)
    done.cancel()
    assert got == [[(True, "sealed anyway")]]
