"""LoginThrottle and ConnectionLimits on a Clock: windows, keys, bounds."""

from twisted.internet.testing import Clock

from wsfront.limits import ConnectionLimits, LoginThrottle


def throttle(**kw):
    clock = Clock()
    return clock, LoginThrottle(clock, **kw)


def test_an_address_is_throttled_after_its_limit_whatever_the_user():
    _clock, t = throttle(per_address=3, per_user=100, window=60)
    for i in range(3):
        assert t.retry_after(f"u{i}", "10.0.0.1") is None
        t.failed(f"u{i}", "10.0.0.1")
    wait = t.retry_after("someone", "10.0.0.1")
    assert wait is not None and 59 < wait <= 60
    assert t.retry_after("someone", "10.0.0.2") is None  # another address is not affected
    assert t.refused == 1


def test_the_window_slides_and_retry_after_says_when():
    clock, t = throttle(per_address=2, per_user=100, window=60)
    t.failed("a", "h")
    clock.advance(30)
    t.failed("b", "h")
    assert round(t.retry_after("c", "h")) == 30  # the first failure ages out in 30 s
    clock.advance(30)
    assert t.retry_after("c", "h") is None
    assert t.retry_after("c", "h") is None


def test_a_user_is_throttled_across_addresses_at_its_own_higher_limit():
    _clock, t = throttle(per_address=100, per_user=5, window=60)
    for i in range(5):
        t.failed("alice", f"10.0.0.{i}")
    assert t.retry_after("alice", "10.9.9.9") is not None
    assert t.retry_after("bob", "10.9.9.9") is None


def test_the_pair_limit_applies_to_one_user_from_one_address():
    _clock, t = throttle(per_address=100, per_user=100, per_pair=2, window=60)
    t.failed("alice", "h")
    t.failed("alice", "h")
    assert t.retry_after("alice", "h") is not None
    assert t.retry_after("alice", "other") is None
    assert t.retry_after("bob", "h") is None


def test_success_clears_only_its_own_pair():
    _clock, t = throttle(per_address=3, per_user=100, per_pair=2, window=60)
    t.failed("alice", "h")
    t.failed("alice", "h")
    t.succeeded("alice", "h")
    assert t.retry_after("alice", "h") is None
    t.failed("bob", "h")
    assert t.retry_after("carol", "h") is not None  # the address still counts all three


def test_memory_is_bounded_by_max_tracked():
    _clock, t = throttle(per_address=1, per_user=1, window=60, max_tracked=10)
    for i in range(1000):
        t.failed(f"user{i}", f"h{i}")
    assert len(t._failures._events) <= 10
    assert t.retry_after("user999", "h999") is not None  # the newest are kept


def test_connections_per_address_and_in_total():
    limits = ConnectionLimits(per_address=2, total=3)
    assert limits.admit("a") is None
    assert limits.admit("a") is None
    assert limits.admit("a") == "from your address"
    assert limits.admit("b") is None
    assert limits.admit("c") == "in total"
    limits.release("a")
    assert limits.count("a") == 1
    assert limits.admit("c") is None
    assert limits.refused == 2
    for host in ("a", "b", "c"):
        limits.release(host)
    assert limits.open == 0 and limits.count("a") == 0


def test_no_limits_admit_everyone():
    limits = ConnectionLimits(per_address=None, total=None)
    assert all(limits.admit("a") is None for _ in range(1000))
    assert limits.open == 1000
