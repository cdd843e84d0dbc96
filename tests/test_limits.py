"""LoginThrottle, ConnectionLimits and RateFloor on a Clock: windows, keys, bounds."""

from twisted.internet.testing import Clock

from wsfront.limits import ConnectionLimits, LoginThrottle, RateFloor, address_key


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


def _admit(t, user, address):
    """admit() that must answer at once: None or the seconds to wait."""
    results = []
    t.admit(user, address).addCallback(results.append)
    assert results, "admit() is waiting"
    return results[0]


def test_attempts_being_checked_hold_the_next_ones_so_a_burst_cannot_slip_through():
    clock, t = throttle(per_address=10, per_user=50, window=300)
    answers = []
    for _ in range(40):
        t.admit("alice", "h").addCallback(answers.append)
    assert answers == [None] * 10  # ten checks run; thirty wait for them
    for _ in range(10):
        t.failed("alice", "h")
    clock.advance(0)
    assert len(answers) == 40 and all(a > 290 for a in answers[10:])
    assert t.refused == 30


def test_waiting_attempts_go_on_when_the_ones_ahead_succeed():
    clock, t = throttle(per_address=3, per_user=50, window=300)
    answers = []
    for _ in range(20):  # one client opening twenty connections at once
        t.admit("alice", "h").addCallback(answers.append)
    assert answers == [None] * 3
    while len(answers) < 20:
        admitted = len(answers)
        t.succeeded("alice", "h")  # one of those ahead logged in
        clock.advance(0)
        assert len(answers) == admitted + 1
    assert answers == [None] * 20 and t.refused == 0


def test_an_undecided_attempt_stops_counting_after_a_while():
    clock, t = throttle(per_address=2, per_user=50, window=300)
    assert _admit(t, "a", "h") is None
    assert _admit(t, "b", "h") is None
    waiting = []
    t.admit("c", "h").addCallback(waiting.append)
    assert waiting == []  # two still being checked
    t.abandoned("a", "h")
    clock.advance(0)
    assert waiting == [None]
    clock.advance(LoginThrottle.INFLIGHT_SECONDS + 1)  # b and c were never decided
    assert _admit(t, "d", "h") is None


def test_the_per_user_limit_spares_addresses_the_user_logged_in_from():
    _clock, t = throttle(per_address=100, per_user=5, window=300)
    assert _admit(t, "alice", "home") is None
    t.succeeded("alice", "home")
    for i in range(5):
        assert _admit(t, "alice", f"10.0.0.{i}") is None
        t.failed("alice", f"10.0.0.{i}")
    assert t.retry_after("alice", "10.9.9.9") is not None  # strangers are throttled
    assert t.retry_after("alice", "home") is None  # her usual machine is not


def test_ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("not an address") == "not an address"
    _clock, t = throttle(per_address=3, per_user=100, window=300)
    for i in range(3):
        t.failed(f"u{i}", f"2001:db8:1:2::{i + 1:x}")
    assert t.retry_after("x", "2001:db8:1:2:9999::1") is not None
    limits = ConnectionLimits(per_address=1, total=None)
    assert limits.admit("2001:db8::1") is None
    assert limits.admit("2001:db8::2") == "from your address"
    limits.release("2001:db8::1")
    assert limits.admit("2001:db8::2") is None


def test_limits_above_a_thousand_still_throttle():
    _clock, t = throttle(per_address=2000, per_user=5000, window=300)
    for _ in range(2000):
        t.failed("u", "h")
    assert t.retry_after("u", "h") is not None


def rate_floor(min_rate=100, window=10):
    clock = Clock()
    slow = []
    return clock, RateFloor(clock, min_rate, window, lambda: slow.append(clock.seconds())), slow


def test_a_sender_below_the_floor_over_a_window_is_too_slow():
    clock, floor, slow = rate_floor()
    floor.start(True)
    for _ in range(9):
        clock.advance(1)
        floor.received(100)  # 900 bytes in the first 10 s: below 100/s
    clock.advance(1)
    assert slow == [10]


def test_each_window_is_judged_on_its_own_so_a_fast_start_cannot_pay_for_a_trickle():
    clock, floor, slow = rate_floor()
    floor.start(True)
    floor.received(10_000)
    clock.advance(10)
    assert slow == []
    clock.advance(10)
    assert slow == [20]


def test_time_the_receiver_was_not_reading_does_not_count():
    clock, floor, slow = rate_floor()
    floor.start(False)  # e.g. a body no handler claimed yet
    clock.advance(500)
    assert slow == []
    floor.reading(True)
    clock.advance(5)
    floor.received(500)
    floor.reading(False)  # paused by its consumer, half-way through the window
    clock.advance(300)
    floor.reading(True)
    clock.advance(4)
    floor.received(500)  # 1000 bytes over 10 s of reading: exactly the floor
    clock.advance(1)
    assert slow == []
    clock.advance(10)
    assert slow == [820]


def test_a_stopped_floor_never_fires():
    clock, floor, slow = rate_floor()
    floor.start(True)
    floor.stop()
    clock.advance(100)
    assert slow == [] and not clock.getDelayedCalls()
