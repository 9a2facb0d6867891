"""Waiters are served strictly in the order they queued, and nobody barges in.

Threads queue one at a time (each is started only once ``stats().waiting`` shows the previous
one queued), then the one connection circulates: each thread records that it got it, the main
thread checks that a newcomer asking with ``timeout=0`` cannot take it, and releases the thread,
whose return must hand the connection straight to the next in line. Run on the fake driver and
on every real one.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest

import millpond
from millpond.testing import FakeClock, FakeDriver

from .helpers import ALL_DRIVERS, Backend, driver_params, scalar, wait_until

WAITERS = 12


def check_fifo(pool: millpond.Pool, use: Any = None) -> None:
    """Queue WAITERS threads behind the single connection of ``pool`` (max_size=1) and check
    they obtain it in queueing order, with no barging by newcomers."""
    held = pool.getconn(timeout=5)
    got: queue.Queue[tuple[int, Any]] = queue.Queue()
    release = [threading.Event() for _ in range(WAITERS)]
    errors: list[BaseException] = []

    def waiter(i: int) -> None:
        try:
            conn = pool.getconn(timeout=30)
        except BaseException as exc:
            errors.append(exc)
            got.put((i, None))
            return
        got.put((i, conn))
        release[i].wait(30)
        pool.putconn(conn)

    threads = []
    for i in range(WAITERS):
        t = threading.Thread(target=waiter, args=(i,), daemon=True)
        t.start()
        threads.append(t)
        wait_until(lambda i=i: pool.stats().waiting == i + 1, f"waiter {i} to queue")

    order: list[int] = []
    barged: list[Any] = []

    def try_to_barge() -> None:
        try:
            c = pool.getconn(timeout=0)
        except millpond.PoolTimeout:
            return
        barged.append(c)
        pool.putconn(c)

    pool.putconn(held)
    for k in range(WAITERS):
        # until the next waiter reports, the connection is in flight to it: a newcomer with
        # timeout=0 must find nothing idle
        while True:
            try:
                i, conn = got.get(timeout=0.001)
                break
            except queue.Empty:
                try_to_barge()
        assert conn is held, (i, errors)
        order.append(i)
        if use is not None:
            use(conn)
        s = pool.stats()
        assert (s.in_use, s.idle, s.waiting) == (1, 0, WAITERS - k - 1), s
        try_to_barge()
        release[i].set()
    for t in threads:
        t.join(10)
    assert errors == []
    assert barged == []
    assert order == list(range(WAITERS))
    s = pool.stats()
    assert (s.size, s.idle, s.in_use, s.waiting) == (1, 1, 0, 0)


def test_fifo_on_the_fake_driver() -> None:
    driver = FakeDriver()
    pool = millpond.Pool(driver, min_size=1, max_size=1, timeout=30, open=False)
    try:
        pool.open(wait=True, timeout=5)
        check_fifo(pool)
        assert len(driver.connections) == 1
    finally:
        pool.close(timeout=5)


@pytest.mark.parametrize("db", driver_params(*ALL_DRIVERS), indirect=True)
def test_fifo_on_a_real_driver(db: Backend, make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1, timeout=30)
    check_fifo(pool, use=lambda conn: scalar(conn, "SELECT 1"))
    assert pool.stats().connects == 1


def test_a_waiter_whose_connection_fails_its_ping_keeps_its_place() -> None:
    """Waiters A then B queue; the returned connection goes to A but fails A's ping. The
    replacement must go to A, the oldest waiter, not to B."""
    driver = FakeDriver()
    clock = FakeClock()
    pool = millpond.Pool(driver, min_size=1, max_size=1, timeout=30, ping_window=0, clock=clock)
    try:
        pool.open(wait=True, timeout=5)
        held = pool.getconn()
        order: list[str] = []
        lock = threading.Lock()

        def wait_for_one(name: str) -> None:
            conn = pool.getconn(timeout=30)
            with lock:
                order.append(name)
            pool.putconn(conn)

        a = threading.Thread(target=wait_for_one, args=("A",), daemon=True)
        a.start()
        wait_until(lambda: pool.stats().waiting == 1, "A to queue")
        b = threading.Thread(target=wait_for_one, args=("B",), daemon=True)
        b.start()
        wait_until(lambda: pool.stats().waiting == 2, "B to queue")

        driver.fail_ping = {held.number}
        pool.putconn(held)
        a.join(10)
        b.join(10)
        assert not a.is_alive() and not b.is_alive()
        assert pool.stats().ping_failures == 1
        assert order == ["A", "B"]
    finally:
        pool.close(timeout=5)
