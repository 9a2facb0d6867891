"""Wait, use and create times in ``stats()``, on the fake clock, for both shells."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import pytest

from millpond._core.histogram import BOUNDS
from millpond.testing import FakeClock

from .conftest import in_thread, wait_until


def bucket(seconds: float) -> int:
    return bisect_left(BOUNDS, seconds)


def test_a_caller_that_waited_2s_lands_in_the_2s_bucket(make_pool: Any, clock: FakeClock) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn()  # the fast path: never waited
    t, out = in_thread(lambda: pool.getconn(timeout=10))
    wait_until(lambda: pool.stats().waiting == 1, "queued")
    clock.advance(2.0)
    pool.putconn(held)
    t.join(5)
    pool.putconn(out["value"])
    w = pool.stats().wait_time
    assert w.count == 2 == pool.stats().checkouts
    assert w.counts[0] == 1  # the fast-path checkout, counted without a clock read
    assert w.counts[bucket(2.0)] == 1
    assert BOUNDS[bucket(2.0) - 1] < 2.0 <= BOUNDS[bucket(2.0)]
    assert w.sum == pytest.approx(2.0)
    assert w.max == pytest.approx(2.0)
    assert BOUNDS[bucket(2.0) - 1] <= w.p99 <= 2.0


def test_a_3s_hold_is_the_use_time_on_both_return_paths(make_pool: Any, clock: FakeClock) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    clock.advance(3.0)
    pool.putconn(conn)  # straight back idle: the fast return
    conn = pool.getconn()
    clock.advance(0.5)
    pool.putconn(conn, discard=True)  # the slow return
    u = pool.stats().use_time
    assert u.count == 2
    assert u.counts[bucket(3.0)] == 1
    assert u.counts[bucket(0.5)] == 1
    assert u.sum == pytest.approx(3.5)
    assert u.max == pytest.approx(3.0)


def test_short_uses_are_counted_in_the_lowest_bucket(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    for _ in range(5):
        with pool.connection():
            pass  # the fake clock does not move: a use of 0 s
    u = pool.stats().use_time
    assert (u.count, u.counts[0], u.sum, u.max) == (5, 5, 0.0, 0.0)


def test_create_time_covers_connect_and_configure(make_pool: Any, clock: FakeClock) -> None:
    pool = make_pool(min_size=1, max_size=1, configure=lambda conn: clock.advance(0.3))
    c = pool.stats().create_time
    assert c.count == 1
    assert c.counts[bucket(0.3)] == 1
    assert c.sum == pytest.approx(0.3)
    assert c.max == pytest.approx(0.3)
