"""See a pool from outside: metrics for Prometheus (:mod:`millpond.observability.prometheus`)
and OpenTelemetry (:mod:`millpond.observability.otel`).

Both read :meth:`Pool.stats` (and its wait/use/create histograms) when they are scraped or
collected, so the pool's hot path pays nothing for them; only the OpenTelemetry duration
histograms listen to the pool's checkout events instead (there is no asynchronous histogram). Importing this package imports neither
``prometheus_client`` nor ``opentelemetry``: each lives in its own extra.
"""

from __future__ import annotations

from typing import Protocol

from millpond import PoolStats

__all__ = ["Observed"]


class Observed(Protocol):
    """What the exporters need from a pool: ``Pool`` and ``AsyncPool`` both qualify (their
    ``stats()`` is synchronous and safe to call from an exporter's thread)."""

    @property
    def name(self) -> str: ...

    def stats(self) -> PoolStats: ...
