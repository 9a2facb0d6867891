"""Shared plumbing for the benchmark scripts: servers, millpond pools, timing, tables.

The scripts are meant to be run from the repository root, e.g. ``python benchmarks/overhead.py``;
this module sits next to them and is imported by file name.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import millpond

PG_HOST = os.environ.get("MILLPOND_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MILLPOND_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("MILLPOND_BENCH_PG_USER", "postgres")
PG_DB = os.environ.get("MILLPOND_BENCH_PG_DB", "test")
PG_DSN = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={PG_DB}"
PG_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DB}"

MY_HOST = os.environ.get("MILLPOND_BENCH_MYSQL_HOST", "127.0.0.1")
MY_PORT = int(os.environ.get("MILLPOND_BENCH_MYSQL_PORT", "3306"))
MY_USER = os.environ.get("MILLPOND_BENCH_MYSQL_USER", "root")
MY_DB = os.environ.get("MILLPOND_BENCH_MYSQL_DB", "test")
MY_URL = f"mysql://{MY_USER}@{MY_HOST}:{MY_PORT}/{MY_DB}"


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def pg_connect(autocommit: bool = False) -> Any:
    import psycopg

    return psycopg.connect(PG_DSN, autocommit=autocommit)


def my_connect(autocommit: bool = False) -> Any:
    import pymysql

    return pymysql.connect(
        host=MY_HOST, port=MY_PORT, user=MY_USER, password="", database=MY_DB,
        autocommit=autocommit,
    )


def closer(conns: Sequence[Any]) -> Callable[[], None]:
    """A cleanup that closes every connection in ``conns``."""

    def close() -> None:
        for conn in conns:
            conn.close()

    return close


def server_up(connect: Callable[[], Any]) -> str | None:
    """None if a connection can be opened, else the reason (for a "skipped" note)."""
    try:
        connect().close()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


# -- millpond pools ---------------------------------------------------------------------------


def millpond_pool(db: str, *, autocommit: bool, sqlite_path: str = "", **options: Any
                  ) -> tuple[millpond.Pool, str]:
    """A millpond Pool on ``db`` ("postgresql", "mysql" or "sqlite") built from its URL, as a
    user would, opened and filled to ``min_size``; returns it with the adapter's name."""
    url = {"postgresql": PG_URL, "mysql": MY_URL, "sqlite": f"sqlite:///{sqlite_path}"}[db]
    kwargs = {"autocommit": True} if autocommit and db != "sqlite" else None
    pool = millpond.Pool(url, connect_kwargs=kwargs, **options)
    pool.open(wait=True, timeout=30)
    # the adapter is private; a benchmark may peek to say which one served the numbers
    return pool, f"adapter `{type(pool._adapter).__module__}`"


# -- timing -----------------------------------------------------------------------------------


def calibrate(loop: Callable[[int], None], target_s: float, start: int = 64) -> int:
    """How many iterations of ``loop`` take about ``target_s`` seconds. The first call is a
    warm-up (first-use costs such as a driver preparing a statement must not shrink n)."""
    loop(start)
    n = start
    while True:
        t0 = time.perf_counter()
        loop(n)
        dt = time.perf_counter() - t0
        if dt >= target_s / 4 or n >= 50_000_000:
            return max(1, int(n * target_s / max(dt, 1e-9)))
        n *= 4


def time_per_op(loop: Callable[[int], None], n: int) -> float:
    """Seconds per iteration for one timed run of ``loop(n)``. The collector is paused so a
    collection triggered by one contender's garbage does not land on another's clock."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        loop(n)
        return (time.perf_counter() - t0) / n
    finally:
        gc.enable()


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def percentile(sorted_xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (NaN if empty)."""
    if not sorted_xs:
        return float("nan")
    k = math.ceil(p / 100 * len(sorted_xs)) - 1
    return sorted_xs[max(0, min(len(sorted_xs) - 1, k))]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (also readable as plain text)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def machine() -> str:
    import platform
    import sys

    try:
        cpus = len(os.sched_getaffinity(0))  # what nproc reports
    except AttributeError:
        cpus = os.cpu_count() or 0
    return (f"{cpus} CPU(s) (nproc), {platform.machine()}, "
            f"Python {sys.version.split()[0]} ({platform.python_implementation()}), "
            f"{platform.system()} {platform.release()}")
