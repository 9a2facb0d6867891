"""Checkout + return with no query, in microseconds per operation, one thread.

Every contender holds real, already-open connections to the local PostgreSQL (psycopg 3, or
psycopg2 for psycopg2.pool), so each pool's return path inspects a real connection. No query
runs, so every connection comes back IDLE and nobody owes the server a ROLLBACK: what is left
is the pool's own bookkeeping. Rounds are interleaved (every contender once per round, in a
rotated order) and the median round is reported, with its ratio to the floor: a bare
``collections.deque`` guarded by a ``threading.Lock``. Many short rounds rather than a few
long ones: on a shared machine a burst of load then spoils a few rounds of every contender
instead of the one contender that happened to be running.

    python benchmarks/overhead.py [--rounds 15] [--seconds 0.06]
"""

from __future__ import annotations

import argparse
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import _common as c

POOL_SIZE = 4

Loop = Callable[[int], None]
Setup = Callable[[], tuple[Loop, Callable[[], None]]]


@dataclass
class Contender:
    name: str
    setup: Setup
    group: str  # "floor", "millpond", "peer" or "info"
    can_wait: bool = True  # blocks for a connection when the pool is exhausted
    needs: str = "psycopg"
    note: str = ""
    times: list[float] = field(default_factory=list)
    loop: Loop | None = None
    cleanup: Callable[[], None] | None = None
    n: int = 0


def _floor() -> tuple[Loop, Callable[[], None]]:
    conns = [c.pg_connect() for _ in range(POOL_SIZE)]
    idle = deque(conns)
    lock = threading.Lock()

    def loop(n: int) -> None:
        for _ in range(n):
            with lock:
                conn = idle.pop()
            with lock:
                idle.append(conn)

    return loop, c.closer(conns)


def _floor_status() -> tuple[Loop, Callable[[], None]]:
    # the floor plus the one thing a safe pool cannot skip on return: reading the
    # transaction status (here straight from libpq, as an adapter would)
    conns = [c.pg_connect() for _ in range(POOL_SIZE)]
    idle = deque(conns)
    lock = threading.Lock()

    def loop(n: int) -> None:
        for _ in range(n):
            with lock:
                conn = idle.pop()
            if conn.pgconn.transaction_status:
                conn.rollback()
            with lock:
                idle.append(conn)

    return loop, c.closer(conns)


def _millpond_pool() -> Any:
    # DEFAULT options (pre_ping on, ping_window 0.5 s, reset="rollback"); only the size is set
    pool, note = c.millpond_pool("postgresql", autocommit=False, min_size=POOL_SIZE,
                                 max_size=POOL_SIZE)
    _notes["millpond"] = note
    return pool


def _millpond_with() -> tuple[Loop, Callable[[], None]]:
    pool = _millpond_pool()
    connection = pool.connection

    def loop(n: int) -> None:
        for _ in range(n):
            with connection():
                pass

    return loop, pool.close


def _millpond_pair() -> tuple[Loop, Callable[[], None]]:
    pool = _millpond_pool()
    getconn, putconn = pool.getconn, pool.putconn

    def loop(n: int) -> None:
        for _ in range(n):
            putconn(getconn())

    return loop, pool.close


def _psycopg_pool_with() -> tuple[Loop, Callable[[], None]]:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(c.PG_DSN, min_size=POOL_SIZE, max_size=POOL_SIZE, open=True)
    pool.wait(30)
    connection = pool.connection

    def loop(n: int) -> None:
        for _ in range(n):
            with connection():
                pass

    return loop, pool.close


def _psycopg_pool_pair() -> tuple[Loop, Callable[[], None]]:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(c.PG_DSN, min_size=POOL_SIZE, max_size=POOL_SIZE, open=True)
    pool.wait(30)
    getconn, putconn = pool.getconn, pool.putconn

    def loop(n: int) -> None:
        for _ in range(n):
            putconn(getconn())

    return loop, pool.close


def _sqlalchemy() -> tuple[Loop, Callable[[], None]]:
    from sqlalchemy.pool import QueuePool

    pool = QueuePool(lambda: c.pg_connect(), pool_size=POOL_SIZE, max_overflow=0)
    held = [pool.connect() for _ in range(POOL_SIZE)]  # open all of them up front
    for h in held:
        h.close()
    connect = pool.connect

    def loop(n: int) -> None:
        for _ in range(n):
            connect().close()

    return loop, pool.dispose


def _dbutils() -> tuple[Loop, Callable[[], None]]:
    import psycopg
    from dbutils.pooled_db import PooledDB

    pool = PooledDB(psycopg, mincached=POOL_SIZE, maxcached=POOL_SIZE,
                    maxconnections=POOL_SIZE, blocking=True, conninfo=c.PG_DSN)
    connection = pool.connection

    def loop(n: int) -> None:
        for _ in range(n):
            connection().close()

    return loop, pool.close


def _psycopg2_pool() -> tuple[Loop, Callable[[], None]]:
    from psycopg2.pool import ThreadedConnectionPool

    pool = ThreadedConnectionPool(POOL_SIZE, POOL_SIZE, c.PG_DSN)
    getconn, putconn = pool.getconn, pool.putconn

    def loop(n: int) -> None:
        for _ in range(n):
            putconn(getconn())

    return loop, pool.closeall


_notes: dict[str, str] = {}


def contenders() -> list[Contender]:
    return [
        Contender("floor: deque + Lock", _floor, "floor"),
        Contender("floor + tx-status read (info)", _floor_status, "info"),
        Contender("millpond `with pool.connection()`", _millpond_with, "millpond"),
        Contender("millpond getconn/putconn", _millpond_pair, "millpond"),
        Contender("psycopg_pool `with pool.connection()`", _psycopg_pool_with, "peer",
                  needs="psycopg_pool"),
        Contender("psycopg_pool getconn/putconn", _psycopg_pool_pair, "peer",
                  needs="psycopg_pool"),
        Contender("SQLAlchemy QueuePool connect/close", _sqlalchemy, "peer", needs="sqlalchemy",
                  note="reset-on-return rollback (a no-op on an idle psycopg connection)"),
        Contender("DBUtils PooledDB connection/close", _dbutils, "peer", needs="dbutils"),
        Contender("psycopg2 ThreadedConnectionPool get/put", _psycopg2_pool, "peer",
                  can_wait=False, needs="psycopg2", note="cannot wait: raises when exhausted"),
    ]


def run(rounds: int = 15, seconds: float = 0.06) -> dict[str, Any]:
    skipped: list[str] = []
    down = c.server_up(c.pg_connect)
    if down:
        return {"skipped": f"PostgreSQL at {c.PG_URL} unreachable: {down}"}
    active: list[Contender] = []
    for k in contenders():
        if not c.have(k.needs):
            skipped.append(f"{k.name}: `{k.needs}` not installed")
            continue
        k.loop, k.cleanup = k.setup()
        k.n = c.calibrate(k.loop, seconds)
        active.append(k)
    try:
        for r in range(rounds):
            # rotate the order so no contender always runs first (or right after a GC-heavy one)
            order = active[r % len(active):] + active[: r % len(active)]
            for k in order:
                assert k.loop is not None
                k.times.append(c.time_per_op(k.loop, k.n))
    finally:
        for k in active:
            if k.cleanup is not None:
                k.cleanup()
    floor = c.median(next(k for k in active if k.group == "floor").times)
    rows = []
    for k in active:
        med = c.median(k.times)
        rows.append({
            "name": k.name, "group": k.group, "can_wait": k.can_wait, "note": k.note,
            "us": med * 1e6, "min_us": min(k.times) * 1e6, "max_us": max(k.times) * 1e6,
            "ratio": med / floor, "ops_per_round": k.n,
        })
    return {"rows": rows, "skipped": skipped, "rounds": rounds, "pool_size": POOL_SIZE,
            "adapter_note": _notes.get("millpond", "")}


def render(res: dict[str, Any]) -> str:
    if "rows" not in res:
        return f"skipped: {res['skipped']}"
    rows = [[r["name"], f"{r['us']:.2f}", f"{r['min_us']:.2f}-{r['max_us']:.2f}",
             f"{r['ratio']:.2f}x", "yes" if r["can_wait"] else "no", r["note"]]
            for r in res["rows"]]
    out = c.table(["pool", "us/op (median)", "range", "vs floor", "waits?", "note"], rows)
    for s in res["skipped"]:
        out += f"\n\nskipped: {s}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=0.06, help="per contender per round")
    a = ap.parse_args()
    res = run(a.rounds, a.seconds)
    print(f"checkout + return, no query, pool of {POOL_SIZE}, 1 thread, median of "
          f"{a.rounds} interleaved rounds")
    print(render(res))
    if res.get("adapter_note"):
        print(f"\nmillpond: {res['adapter_note']}")


if __name__ == "__main__":
    main()
