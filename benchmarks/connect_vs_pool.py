"""Connect-per-request vs a millpond Pool: requests per second for a ``SELECT 1``, one thread.

A request is: get a connection, ``SELECT 1``, fetch the row, let the connection go. Without a
pool that means opening a new connection (TCP + authentication + session start on a server;
opening the file on SQLite) and closing it every time; with a millpond ``Pool`` (default
options, a pool of 1) it means borrowing an open one and giving it back. Both sides use
autocommit where the driver has it (no transaction to end) and the same driver: psycopg 3
on PostgreSQL, PyMySQL on MariaDB, the standard ``sqlite3`` on a SQLite file.

The two modes run in alternating blocks of about 0.2 s (so a burst of load on a shared
machine hits both) for ``--seconds`` per database in all; requests per second is the median
of the per-block rates, the speedup the median of the per-pair ratios.

    python benchmarks/connect_vs_pool.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from typing import Any

import _common as c

BLOCK = 0.2  # seconds per block


def _rate(request: Callable[[], None], seconds: float) -> float:
    """Requests per second over one block of about ``seconds``."""
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(8):
            request()
        n += 8
        t = time.perf_counter()
        if t >= end:
            return n / (t - t0)


def _dbapi_select1(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchone()
    cur.close()


def _case(label: str, db: str, connect: Callable[[], Any], seconds: float,
          sqlite_path: str = "") -> dict[str, Any]:
    def per_request() -> None:
        conn = connect()
        try:
            _dbapi_select1(conn)
        finally:
            conn.close()

    pool, note = c.millpond_pool(db, autocommit=True, sqlite_path=sqlite_path,
                                 min_size=1, max_size=1)
    connection = pool.connection

    def pooled() -> None:
        with connection() as conn:
            _dbapi_select1(conn)

    try:
        # warm-up: first-use costs (imports, the server's first fork) off the clock
        _rate(per_request, 0.05)
        _rate(pooled, 0.05)
        new: list[float] = []
        pool_rates: list[float] = []
        pairs = max(2, round(seconds / (2 * BLOCK)))
        for i in range(pairs):
            first, second = (per_request, pooled) if i % 2 == 0 else (pooled, per_request)
            a = _rate(first, BLOCK)
            b = _rate(second, BLOCK)
            if first is per_request:
                new.append(a)
                pool_rates.append(b)
            else:
                new.append(b)
                pool_rates.append(a)
    finally:
        pool.close()
    return {
        "db": label, "new_rps": c.median(new), "pool_rps": c.median(pool_rates),
        "new_us": 1e6 / c.median(new), "pool_us": 1e6 / c.median(pool_rates),
        "speedup": c.median([p / n for p, n in zip(pool_rates, new, strict=True)]),
        "speedup_min": min(p / n for p, n in zip(pool_rates, new, strict=True)),
        "speedup_max": max(p / n for p, n in zip(pool_rates, new, strict=True)),
        "blocks": pairs, "note": note,
    }


def run(seconds: float = 2.0) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    pg = lambda: c.pg_connect(autocommit=True)  # noqa: E731
    # millpond's own PyMySQL connect: plain pymysql.connect builds a TLS context per call
    # (~17 ms here), which would flatter the pool; the adapter builds it once per process
    def my() -> Any:
        from millpond.drivers.url import resolve

        return resolve(c.MY_URL, {"autocommit": True}).connect()
    for label, db, need, connect, url in (
        ("PostgreSQL (psycopg 3)", "postgresql", "psycopg", pg, c.PG_URL),
        ("MariaDB (PyMySQL)", "mysql", "pymysql", my, c.MY_URL),
    ):
        if not c.have(need):
            skipped.append(f"{label}: `{need}` not installed")
            continue
        down = c.server_up(connect)
        if down:
            skipped.append(f"{label}: {url} unreachable: {down}")
            continue
        rows.append(_case(label, db, connect, seconds))
    fd, path = tempfile.mkstemp(suffix=".sqlite3", prefix="millpond-bench-")
    os.close(fd)
    try:
        rows.append(_case("SQLite (sqlite3, file)", "sqlite",
                          lambda: sqlite3.connect(path), seconds, sqlite_path=path))
    finally:
        os.unlink(path)
    return {"rows": rows, "skipped": skipped, "seconds": seconds, "block": BLOCK}


def render(res: dict[str, Any]) -> str:
    rows = [[r["db"], f"{r['new_rps']:,.0f}", f"{r['new_us']:,.1f}", f"{r['pool_rps']:,.0f}",
             f"{r['pool_us']:,.1f}", f"{r['speedup']:.1f}x",
             f"{r['speedup_min']:.1f}-{r['speedup_max']:.1f}x"] for r in res["rows"]]
    out = c.table(["database", "new connection: req/s", "us/req", "millpond Pool: req/s",
                   "us/req", "speedup (median)", "range"], rows)
    for s in res["skipped"]:
        out += f"\n\nskipped: {s}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per database, both modes")
    a = ap.parse_args()
    print(render(run(a.seconds)))


if __name__ == "__main__":
    main()
