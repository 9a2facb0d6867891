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

from millpond.observability.otel import POOL_NAME, STATE, instrument  # noqa: E402

NAMES = {
    "db.client.connection.count",
    "db.client.connection.idle.max",
    "db.client.connection.idle.min",
    "db.client.connection.max",
    "db.client.connection.pending_requests",
    "db.client.connection.timeouts",
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
    # both pools closed: nothing more is observed for them
    assert after == {}
