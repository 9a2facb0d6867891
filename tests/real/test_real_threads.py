"""Many threads on a small ``millpond.Pool`` over a real server: application errors, failed
statements, uncommitted work and short timeouts, all at once. Afterwards the pool is whole, the
server never saw more sessions than the pool may own, no borrower was handed a dirty session, and
no caller waited past its deadline."""

from __future__ import annotations

import contextlib
import importlib
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

import millpond

from .helpers import (
    ALL_DRIVERS,
    FAILING_SQL,
    PSYCOPG,
    PYMYSQL,
    Backend,
    Boom,
    driver_params,
    query,
    scalar,
    wait_until,
)

THREADS = 64
CHECKOUTS_PER_THREAD = 60  # 3840 checkouts per run
CAP = 4  # max_size + max_overflow in every run
TIMEOUT = 5.0  # the usual per-call budget: under this load nobody should need it
SHORT = 0.003  # some callers are impatient: they may time out, but never before this
#: how late a caller may come back after its deadline (thread scheduling under 64 threads)
MARGIN = 1.0


@dataclass
class Outcome:
    timeout: float
    elapsed: float  # from the call until a connection was in hand, or PoolTimeout
    result: str  # "ok" | "timeout"


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: list[Outcome] = field(default_factory=list)
    backend_ids: set[int] = field(default_factory=set)
    dirty: list[str] = field(default_factory=list)  # sessions lent inside a transaction
    unexpected: list[BaseException] = field(default_factory=list)
    committed: int = 0


class Monitor(threading.Thread):
    """Samples the server's list of this pool's sessions from a connection of its own."""

    def __init__(self, db: Backend) -> None:
        super().__init__(name="server-monitor", daemon=True)
        self.db = db
        self.stop = threading.Event()
        self.samples = 0
        self.most = 0
        self.ids: set[int] = set()
        self.error: BaseException | None = None

    def run(self) -> None:
        db = self.db
        conn = db.connect_independent(autocommit=True)
        try:
            while not self.stop.is_set():
                ids = db.server_ids(conn)
                assert ids is not None
                self.samples += 1
                self.most = max(self.most, len(ids))
                self.ids |= ids
                time.sleep(0.002)
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()


STORMS = [
    *(
        pytest.param(p.values[0], CAP, 0, id=p.id, marks=p.marks)
        for p in driver_params(*ALL_DRIVERS)
    ),
    *(
        pytest.param(p.values[0], CAP - 1, 1, id=f"{p.id}-overflow", marks=p.marks)
        for p in driver_params(PSYCOPG, PYMYSQL)
    ),
]


@pytest.mark.parametrize(("db", "max_size", "max_overflow"), STORMS, indirect=["db"])
def test_thread_storm(db: Backend, make_pool: Any, max_size: int, max_overflow: int) -> None:
    cap = max_size + max_overflow
    table = db.make_table()
    pool = make_pool(min_size=2, max_size=max_size, max_overflow=max_overflow, timeout=TIMEOUT)
    driver_error = importlib.import_module(db.driver.module).Error
    tally = Tally()
    start = threading.Barrier(THREADS + 1)

    def checkout(rng: random.Random) -> None:
        roll = rng.random()
        timeout = 0.0 if roll < 0.03 else SHORT if roll < 0.12 else TIMEOUT
        action = rng.choices(
            ["read", "boom", "dirty_boom", "dirty_return", "sql_error", "commit"],
            weights=[50, 10, 10, 10, 8, 12],
        )[0]
        ctx = pool.transaction(timeout) if action == "commit" else pool.connection(timeout)
        t0 = time.monotonic()
        entered = False
        try:
            with ctx as conn:
                entered = True
                elapsed = time.monotonic() - t0
                # asked before any statement of ours: the session must be clean
                if db.in_transaction(conn) or db.in_failed_transaction(conn):
                    with tally.lock:
                        tally.dirty.append(action)
                bid = db.backend_id(conn)
                with tally.lock:
                    tally.outcomes.append(Outcome(timeout, elapsed, "ok"))
                    tally.backend_ids.add(bid)
                if action == "read":
                    assert scalar(conn, "SELECT 1") == 1
                elif action == "boom":
                    raise Boom
                elif action == "dirty_boom":
                    query(conn, f"INSERT INTO {table} (v) VALUES (0)")
                    raise Boom
                elif action == "dirty_return":
                    query(conn, f"INSERT INTO {table} (v) VALUES (0)")
                elif action == "sql_error":
                    query(conn, f"INSERT INTO {table} (v) VALUES (0)")
                    query(conn, FAILING_SQL)
                else:  # commit
                    query(conn, f"INSERT INTO {table} (v) VALUES (1)")
            if action == "commit":
                with tally.lock:
                    tally.committed += 1
        except millpond.PoolTimeout:
            elapsed = time.monotonic() - t0
            assert not entered
            with tally.lock:
                tally.outcomes.append(Outcome(timeout, elapsed, "timeout"))
        except Boom:
            assert action in ("boom", "dirty_boom")
        except driver_error:
            if action != "sql_error":
                raise

    def worker(i: int) -> None:
        rng = random.Random(i * 7919)
        start.wait(30)
        for _ in range(CHECKOUTS_PER_THREAD):
            try:
                checkout(rng)
            except BaseException as exc:
                with tally.lock:
                    tally.unexpected.append(exc)
                return

    monitor = Monitor(db) if db.driver.has_server else None
    if monitor is not None:
        monitor.start()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    start.wait(30)
    for t in threads:
        t.join(60)
    if monitor is not None:
        monitor.stop.set()
        monitor.join(10)
    assert not any(t.is_alive() for t in threads), "a worker is stuck"

    # nothing unexpected, nothing dirty
    assert tally.unexpected == [], tally.unexpected[:3]
    assert tally.dirty == []
    outcomes = tally.outcomes
    assert len(outcomes) == THREADS * CHECKOUTS_PER_THREAD
    ok = [o for o in outcomes if o.result == "ok"]
    timed_out = [o for o in outcomes if o.result == "timeout"]
    assert len(ok) > len(outcomes) // 2

    # deadlines: nobody waited past its timeout, and nobody gave up before it
    late = [o for o in outcomes if o.elapsed >= o.timeout + MARGIN]
    assert late == [], late[:5]
    early = [o for o in timed_out if o.elapsed < o.timeout]
    assert early == [], early[:5]
    # under this load a patient caller always gets a connection
    assert not [o for o in timed_out if o.timeout == TIMEOUT]

    # the pool is whole (once a connect still in flight for a caller who has gone has landed)
    wait_until(lambda: pool.stats().opening == 0, "connects in flight to finish")
    s = pool.stats()
    assert (s.in_use, s.waiting, s.opening) == (0, 0, 0), s
    # (overflow connections may outlive the demand: see test_overflow.py for that bug)
    assert s.idle == s.size <= cap, s
    # application errors drop no connection; only overflow connections are closed
    assert set(s.closed_by_reason) <= {"overflow"}, s.closed_by_reason
    if not max_overflow:
        assert s.closed_total == 0 and s.connects <= cap
    assert s.connects - s.closed_total == s.size
    assert s.timeouts == len(timed_out)
    assert s.checkouts == len(ok) + s.ping_failures
    assert s.waits > 0  # the run really made callers queue

    # the server's view: never more sessions than the pool may own
    assert len(tally.backend_ids) <= s.connects
    if monitor is not None:
        assert monitor.error is None, monitor.error
        assert monitor.samples >= 10
        assert 1 <= monitor.most <= cap, monitor.most
        assert len(monitor.ids) <= s.connects, monitor.ids
        if not max_overflow:  # every session lives to the end: the monitor saw them all
            assert tally.backend_ids <= monitor.ids | set(db.server_ids() or ())

    # only committed work is in the table
    assert db.count(table, "v = 0") == 0
    assert db.count(table, "v = 1") == tally.committed

    # and the pool still lends exactly max_size (+ max_overflow) working connections
    conns = [pool.getconn(timeout=10) for _ in range(cap)]
    try:
        assert len({id(c) for c in conns}) == cap
        for c in conns:
            assert scalar(c, "SELECT 1") == 1
        with pytest.raises(millpond.PoolTimeout):
            pool.getconn(timeout=0)
    finally:
        for c in conns:
            with contextlib.suppress(Exception):
                pool.putconn(c)
