"""16 threads sharing a pool of 4: throughput, p99 wait for a connection, and fairness.

Each thread loops: borrow a connection (timed: that is the "wait"), do the work, return it.
The work inside the block is, by default, a real ``SELECT 1`` on the local PostgreSQL in
autocommit mode (one round trip, the GIL released while waiting for the server, nothing to
roll back on return). ``--work sleep`` replaces it with ``time.sleep(0.0002)``: the same
shape without the server's CPU on this machine's cores, so pool mechanics weigh more.

Each pool runs in ``--rounds`` slices interleaved with the other pools'. Fairness is the
slowest thread's operation count divided by the mean, per slice (1.0 means every thread got
the same share of the connections), reported for the median slice and the worst. The wait percentiles are over operations, so a thread
starved for the whole run contributes a single sample; "wait max" shows it.

psycopg2's ThreadedConnectionPool cannot wait (it raises ``PoolError`` when exhausted); it is
driven with a retry loop that sleeps 100 us between attempts, which is what its users write.
The floor here must wait too: a deque under a ``threading.Condition`` (no FIFO order).

    python benchmarks/contention.py [--seconds 3] [--threads 16] [--size 4] [--work select1]
                                    [--rounds 3]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import _common as c

# A contender is set up once and gives back a "borrow" context-manager factory and a cleanup.
Borrow = Callable[[], AbstractContextManager[Any]]
Setup = Callable[[int, bool], tuple[Borrow, Callable[[], None], str]]


@dataclass
class Contender:
    name: str
    setup: Setup
    needs: str = "psycopg"
    note: str = ""


def _floor(size: int, autocommit: bool) -> tuple[Borrow, Callable[[], None], str]:
    conns = [c.pg_connect(autocommit) for _ in range(size)]
    idle = deque(conns)
    cond = threading.Condition(threading.Lock())

    @contextmanager
    def borrow() -> Iterator[Any]:
        with cond:
            while not idle:
                cond.wait()
            conn = idle.pop()
        try:
            yield conn
        finally:
            with cond:
                idle.append(conn)
                cond.notify()

    return borrow, c.closer(conns), ""


def _millpond(size: int, autocommit: bool) -> tuple[Borrow, Callable[[], None], str]:
    pool, note = c.millpond_pool("postgresql", autocommit=autocommit, min_size=size,
                                 max_size=size)
    return pool.connection, pool.close, note


def _psycopg_pool(size: int, autocommit: bool) -> tuple[Borrow, Callable[[], None], str]:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(c.PG_DSN, min_size=size, max_size=size, open=True,
                          kwargs={"autocommit": autocommit})
    pool.wait(30)
    return pool.connection, pool.close, ""


def _sqlalchemy(size: int, autocommit: bool) -> tuple[Borrow, Callable[[], None], str]:
    from sqlalchemy.pool import QueuePool

    pool = QueuePool(lambda: c.pg_connect(autocommit), pool_size=size, max_overflow=0)
    for h in [pool.connect() for _ in range(size)]:
        h.close()

    @contextmanager
    def borrow() -> Iterator[Any]:
        conn = pool.connect()
        try:
            yield conn
        finally:
            conn.close()

    return borrow, pool.dispose, ""


def _dbutils(size: int, autocommit: bool) -> tuple[Borrow, Callable[[], None], str]:
    import psycopg
    from dbutils.pooled_db import PooledDB

    pool = PooledDB(psycopg, mincached=size, maxcached=size, maxconnections=size,
                    blocking=True, conninfo=c.PG_DSN, autocommit=autocommit)

    @contextmanager
    def borrow() -> Iterator[Any]:
        conn = pool.connection()
        try:
            yield conn
        finally:
            conn.close()

    return borrow, pool.close, ""


def _psycopg2(size: int, autocommit: bool) -> tuple[Borrow, Callable[[], None], str]:
    from psycopg2.pool import PoolError, ThreadedConnectionPool

    pool = ThreadedConnectionPool(size, size, c.PG_DSN)
    held = [pool.getconn() for _ in range(size)]
    for conn in held:
        conn.autocommit = autocommit
        pool.putconn(conn)

    @contextmanager
    def borrow() -> Iterator[Any]:
        while True:
            try:
                conn = pool.getconn()
                break
            except PoolError:
                time.sleep(0.0001)
        try:
            yield conn
        finally:
            pool.putconn(conn)

    return borrow, pool.closeall, "retry loop, 100 us sleep"


def contenders() -> list[Contender]:
    return [
        Contender("floor: deque + Condition", _floor),
        Contender("millpond Pool", _millpond),
        Contender("psycopg_pool ConnectionPool", _psycopg_pool, needs="psycopg_pool"),
        Contender("SQLAlchemy QueuePool", _sqlalchemy, needs="sqlalchemy"),
        Contender("DBUtils PooledDB", _dbutils, needs="dbutils"),
        Contender("psycopg2 ThreadedConnectionPool", _psycopg2, needs="psycopg2"),
    ]


def _select1(conn: Any) -> None:
    cur = conn.cursor()  # the portable DB-API path: every pool hands out something with it
    cur.execute("SELECT 1")
    cur.fetchall()
    cur.close()


def _sleep(conn: Any) -> None:
    time.sleep(0.0002)


def _drive(borrow: Borrow, work: Callable[[Any], None], threads: int, seconds: float
           ) -> tuple[list[int], list[float], float]:
    """One run: per-thread operation counts, every wait (seconds), elapsed time."""
    counts = [0] * threads
    waits: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def worker(i: int) -> None:
        mine = waits[i]
        clock = time.perf_counter
        n = 0
        start.wait()
        try:
            while not stop.is_set():
                t0 = clock()
                with borrow() as conn:
                    mine.append(clock() - t0)
                    work(conn)
                n += 1
        except BaseException as exc:  # report, do not hang the run
            errors.append(exc)
        counts[i] = n

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join(30)
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} thread(s) failed: {errors[0]!r}") from errors[0]
    return counts, [w for ws in waits for w in ws], elapsed


def run(seconds: float = 3.0, threads: int = 16, size: int = 4, work: str = "select1",
        rounds: int = 3) -> dict[str, Any]:
    down = c.server_up(c.pg_connect)
    if down:
        return {"skipped": f"PostgreSQL at {c.PG_URL} unreachable: {down}", "rows": []}
    fn = _select1 if work == "select1" else _sleep
    skipped: list[str] = []
    adapter_note = ""
    active: list[tuple[Contender, Borrow, Callable[[], None], str]] = []
    for k in contenders():
        if not c.have(k.needs):
            skipped.append(f"{k.name}: `{k.needs}` not installed")
            continue
        borrow, cleanup, note = k.setup(size, True)
        if k.name.startswith("millpond"):
            adapter_note, note = note, ""
        active.append((k, borrow, cleanup, note))
    # Every pool runs in `rounds` slices interleaved with the others', so a burst of load on
    # this shared machine lands on all of them rather than on whichever ran at that moment
    # (contiguous 3 s runs swung the millpond/psycopg_pool ratio from 0.9x to 1.3x). Fairness
    # is taken per slice, each slice with fresh threads, and reported as the median slice
    # (one slice where the OS starved a thread on 2 busy cores says little about the pool)
    # next to the worst.
    ops: dict[str, int] = {k.name: 0 for k, *_ in active}
    time_s: dict[str, float] = {k.name: 0.0 for k, *_ in active}
    waits: dict[str, list[float]] = {k.name: [] for k, *_ in active}
    fairness: dict[str, list[float]] = {k.name: [] for k, *_ in active}
    spread: dict[str, list[tuple[int, int]]] = {k.name: [] for k, *_ in active}
    try:
        for _k, borrow, _, _ in active:
            _drive(borrow, fn, threads, 0.2)  # warm-up: threads, caches, prepared plans
        for r in range(rounds):
            for k, borrow, _, _ in active[r % len(active):] + active[: r % len(active)]:
                counts, w, elapsed = _drive(borrow, fn, threads, seconds / rounds)
                ops[k.name] += sum(counts)
                time_s[k.name] += elapsed
                waits[k.name] += w
                mean = sum(counts) / threads
                fairness[k.name].append(min(counts) / mean if mean else 0.0)
                spread[k.name].append((min(counts), max(counts)))
    finally:
        for _, _, cleanup, _ in active:
            cleanup()
    rows: list[dict[str, Any]] = []
    for k, _, _, note in active:
        all_waits = sorted(waits[k.name])
        order = sorted(range(rounds), key=lambda i: fairness[k.name][i])
        mid, worst = order[len(order) // 2], order[0]
        rows.append({
            "name": k.name, "note": note or k.note,
            "ops": ops[k.name],
            "ops_per_s": ops[k.name] / time_s[k.name],
            "wait_p50_ms": c.percentile(all_waits, 50) * 1e3,
            "wait_p99_ms": c.percentile(all_waits, 99) * 1e3,
            "wait_max_ms": (all_waits[-1] if all_waits else float("nan")) * 1e3,
            "fairness": fairness[k.name][mid],
            "fairness_worst": fairness[k.name][worst],
            "min_ops": spread[k.name][mid][0],
            "max_ops": spread[k.name][mid][1],
        })
    return {"rows": rows, "skipped": skipped, "seconds": seconds, "threads": threads,
            "size": size, "work": work, "rounds": rounds, "adapter_note": adapter_note}


WORK_TEXT = {
    "select1": "`SELECT 1` on PostgreSQL (psycopg 3 / psycopg2, autocommit), fetched",
    "sleep": "`time.sleep(0.0002)` (simulated I/O, no server CPU)",
}


def render(res: dict[str, Any]) -> str:
    if not res["rows"]:
        return f"skipped: {res['skipped']}"
    rows = [[r["name"], f"{r['ops_per_s']:,.0f}", f"{r['wait_p50_ms']:.3f}",
             f"{r['wait_p99_ms']:.3f}", f"{r['wait_max_ms']:.1f}", f"{r['fairness']:.2f}",
             f"{r['fairness_worst']:.2f}", f"{r['min_ops']:,}-{r['max_ops']:,}", r["note"]]
            for r in res["rows"]]
    out = c.table(["pool", "ops/s", "wait p50 (ms)", "wait p99 (ms)", "wait max (ms)",
                   "fairness (median slice)", "worst slice", "ops/thread, median slice",
                   "note"], rows)
    for s in res["skipped"]:
        out += f"\n\nskipped: {s}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per pool")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--size", type=int, default=4)
    ap.add_argument("--work", choices=sorted(WORK_TEXT), default="select1")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved slices per pool")
    a = ap.parse_args()
    res = run(a.seconds, a.threads, a.size, a.work, a.rounds)
    print(f"{a.threads} threads, pool of {a.size}, {a.seconds:g} s per pool in {a.rounds} "
          f"interleaved slices; work: {WORK_TEXT[a.work]}")
    print(render(res))
    if res.get("adapter_note"):
        print(f"\nmillpond: {res['adapter_note']}")


if __name__ == "__main__":
    main()
