"""Wait, use and create times measured on a real PostgreSQL session (lower bounds only:
a real clock and a real server, so nothing is asserted to be fast)."""

from __future__ import annotations

import threading
import time

import millpond
from tests.conftest import require_package


def test_timings_of_a_real_wait_and_a_real_hold(pg_url: str) -> None:
    require_package("psycopg", "psycopg")
    with millpond.Pool(pg_url, min_size=1, max_size=1, timeout=10, name="timings-real") as pool:
        pool.open(wait=True, timeout=10)
        held = pool.getconn()
        got: list[object] = []
        t = threading.Thread(target=lambda: got.append(pool.getconn()), daemon=True)
        t.start()
        limit = time.monotonic() + 10
        while pool.stats().waiting != 1:
            assert time.monotonic() < limit, "the second caller never queued"
            time.sleep(0.001)
        with held.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.2)")  # the waiter waits at least this long
        pool.putconn(held)
        t.join(10)
        pool.putconn(got[0])
        s = pool.stats()
    assert s.wait_time.count == 2
    assert s.wait_time.max >= 0.2
    assert sum(s.wait_time.counts[1:]) >= 1  # the waiter's wait is not in the lowest bucket
    assert s.use_time.count == 2
    assert s.use_time.max >= 0.2
    assert s.create_time.count == 1
    assert s.create_time.sum > 0.0
