"""``millpond.observability.otel``: the OpenTelemetry SDK's in-memory reader collects every
instrument during real load on PostgreSQL, read back by name, unit, attributes and value."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

import millpond
from tests.conftest import require_package

from .conftest import PASSWORD

require_package("opentelemetry.metrics", "otel")
require_package("psycopg", "psycopg")
sdk = require_package("opentelemetry.sdk.metrics", "test")
export = require_package("opentelemetry.sdk.metrics.export", "test")

from millpond.observability.otel import POOL_NAME, STATE, instrument, uninstrument  # noqa: E402

NAMES = {
    "db.client.connection.count",
    "db.client.connection.idle.max",
    "db.client.connection.idle.min",
    "db.client.connection.max",
    "db.client.connection.pending_requests",
    "db.client.connection.timeouts",
}
HISTOGRAMS = {
    "db.client.connection.create_time": "create_time",
    "db.client.connection.wait_time": "wait_time",
    "db.client.connection.use_time": "use_time",
}


def read(reader: Any) -> dict[str, Any]:
    data = reader.get_metrics_data()
    out: dict[str, Any] = {}
    if data is None:  # nothing observed at all
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = m
    assert PASSWORD not in repr(data)
    return out


def points(metric: Any) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(p.attributes.items())): p.value for p in metric.data.data_points}


def test_every_instrument_is_read_back_during_real_load(pg_url_with_password: str) -> None:
    reader = export.InMemoryMetricReader()
    provider = sdk.MeterProvider(metric_readers=[reader])
    name = f"otel-{uuid.uuid4().hex[:8]}"
    other = f"otel-b-{uuid.uuid4().hex[:8]}"
    try:
        with millpond.Pool(pg_url_with_password, name=name, min_size=1, max_size=2,
                           max_overflow=1, timeout=30) as pool, \
                millpond.Pool(pg_url_with_password, name=other, min_size=1, max_size=4) as b:
            pool.open(wait=True, timeout=10)
            b.open(wait=True, timeout=10)
            instrument(pool, meter_provider=provider)
            instrument(b, meter_provider=provider)

            def work() -> None:
                for _ in range(20):
                    with pool.connection() as conn:
                        conn.execute("SELECT pg_sleep(0.002)")

            ts = [threading.Thread(target=work) for _ in range(4)]
            for t in ts:
                t.start()
            during = []
            while any(t.is_alive() for t in ts):
                during.append(read(reader))
            for t in ts:
                t.join(60)
            held = [pool.getconn(), pool.getconn(), pool.getconn()]
            with pytest.raises(millpond.PoolTimeout):
                pool.getconn(timeout=0)
            busy = read(reader)
            for conn in held:
                pool.putconn(conn)
            s = pool.stats()
            metrics = read(reader)
        after = read(reader)
    finally:
        provider.shutdown()

    assert during
    assert set(metrics) >= NAMES
    mine = ((POOL_NAME, name),)
    assert points(busy["db.client.connection.count"])[(*mine, (STATE, "used"))] == 3
    count = points(metrics["db.client.connection.count"])
    assert count[(*mine, (STATE, "idle"))] == s.idle
    assert count[(*mine, (STATE, "used"))] == 0
    assert metrics["db.client.connection.count"].unit == "{connection}"
    assert points(metrics["db.client.connection.max"])[mine] == 3
    assert points(metrics["db.client.connection.max"])[((POOL_NAME, other),)] == 4
    assert points(metrics["db.client.connection.idle.max"])[mine] == 2
    assert points(metrics["db.client.connection.idle.min"])[mine] == 1
    assert points(metrics["db.client.connection.pending_requests"])[mine] == 0
    timeouts = metrics["db.client.connection.timeouts"]
    assert timeouts.data.is_monotonic
    assert points(timeouts)[mine] == 1 == s.timeouts
    assert {"db.client.connection.wait_time", "db.client.connection.use_time"} <= set(metrics)
    # both pools closed: nothing more is observed for them (the histograms, synchronous
    # instruments, keep their cumulative points)
    assert set(after) <= set(HISTOGRAMS)



def test_duration_histograms_match_stats_during_real_load(pg_url_with_password: str) -> None:
    reader = export.InMemoryMetricReader()
    provider = sdk.MeterProvider(metric_readers=[reader])
    name = f"otel-h-{uuid.uuid4().hex[:8]}"
    try:
        with millpond.Pool(pg_url_with_password, name=name, min_size=1, max_size=2,
                           timeout=30, open=False) as pool:
            instrument(pool, meter_provider=provider)
            pool.open(wait=True, timeout=10)

            def work() -> None:
                for _ in range(15):
                    with pool.connection() as conn:
                        conn.execute("SELECT pg_sleep(0.005)")

            ts = [threading.Thread(target=work) for _ in range(4)]  # 4 callers, 2 connections
            for t in ts:
                t.start()
            for t in ts:
                t.join(60)
            s = pool.stats()
            metrics = read(reader)
            uninstrument(pool, meter_provider=provider)
            with pool.connection() as conn:
                conn.execute("SELECT 1")
            after = read(reader)
    finally:
        provider.shutdown()

    assert s.waits > 0  # callers really queued
    for metric_name, field in HISTOGRAMS.items():
        metric = metrics[metric_name]
        assert metric.unit == "s"
        (point,) = metric.data.data_points
        assert dict(point.attributes) == {POOL_NAME: name}
        mine: millpond.HistogramSnapshot = getattr(s, field)
        assert list(point.explicit_bounds) == list(mine.bounds)
        assert tuple(point.bucket_counts) == mine.counts, metric_name
        assert point.count == mine.count > 0
        assert point.sum == pytest.approx(mine.sum, rel=1e-6, abs=1e-9)
        assert point.max == pytest.approx(mine.max)
    assert metrics["db.client.connection.wait_time"].data.data_points[0].count == 60
    assert metrics["db.client.connection.use_time"].data.data_points[0].sum >= 60 * 0.005
    # uninstrumented: the checkout after it was not recorded (cumulative counts unchanged)
    if after:
        wait = after.get("db.client.connection.wait_time")
        assert wait is None or wait.data.data_points[0].count == 60


def test_histograms_false_leaves_the_pool_unsubscribed(pg_url_with_password: str) -> None:
    reader = export.InMemoryMetricReader()
    provider = sdk.MeterProvider(metric_readers=[reader])
    name = f"otel-n-{uuid.uuid4().hex[:8]}"
    try:
        with millpond.Pool(pg_url_with_password, name=name, min_size=1, max_size=1) as pool:
            pool.open(wait=True, timeout=10)
            instrument(pool, meter_provider=provider, histograms=False)
            with pool.connection() as conn:
                conn.execute("SELECT 1")
            metrics = read(reader)
    finally:
        provider.shutdown()
    assert points(metrics["db.client.connection.max"])[((POOL_NAME, name),)] == 1
    wait = metrics.get("db.client.connection.wait_time")
    assert wait is None or not wait.data.data_points
