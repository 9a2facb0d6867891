"""Overflow connections (``max_overflow``) exist only while callers need them: one that is
returned when nobody waits is closed (``closed_by_reason["overflow"]``), and so must be one that
finishes connecting when the caller who asked for it has gone. Fake driver, so the connect can
be held open deterministically."""

from __future__ import annotations

import threading

import pytest

import millpond
from millpond.testing import FakeDriver

from .helpers import wait_until


def test_overflow_connection_returned_when_nobody_waits_is_closed() -> None:
    driver = FakeDriver()
    pool = millpond.Pool(driver, min_size=1, max_size=1, max_overflow=1, timeout=5, open=False)
    try:
        pool.open(wait=True, timeout=5)
        a = pool.getconn()
        b = pool.getconn(timeout=5)  # an overflow connection, opened for this caller
        assert pool.stats().size == 2
        pool.putconn(b)
        pool.putconn(a)
        s = pool.stats()
        assert (s.size, s.idle) == (1, 1), s
        assert s.closed_by_reason == {"overflow": 1}
        wait_until(lambda: len(driver.open_connections) == 1, "the overflow connection to close")
    finally:
        pool.close(timeout=5)


def test_overflow_connection_arriving_for_nobody_is_closed() -> None:
    driver = FakeDriver()
    gate = threading.Event()
    gate.set()
    driver.on_connect = lambda: gate.wait(10)  # type: ignore[assignment]
    pool = millpond.Pool(driver, min_size=1, max_size=1, max_overflow=1, timeout=5, open=False)
    try:
        pool.open(wait=True, timeout=5)
        held = pool.getconn()
        gate.clear()  # the next connect hangs
        with pytest.raises(millpond.PoolTimeout):
            pool.getconn(timeout=0.2)  # asks for an overflow connection, then gives up
        assert pool.stats().opening == 1
        pool.putconn(held)  # the pool is at max_size again and nobody waits
        gate.set()
        wait_until(lambda: pool.stats().opening == 0, "the overflow connect to finish")
        s = pool.stats()
        assert s.size <= s.max_size, s
        wait_until(lambda: len(driver.open_connections) == 1, "the surplus connection to close")
    finally:
        gate.set()
        pool.close(timeout=5)
