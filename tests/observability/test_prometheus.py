"""``millpond.observability.prometheus``: a real ``CollectorRegistry`` scraped during real load
on PostgreSQL, read back by metric name, label and value."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest

import millpond
from tests.conftest import require_package

from .conftest import PASSWORD

prometheus_client = require_package("prometheus_client", "prometheus")
parser = require_package("prometheus_client.parser", "prometheus")
om = require_package("prometheus_client.openmetrics.exposition", "prometheus")
require_package("psycopg", "psycopg")

from millpond.observability.prometheus import register, unregister  # noqa: E402

EXPECTED = {
    "db_client_connection_count",
    "db_client_connection_pending_requests",
    "db_client_connection_max",
    "db_client_connection_idle_max",
    "db_client_connection_idle_min",
    "db_client_connection_timeouts",
    "db_client_connection_wait_time_seconds",
    "db_client_connection_use_time_seconds",
    "db_client_connection_create_time_seconds",
    "millpond_connects",
    "millpond_connect_errors",
    "millpond_pings",
    "millpond_ping_failures",
    "millpond_resets",
    "millpond_leaks",
    "millpond_closes",
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def families(registry: Any) -> dict[str, Any]:
    text = prometheus_client.generate_latest(registry).decode()
    assert PASSWORD not in text
    parsed = parser.text_string_to_metric_families(text)
    return {f.name: f for f in parsed}


def load(pool: millpond.Pool, threads: int, rounds: int) -> None:
    def work() -> None:
        for _ in range(rounds):
            with pool.connection() as conn:
                conn.execute("SELECT pg_sleep(0.002)")

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)


def test_every_metric_is_read_back_during_real_load(pg_url_with_password: str) -> None:
    registry = prometheus_client.CollectorRegistry()
    name = unique("prom")
    with millpond.Pool(pg_url_with_password, name=name, min_size=1, max_size=2,
                       max_overflow=1, timeout=30) as pool:
        pool.open(wait=True, timeout=10)
        register(pool, registry)
        # scrape while 4 threads share 3 connections: callers queue, the registry reads
        scrapes: list[dict[str, Any]] = []
        t = threading.Thread(target=lambda: load(pool, threads=4, rounds=25))
        t.start()
        while t.is_alive():
            scrapes.append(families(registry))
        t.join()
        assert scrapes, "the load ended before a single scrape"
        # one timeout and one discarded connection, to see those counters move
        held = [pool.getconn(), pool.getconn(), pool.getconn()]
        with pytest.raises(millpond.PoolTimeout):
            pool.getconn(timeout=0)
        in_use = families(registry)
        pool.putconn(held.pop(), discard=True)
        for conn in held:
            pool.putconn(conn)
        s = pool.stats()
        fams = families(registry)
        openmetrics = om.generate_latest(registry).decode()

    assert set(fams) >= EXPECTED
    get = registry.get_sample_value
    labels = {"pool_name": name}
    used = {s.labels["state"]: s.value for s in in_use["db_client_connection_count"].samples
            if s.labels["pool_name"] == name}
    assert used == {"idle": 0.0, "used": 3.0}
    # the pool is closed now: its series are gone from the registry
    assert get("db_client_connection_max", labels) is None
    # values of the last scrape before close, against the pool's own stats
    def value(metric: str, **extra: str) -> float:
        for fam in fams.values():
            for sample in fam.samples:
                if sample.name == metric and sample.labels == {**labels, **extra}:
                    return float(sample.value)
        raise AssertionError(f"no sample {metric} {labels | extra}")

    assert value("db_client_connection_max") == 3  # max_size + max_overflow
    assert value("db_client_connection_idle_max") == 2
    assert value("db_client_connection_idle_min") == 1
    assert value("db_client_connection_pending_requests") == 0
    assert value("db_client_connection_count", state="idle") == s.idle
    assert value("db_client_connection_count", state="used") == 0
    assert fams["db_client_connection_timeouts"].type == "counter"
    assert value("db_client_connection_timeouts_total") == 1 == s.timeouts
    assert value("millpond_connects_total") == s.connects >= 3
    assert value("millpond_closes_total", reason="discarded") == 1
    wait = fams["db_client_connection_wait_time_seconds"]
    assert wait.type == "histogram"
    assert "# UNIT db_client_connection_wait_time_seconds seconds" in openmetrics
    assert value("db_client_connection_wait_time_seconds_count") == s.checkouts == 103
    assert value("db_client_connection_wait_time_seconds_bucket", le="+Inf") == s.checkouts
    # 4 callers on 3 connections: some waited beyond the lowest bucket
    assert value("db_client_connection_wait_time_seconds_bucket", le="0.0001") < s.checkouts
    assert value("db_client_connection_wait_time_seconds_sum") > 0
    assert value("db_client_connection_use_time_seconds_count") == 103
    assert value("db_client_connection_use_time_seconds_sum") >= 100 * 0.002
    assert value("db_client_connection_create_time_seconds_count") == s.connects
    buckets = [(float(x.labels["le"]), x.value) for x in wait.samples
               if x.name.endswith("_bucket") and x.labels["pool_name"] == name]
    assert [b for b, _ in buckets] == [*millpond.HistogramSnapshot().bounds, float("inf")]
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative


def test_several_pools_share_one_registry_and_leave_it(pg_url_with_password: str) -> None:
    registry = prometheus_client.CollectorRegistry(auto_describe=True)
    a_name, b_name = unique("prom-a"), unique("prom-b")
    a = millpond.Pool(pg_url_with_password, name=a_name, min_size=1, max_size=2)
    b = millpond.Pool(pg_url_with_password, name=b_name, min_size=1, max_size=3)
    try:
        a.open(wait=True, timeout=10)
        b.open(wait=True, timeout=10)
        first = register(a, registry)
        assert register(b, registry) is first  # one collector serves the registry's pools
        text = prometheus_client.generate_latest(registry).decode()
        assert text.count("# TYPE db_client_connection_max gauge") == 1
        get = registry.get_sample_value
        assert get("db_client_connection_max", {"pool_name": a_name}) == 2
        assert get("db_client_connection_max", {"pool_name": b_name}) == 3
        unregister(a, registry)
        assert get("db_client_connection_max", {"pool_name": a_name}) is None
        assert get("db_client_connection_max", {"pool_name": b_name}) == 3
        unregister(b, registry)
        assert "db_client_connection_max" not in prometheus_client.generate_latest(
            registry).decode()
        # with its last pool gone the collector left: a new one can register again
        assert register(b, registry) is not first
        assert get("db_client_connection_max", {"pool_name": b_name}) == 3
        unregister(b, registry)
    finally:
        a.close()
        b.close()


def test_an_async_pool_is_scraped_from_another_thread(pg_url_with_password: str) -> None:
    require_package("asyncpg", "asyncpg")
    registry = prometheus_client.CollectorRegistry()
    name = unique("prom-async")
    url = pg_url_with_password.replace("postgresql://", "postgresql+asyncpg://", 1)

    async def main() -> tuple[list[dict[str, Any]], millpond.PoolStats]:
        async with millpond.AsyncPool(url, name=name, min_size=1, max_size=2) as pool:
            register(pool, registry)

            async def work() -> None:
                for _ in range(20):
                    async with pool.connection() as conn:
                        await conn.execute("SELECT pg_sleep(0.002)")

            tasks = asyncio.gather(*(work() for _ in range(4)))
            scrapes = []
            while not tasks.done():
                # the exporter's thread reads stats() while the loop moves connections
                scrapes.append(await asyncio.to_thread(families, registry))
            await tasks
            final = await asyncio.to_thread(families, registry)
            return [*scrapes, final], pool.stats()

    scrapes, s = asyncio.run(main())
    last = scrapes[-1]
    assert len(scrapes) >= 2
    wait_count = [x.value for x in last["db_client_connection_wait_time_seconds"].samples
                  if x.name.endswith("_count") and x.labels["pool_name"] == name]
    assert wait_count == [80] == [s.checkouts]
    idle = [x.value for x in last["db_client_connection_count"].samples
            if x.labels == {"pool_name": name, "state": "idle"}]
    assert idle == [s.idle]
    assert registry.get_sample_value("db_client_connection_max", {"pool_name": name}) is None
