"""``writer.settled``: what the seal of every upload waits on, in place of
``DeferredList(consumeErrors=True)``; it must give what DeferredList gave,
cancelled too."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
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


def test_cancel_waits_for_a_child_that_goes_on_and_gives_its_result():
    """As DeferredList: a child whose cancel does not fire it (an
    inlineCallbacks seal that catches the CancelledError and waits on)
    is waited for, and its later result reaches the caller; cancelling
    never fires the list itself with CancelledError."""
    first_wait, then = Deferred(), Deferred()

    @inlineCallbacks
    def seal():
        try:
            yield first_wait
        except CancelledError:
            return (yield then)  # goes on after its cancel

    going_on = seal()
    plain = Deferred()
    done = settled([going_on, plain])
    got = []
    done.addBoth(got.append)
    done.cancel()
    assert got == []
    then.callback("sealed")
    [(ok_a, va), (ok_b, vb)] = got[0]
    assert (ok_a, va) == (True, "sealed")
    assert not ok_b and vb.check(CancelledError)


def test_a_canceller_that_raises_does_not_stop_the_others_cancel():
    def broken(d):
        raise RuntimeError("canceller broke")

    first = Deferred(broken)
    second = Deferred()
    done = settled([first, second])
    done.cancel()
    assert second.called, "the second was cancelled despite the first's canceller"
    first.callback("late")
    [(ok_a, va), (ok_b, vb)] = done.result
    assert (ok_a, va) == (True, "late")
    assert not ok_b and vb.check(CancelledError)
