"""The pieces of ``millpond bench`` that need no database: the advice, the choice of modes,
the number formats."""

from __future__ import annotations

from typing import Any

import pytest

from millpond.cli import bench
from millpond.cli.bench_output import advise, fmt_ms, speedup
from millpond.cli.bench_sql import ServerInfo


def run(mode: str, size: int | None, rps: float, p99: float = 1.0) -> dict[str, Any]:
    return {
        "mode": mode,
        "label": {"nopool": "no pool", "millpond": "millpond Pool"}.get(mode, mode),
        "pool_size": size,
        "ok": 100,
        "errors": 0,
        "throughput_rps": rps,
        "latency_ms": {"p50": p99 / 2, "p95": p99, "p99": p99},
        "interrupted": False,
    }


def report(runs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "runs": runs,
        "processes": 1,
        "asyncio": False,
        "concurrency": 16,
        "database": "postgresql",
        **extra,
    }


SWEEP = [
    run("nopool", None, 500, p99=20),
    run("millpond", 1, 2000),
    run("millpond", 2, 3800),
    run("millpond", 4, 5900, p99=0.8),
    run("millpond", 8, 6000),
    run("millpond", 16, 5800),
]


def test_advice_is_the_smallest_pool_within_5_percent_of_the_best() -> None:
    advice = advise(report(SWEEP), ServerInfo(max_connections=100, in_use=11))
    assert advice is not None
    assert advice["pool_size"] == 4  # 5,900 >= 95% of 6,000; 2 is not
    assert advice["best_pool_size"] == 8
    assert advice["connections_needed"] == 4
    text = advice["text"]
    assert text.startswith("Advice: a pool of 4 gives 98% of millpond Pool's best throughput")
    assert "more connections buy nothing here" in text
    assert "of max_connections 100 (10 in use by others), leaving 86" in text
    assert "--processes N" in text


def test_advice_counts_every_process_against_max_connections() -> None:
    advice = advise(report(SWEEP, processes=30), ServerInfo(max_connections=100, in_use=1))
    assert advice is not None
    assert advice["connections_needed"] == 120
    assert "30 processes × 4 = 120 server connections" in advice["text"]
    assert "more than the server allows" in advice["text"]
    assert "--processes N" not in advice["text"]


def test_advice_for_one_size_suggests_a_sweep() -> None:
    advice = advise(report([run("millpond", 8, 6000)]), None)
    assert advice is not None
    assert "only a pool of 8 was measured" in advice["text"]
    assert "--pool-size 1,2,4,8,16" in advice["text"]


def test_advice_when_throughput_still_rises() -> None:
    runs = [run("millpond", 1, 1000), run("millpond", 2, 2000)]
    advice = advise(report(runs, database="sqlite"), None)
    assert advice is not None and advice["pool_size"] == 2
    assert "still rising at the largest size tried" in advice["text"]
    assert "SQLite has no server" in advice["text"]


def test_advice_falls_back_to_the_best_peer_and_skips_broken_runs() -> None:
    broken = {**run("sqlalchemy", 1, 0), "ok": 0}
    cut = {**run("sqlalchemy", 4, 9000), "interrupted": True}
    advice = advise(report([broken, run("sqlalchemy", 2, 3000), cut]), None)
    assert advice is not None and advice["mode"] == "sqlalchemy" and advice["pool_size"] == 2
    assert advise(report([broken, cut]), None) is None


def test_speedup_compares_the_advised_pool_with_no_pool() -> None:
    r = report(SWEEP)
    r["advice"] = advise(r, None)
    result = speedup(r)
    assert result is not None
    assert result["throughput_ratio"] == pytest.approx(11.8)
    assert result["text"] == (
        "millpond Pool with 4 connections: 11.8x the throughput of a new "
        "connection per request, p99 0.800 ms instead of 20.0 ms."
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (0.02712, "0.027"), (1.034, "1.03"), (12.34, "12.3"), (1234.5, "1,234")],
)
def test_fmt_ms(value: float | None, text: str) -> None:
    assert fmt_ms(value) == text


def test_modes_for_postgresql_name_the_url_that_runs_the_others() -> None:
    plan = bench.plan_modes(False, "psycopg", None)
    keys = [m.key for m in plan.modes]
    assert keys[:2] == ["nopool", "millpond"]
    skipped = {s["mode"]: s for s in plan.skipped}
    assert "postgresql+psycopg2://" in skipped["psycopg2"]["reason"]
    assert "postgresql+asyncpg://" in skipped["asyncpg"]["reason"]
    assert "mysqlconnector" not in skipped and "aiomysql" not in skipped  # other database


def test_modes_requested_keep_their_order_and_refuse_what_cannot_run() -> None:
    plan = bench.plan_modes(True, "asyncpg", ["millpond", "nopool"])
    assert [m.key for m in plan.modes] == ["millpond", "nopool"]
    assert plan.skipped == []
    with pytest.raises(bench.BenchError, match="DBUtils PooledDB cannot run here"):
        bench.plan_modes(True, "asyncpg", ["dbutils"])


def test_default_sizes_double_up_to_the_concurrency() -> None:
    assert bench._default_sizes(8) == [1, 2, 4, 8]
    assert bench._default_sizes(12) == [1, 2, 4, 8, 12]
    assert bench._default_sizes(1) == [1]
