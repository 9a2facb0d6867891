"""Pooled ``SELECT 1`` against the same work on one raw, persistent connection: the pool's tax.

Both sides do exactly the same work per operation: run ``SELECT 1``, fetch the row, and leave
the connection with no transaction open -- the pool guarantees that on return, so the raw loop
must pay for it too. Two ways of ending the transaction are measured:

* ``autocommit`` (judged): the connection is in autocommit mode on both sides, so the SELECT
  opens no transaction, the pool finds the connection IDLE on return and nobody sends a
  ROLLBACK. One round trip per operation; the pool's overhead is the largest share it can be.
* ``rollback``: driver default (an implicit transaction); the raw loop calls ``rollback()``
  after each fetch, the pool rolls back on return. Two round trips per operation.

SQLite has no round trip at all (a SELECT 1 costs about a microsecond), so its tax shows the
pool's absolute cost rather than anything a network database would notice; it is reported but
not judged. Both sides use the same server session. Short raw and pooled blocks (~4 ms)
alternate for ~2 s per case; the tax is the median of the per-pair ratios (adjacent blocks
see the same machine load).

    python benchmarks/select1.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import _common as c

Loop = Callable[[int], None]


# The raw side borrows the pool's one connection for a whole block and uses it directly, so
# both sides talk to the same server session (a different backend process could be scheduled
# differently and bias a 5% comparison); one getconn per block of thousands is noise.


def _pg_cases(autocommit: bool) -> tuple[Loop, Loop, Callable[[], None], str]:
    pool, note = c.millpond_pool("postgresql", autocommit=autocommit, min_size=1, max_size=1)
    connection = pool.connection
    sql = "SELECT 1"

    def raw_loop(n: int) -> None:
        raw = pool.getconn()
        try:
            if autocommit:
                for _ in range(n):
                    raw.execute(sql).fetchall()
            else:
                for _ in range(n):
                    raw.execute(sql).fetchall()
                    raw.rollback()  # psycopg sends ROLLBACK only if a transaction is open
        finally:
            pool.putconn(raw)

    def pool_loop(n: int) -> None:
        for _ in range(n):
            with connection() as conn:
                conn.execute(sql).fetchall()

    return raw_loop, pool_loop, pool.close, note


def _my_cases(autocommit: bool) -> tuple[Loop, Loop, Callable[[], None], str]:
    pool, note = c.millpond_pool("mysql", autocommit=autocommit, min_size=1, max_size=1)
    connection = pool.connection
    sql = "SELECT 1"

    def work(conn: Any) -> None:
        cur = conn.cursor()
        cur.execute(sql)
        cur.fetchall()
        cur.close()

    def raw_loop(n: int) -> None:
        raw = pool.getconn()
        try:
            if autocommit:
                for _ in range(n):
                    work(raw)
            else:
                for _ in range(n):
                    work(raw)
                    # PyMySQL cannot tell whether a SELECT opened a transaction (the EOF
                    # packet carries no status), so the pool rolls back on every return
                    # outside autocommit, and so must the raw side
                    raw.rollback()
        finally:
            pool.putconn(raw)

    def pool_loop(n: int) -> None:
        for _ in range(n):
            with connection() as conn:
                work(conn)

    return raw_loop, pool_loop, pool.close, note


def _sqlite_cases(path: str) -> tuple[Loop, Loop, Callable[[], None], str]:
    # sqlite3's legacy transaction control opens no transaction for a SELECT: both sides are
    # "autocommit" without asking, and the pool finds nothing to roll back
    pool, note = c.millpond_pool("sqlite", autocommit=True, sqlite_path=path, min_size=1,
                                 max_size=1)
    connection = pool.connection
    sql = "SELECT 1"

    def raw_loop(n: int) -> None:
        raw = pool.getconn()
        try:
            for _ in range(n):
                raw.execute(sql).fetchall()
        finally:
            pool.putconn(raw)

    def pool_loop(n: int) -> None:
        for _ in range(n):
            with connection() as conn:
                conn.execute(sql).fetchall()

    return raw_loop, pool_loop, pool.close, note


def _measure(raw_loop: Loop, pool_loop: Loop, seconds: float) -> dict[str, float]:
    """Alternate short raw and pooled blocks (a few ms each) for about ``seconds``. Load on
    this machine drifts over seconds and moves the round trip by 3x; two adjacent short
    blocks see the same conditions, and the median over hundreds of pairs ignores the
    blocks a preemption landed in."""
    block_s = 0.004
    c.calibrate(pool_loop, block_s * 8)  # warm-up only: both sides run the same n
    # calibrated over 8 blocks' worth, so one unlucky preemption cannot shrink the block;
    # at least 20 operations so the raw side's one getconn per block stays negligible
    n = max(20, c.calibrate(raw_loop, block_s * 8) // 8)
    raw_t: list[float] = []
    pool_t: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds
    gc.collect()
    gc.disable()  # a collection must not land in one side's block only
    try:
        r = 0
        while clock() < deadline or r < 10:
            # alternate which side goes first, so neither always inherits the other's wake
            for side in ((raw_loop, raw_t), (pool_loop, pool_t))[:: 1 if r % 2 else -1]:
                t0 = clock()
                side[0](n)
                side[1].append((clock() - t0) / n)
            r += 1
    finally:
        gc.enable()
    ratios = [p / a for a, p in zip(raw_t, pool_t, strict=True)]
    diffs = [p - a for a, p in zip(raw_t, pool_t, strict=True)]
    return {
        "raw_us": c.median(raw_t) * 1e6,
        "pool_us": c.median(pool_t) * 1e6,
        "tax_pct": (c.median(ratios) - 1) * 100,
        "extra_us": c.median(diffs) * 1e6,
        "ops_per_block": n,
        "rounds": r,
    }


def run(seconds: float = 2.0) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    notes: dict[str, str] = {}

    def case(db: str, mode: str, judged: bool,
             make: Callable[[], tuple[Loop, Loop, Callable[[], None], str]]) -> None:
        raw_loop, pool_loop, cleanup, note = make()
        notes[db] = note
        try:
            m = _measure(raw_loop, pool_loop, seconds)
        finally:
            cleanup()
        rows.append({"db": db, "mode": mode, "judged": judged, **m})

    if not c.have("psycopg"):
        skipped.append("PostgreSQL: psycopg not installed")
    elif down := c.server_up(c.pg_connect):
        skipped.append(f"PostgreSQL: unreachable ({down})")
    else:
        case("PostgreSQL (psycopg 3)", "autocommit", True, lambda: _pg_cases(True))
        case("PostgreSQL (psycopg 3)", "rollback", False, lambda: _pg_cases(False))

    if not c.have("pymysql"):
        skipped.append("MariaDB: PyMySQL not installed")
    elif down := c.server_up(c.my_connect):
        skipped.append(f"MariaDB: unreachable ({down})")
    else:
        case("MariaDB (PyMySQL)", "autocommit", True, lambda: _my_cases(True))
        case("MariaDB (PyMySQL)", "rollback", False, lambda: _my_cases(False))

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "select1.sqlite")
        case("SQLite (sqlite3, file)", "no transaction", False, lambda: _sqlite_cases(path))

    return {"rows": rows, "skipped": skipped, "seconds": seconds, "adapter_notes": notes}


def render(res: dict[str, Any]) -> str:
    rows = [[r["db"], r["mode"], f"{r['raw_us']:.1f}", f"{r['pool_us']:.1f}",
             f"{r['extra_us']:+.2f}", f"{r['tax_pct']:+.1f}%", "yes" if r["judged"] else "info"]
            for r in res["rows"]]
    out = c.table(["database", "ending the transaction", "raw us/op", "pooled us/op",
                   "pool adds (us/op)", "tax", "judged"], rows)
    for s in res["skipped"]:
        out += f"\n\nskipped: {s}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per case (both sides)")
    a = ap.parse_args()
    res = run(a.seconds)
    print("SELECT 1: millpond `with pool.connection()` vs a raw persistent connection, "
          "median over alternating ~4 ms blocks")
    print(render(res))
    for db, note in res["adapter_notes"].items():
        print(f"\nmillpond on {db}: {note}")


if __name__ == "__main__":
    main()
