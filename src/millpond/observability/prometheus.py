"""Prometheus metrics for millpond pools, on ``prometheus_client`` (``millpond[prometheus]``).

    from prometheus_client import start_http_server
    from millpond.observability.prometheus import register

    register(pool)            # the default registry; register(pool, registry) for another
    start_http_server(9100)

One collector per registry serves every pool registered on it (Prometheus wants each metric
family once per scrape, with one series per pool, told apart by the ``pool_name`` label). It
reads ``pool.stats()`` at scrape time: nothing is recorded on the pool's hot path. Pools are
held weakly; a closed (or collected) pool drops out of the next scrape, or leaves at once with
:func:`unregister`.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from millpond import HistogramSnapshot, PoolStats
from millpond.observability import Observed

__all__ = ["MillpondCollector", "register", "unregister"]

# the OpenTelemetry semantic conventions' pool metrics under Prometheus names, then millpond's
POOL = "pool_name"
_Read = Callable[[PoolStats], float]
# (stats field, metric name without _total, help)
_COUNTERS = (
    ("checkouts", "millpond_checkouts", "Connections lent."),
    ("waits", "millpond_waits", "Checkouts that had to queue."),
    ("shed", "millpond_shed", "Callers refused at once with TooManyWaiters (max_waiting)."),
    ("connects", "millpond_connects", "Connections opened."),
    ("connect_errors", "millpond_connect_errors", "Connects that failed."),
    ("pings", "millpond_pings", "Validation and keepalive pings."),
    ("ping_failures", "millpond_ping_failures", "Pings that found the connection dead."),
    ("resets", "millpond_resets", "Rollbacks or full resets done on return."),
    ("reset_failures", "millpond_reset_failures", "Resets on return that failed."),
    ("leaks", "millpond_leaks", "Connections held past leak_timeout."),
    ("lost", "millpond_lost", "Connections dropped by a borrower without being returned."),
)
_HISTOGRAMS = (
    ("wait_time", "db_client_connection_wait_time_seconds",
     "The time it took to obtain an open connection from the pool."),
    ("use_time", "db_client_connection_use_time_seconds",
     "The time between borrowing a connection and returning it to the pool."),
    ("create_time", "db_client_connection_create_time_seconds",
     "The time it took to create a new connection (connect and configure)."),
)  # fmt: skip


class MillpondCollector(Collector):
    """Every metric of the pools registered on one registry."""

    def __init__(self) -> None:
        self._pools: weakref.WeakSet[Observed] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, pool: Observed) -> None:
        with self._lock:
            self._pools.add(pool)

    def discard(self, pool: Observed) -> bool:
        """Stop reporting ``pool``; True if no pool is left."""
        with self._lock:
            self._pools.discard(pool)
            return not self._pools

    @property
    def pools(self) -> list[Observed]:
        with self._lock:
            return list(self._pools)

    def _snapshots(self) -> list[PoolStats]:
        out = []
        for pool in self.pools:
            s = pool.stats()
            if s.closed:  # a closed pool reports nothing more (and is forgotten)
                self.discard(pool)
            else:
                out.append(s)
        return out

    def describe(self) -> list[Metric]:
        # the families without samples: the registry checks names against its other
        # collectors without taking a snapshot of any pool
        return list(self._families([]))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._snapshots())

    def _families(self, stats: list[PoolStats]) -> Iterator[Metric]:
        count = GaugeMetricFamily(
            "db_client_connection_count",
            "The number of connections that are currently in the state described by the "
            "state label.",
            labels=[POOL, "state"],
        )
        for s in stats:
            count.add_metric([s.name, "idle"], s.idle)
            count.add_metric([s.name, "used"], s.in_use)
        yield count
        yield _gauge(stats, "db_client_connection_pending_requests",
                     "The number of current pending requests for an open connection.",
                     lambda s: s.waiting)
        yield _gauge(stats, "db_client_connection_max",
                     "The maximum number of open connections allowed (max_size + max_overflow).",
                     lambda s: s.max_size + s.max_overflow)
        yield _gauge(stats, "db_client_connection_idle_max",
                     "The maximum number of idle open connections allowed (max_size).",
                     lambda s: s.max_size)
        yield _gauge(stats, "db_client_connection_idle_min",
                     "The minimum number of idle open connections allowed (min_size).",
                     lambda s: s.min_size)
        timeouts = CounterMetricFamily(
            "db_client_connection_timeouts",
            "The number of connection timeouts that have occurred trying to obtain a "
            "connection from the pool.",
            labels=[POOL],
        )
        for s in stats:
            timeouts.add_metric([s.name], s.timeouts)
        yield timeouts
        for field, name, doc in _HISTOGRAMS:
            h = HistogramMetricFamily(name, doc, labels=[POOL], unit="seconds")
            for s in stats:
                snap: HistogramSnapshot = getattr(s, field)
                h.add_metric([s.name], _buckets(snap), snap.sum)
            yield h
        yield _gauge(stats, "millpond_connections_opening",
                     "Connects in flight or queued for a worker.", lambda s: s.opening)
        yield _gauge(stats, "millpond_connections_closing",
                     "Retired connections whose close has not finished.", lambda s: s.closing)
        for field, name, doc in _COUNTERS:
            c = CounterMetricFamily(name, doc, labels=[POOL])
            for s in stats:
                c.add_metric([s.name], getattr(s, field))
            yield c
        closes = CounterMetricFamily(
            "millpond_closes", "Connections closed, by reason.", labels=[POOL, "reason"]
        )
        for s in stats:
            for reason, n in sorted(s.closed_by_reason.items()):
                closes.add_metric([s.name, reason], n)
        yield closes


def _gauge(stats: list[PoolStats], name: str, doc: str, value: _Read) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=[POOL])
    for s in stats:
        g.add_metric([s.name], value(s))
    return g


def _buckets(snap: HistogramSnapshot) -> list[tuple[str, float]]:
    return [("+Inf" if b == math.inf else repr(b), n) for b, n in snap.cumulative()]


# one collector per registry; the registries are held weakly (tests make many)
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, MillpondCollector] = (
    weakref.WeakKeyDictionary()
)
_registering = threading.Lock()


def register(pool: Observed, registry: CollectorRegistry | None = None) -> MillpondCollector:
    """Report ``pool`` on ``registry`` (default: ``prometheus_client.REGISTRY``). Returns the
    registry's millpond collector, shared by every pool registered on it."""
    reg = REGISTRY if registry is None else registry
    with _registering:
        collector = _collectors.get(reg)
        if collector is None:
            collector = MillpondCollector()
            reg.register(collector)
            _collectors[reg] = collector
        collector.add(pool)
    return collector


def unregister(pool: Observed, registry: CollectorRegistry | None = None) -> None:
    """Stop reporting ``pool``; the collector leaves the registry with its last pool."""
    reg = REGISTRY if registry is None else registry
    with _registering:
        collector = _collectors.get(reg)
        if collector is not None and collector.discard(pool):
            reg.unregister(collector)
            del _collectors[reg]
