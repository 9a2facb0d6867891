"""Pool events for both shells on the fake driver and clock: every kind with its fields, a
raising listener, unsubscribing, and no secret in any event."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import millpond
from millpond import PoolEvent
from millpond.testing import FakeClock, FakeDisconnect

from .conftest import in_thread, wait_until

SECRET = "hunter2-secret"  # the fake driver's password (see conftest)


def of(events: list[PoolEvent], kind: str) -> list[PoolEvent]:
    return [e for e in events if e.kind == kind]


def test_connect_carries_the_create_time(make_pool: Any, clock: FakeClock) -> None:
    events: list[PoolEvent] = []
    pool = make_pool(
        min_size=1, max_size=1, name="ev-connect", open=False,
        configure=lambda conn: clock.advance(0.3),
    )  # fmt: skip
    pool.pool.subscribe(events.append)
    pool.open(wait=True, timeout=5)
    wait_until(lambda: bool(of(events, "connect")), "a connect event")
    (e,) = of(events, "connect")
    assert e == PoolEvent("connect", "ev-connect", duration=pytest.approx(0.3))


def test_checkout_and_checkin_carry_wait_and_use_time(make_pool: Any, clock: FakeClock) -> None:
    events: list[PoolEvent] = []
    pool = make_pool(min_size=1, max_size=1, name="ev-hot")
    pool.pool.subscribe(events.append, kinds=["checkout", "checkin", "wait"])
    conn = pool.getconn()
    clock.advance(3.0)
    t, out = in_thread(lambda: pool.getconn(timeout=10))
    wait_until(lambda: pool.stats().waiting == 1, "queued")
    clock.advance(2.0)
    pool.putconn(conn)  # handed to the waiter
    t.join(5)
    clock.advance(0.5)
    pool.putconn(out["value"])
    kinds = [e.kind for e in events]
    assert kinds == ["checkout", "wait", "checkin", "checkout", "checkin"]
    assert all(e.pool == "ev-hot" for e in events)
    out1, wait, in1, out2, in2 = events
    assert out1.duration == 0.0
    assert wait.duration is None
    assert in1.duration == pytest.approx(5.0)
    assert out2.duration == pytest.approx(2.0)
    assert in2.duration == pytest.approx(0.5)
    # the histograms saw exactly what the events said
    s = pool.stats()
    assert (s.checkouts, s.wait_time.count, s.use_time.count) == (2, 2, 2)
    assert s.use_time.sum == pytest.approx(5.5)


def test_a_checkout_that_runs_out_of_time_is_a_timeout(make_pool: Any, clock: FakeClock) -> None:
    events: list[PoolEvent] = []
    pool = make_pool(min_size=1, max_size=1, name="ev-timeout")
    pool.pool.subscribe(events.append, kinds={"timeout"})
    held = pool.getconn()
    with pytest.raises(millpond.PoolTimeout):
        pool.getconn(timeout=0)
    pool.putconn(held)
    assert events == [PoolEvent("timeout", "ev-timeout", duration=0.0)]


def test_close_says_why(make_pool: Any) -> None:
    events: list[PoolEvent] = []
    pool = make_pool(min_size=1, max_size=2, name="ev-close")
    pool.pool.subscribe(events.append, kinds={"close"})
    pool.putconn(pool.getconn(), discard=True)
    wait_until(lambda: bool(events), "a close event")
    assert events[0] == PoolEvent("close", "ev-close", reason="discarded")


def test_drain_then_its_closes(make_pool: Any) -> None:
    events: list[PoolEvent] = []
    pool = make_pool(min_size=1, max_size=1, name="ev-drain")
    pool.pool.subscribe(events.append, kinds={"drain", "close"})
    pool.drain()
    wait_until(lambda: len(events) >= 2, "drain and its close")
    assert events[:2] == [
        PoolEvent("drain", "ev-drain"),
        PoolEvent("close", "ev-drain", reason="drained"),
    ]


def test_leak_carries_how_long_it_was_held(make_pool: Any, clock: FakeClock) -> None:
    events: list[PoolEvent] = []
    pool = make_pool(min_size=1, max_size=1, name="ev-leak", leak_timeout=10)
    pool.pool.subscribe(events.append, kinds={"leak"})
    conn = pool.getconn()
    clock.advance(11.0)
    pool.maintain()
    pool.putconn(conn)
    assert events == [PoolEvent("leak", "ev-leak", duration=pytest.approx(11.0))]


def test_connect_failed_carries_the_error_without_the_password(
    make_pool: Any, driver: Any
) -> None:
    events: list[PoolEvent] = []
    driver.fail_connect = FakeDisconnect(f"could not connect: password={SECRET} refused")
    pool = make_pool(min_size=1, max_size=1, name="ev-fail", open=False)
    pool.pool.subscribe(events.append)
    with pytest.raises(millpond.ConnectError):
        pool.open(wait=True, timeout=5)
    wait_until(lambda: bool(of(events, "connect_failed")), "a connect_failed event")
    e = of(events, "connect_failed")[0]
    assert e.pool == "ev-fail"
    assert e.error is not None and "could not connect" in e.error
    assert "FakeDisconnect" in e.error
    assert SECRET not in repr(events)


def test_a_raising_listener_never_breaks_the_pool_and_is_logged_once(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[PoolEvent] = []

    def broken(event: PoolEvent) -> None:
        raise RuntimeError("listener bug")

    pool = make_pool(min_size=1, max_size=1, name="ev-raise")
    pool.pool.subscribe(broken)
    pool.pool.subscribe(events.append)  # after the broken one: still served
    with caplog.at_level(logging.DEBUG, logger="millpond"):
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        conn = pool.getconn()
        pool.putconn(conn)
    assert [e.kind for e in events] == ["checkout", "checkin"] * 4
    raised = [r for r in caplog.records if "listener" in r.getMessage()]
    assert len(raised) == 8
    assert [r.levelno for r in raised].count(logging.WARNING) == 1
    assert raised[0].levelno == logging.WARNING
    assert "ev-raise" in raised[0].getMessage()
    assert raised[0].exc_info is not None
    s = pool.stats()
    assert (s.checkouts, s.in_use, s.idle) == (4, 0, 1)


def test_unsubscribe_stops_delivery(make_pool: Any) -> None:
    first: list[PoolEvent] = []
    second: list[PoolEvent] = []
    pool = make_pool(min_size=1, max_size=1)
    stop = pool.pool.subscribe(first.append)
    pool.pool.subscribe(second.append, kinds=["checkin"])
    pool.putconn(pool.getconn())
    stop()
    pool.putconn(pool.getconn())
    pool.pool.unsubscribe(second.append)
    pool.putconn(pool.getconn())
    pool.drain()
    assert [e.kind for e in first] == ["checkout", "checkin"]
    assert [e.kind for e in second] == ["checkin", "checkin"]
    stop()  # a second call does nothing
    pool.pool.unsubscribe(first.append)


def test_the_fast_paths_come_back_when_the_last_hot_listener_goes(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    p = pool.pool
    assert p._leak_timeout is None and not p._reset_always  # the fast paths' guards
    stop_cold = p.subscribe(lambda e: None, kinds=["connect", "close"])
    assert p._leak_timeout is None and not p._reset_always  # cold kinds divert nothing
    stop_hot = p.subscribe(lambda e: None, kinds=["checkout"])
    assert p._leak_timeout is not None and p._reset_always
    stop_hot()
    assert p._leak_timeout is None and not p._reset_always
    stop_cold()


def test_leak_tracking_survives_a_hot_listener(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1, leak_timeout=10, reset="full")
    p = pool.pool
    p.subscribe(lambda e: None, kinds=["checkin"])()
    assert p._leak_timeout == 10 and p._reset_always


@pytest.mark.parametrize("kinds", [["checkout", "nope"], []])
def test_unknown_kinds_are_refused(make_pool: Any, kinds: list[Any]) -> None:
    pool = make_pool(min_size=0, max_size=1)
    with pytest.raises(millpond.ConfigError, match="event kinds are"):
        pool.pool.subscribe(lambda e: None, kinds=kinds)
    with pytest.raises(millpond.ConfigError, match="not callable"):
        pool.pool.subscribe("nope")
