"""A checkout interrupted by a ``BaseException`` (a signal handler raising, ``KeyboardInterrupt``,
``SystemExit``, a green-thread timeout) must leave the pool whole: the design's rule 3 ("timeout
at any await point leaves the pool whole") and rule 1 ("never lost"). Fake driver: the point is
the pool's bookkeeping, not a server."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import millpond
from millpond.testing import FakeDriver

from .helpers import wait_until


class Interrupted(BaseException):
    """What a signal handler (or KeyboardInterrupt) raises in the waiting thread."""


@pytest.fixture
def pool() -> Iterator[millpond.Pool]:
    p = millpond.Pool(FakeDriver(), min_size=1, max_size=1, timeout=30, open=False)
    p.open(wait=True, timeout=5)
    yield p
    p.close(timeout=0)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_interrupted_wait_loses_no_slot(pool: millpond.Pool) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        held = pool.getconn()
        main = threading.get_ident()

        def interrupt_when_queued() -> None:
            wait_until(lambda: pool.stats().waiting == 1, "the main thread to queue")
            signal.pthread_kill(main, signal.SIGUSR1)

        t = threading.Thread(target=interrupt_when_queued, daemon=True)
        t.start()
        with pytest.raises(Interrupted):
            pool.getconn(timeout=30)
        t.join(5)
    finally:
        signal.signal(signal.SIGUSR1, previous)

    pool.putconn(held)
    s = pool.stats()
    assert (s.waiting, s.in_use, s.idle) == (0, 0, 1), s
    conn = pool.getconn(timeout=1)
    assert conn is held
    pool.putconn(conn)


def test_interrupted_ping_loses_no_slot() -> None:
    driver = FakeDriver()
    pool = millpond.Pool(driver, min_size=1, max_size=1, ping_window=0, timeout=30, open=False)
    try:
        pool.open(wait=True, timeout=5)
        interrupts = [Interrupted()]

        def ping(conn: Any) -> None:
            if interrupts:
                raise interrupts.pop()
            FakeDriver.ping(driver, conn)

        driver.ping = ping  # type: ignore[method-assign]
        with pytest.raises(Interrupted):
            pool.getconn()
        s = pool.stats()
        assert s.in_use == 0, s
        conn = pool.getconn(timeout=1)
        pool.putconn(conn)
    finally:
        pool.close(timeout=0)
