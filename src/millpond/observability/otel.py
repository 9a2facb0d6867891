"""OpenTelemetry metrics for millpond pools, on ``opentelemetry-api`` (``millpond[otel]``).

    from millpond.observability.otel import instrument
    instrument(pool)                       # the global MeterProvider
    instrument(pool, meter_provider=mp)    # or one of yours

Registers the semantic conventions' connection-pool instruments. The gauges and counters are
observable ones whose callbacks read ``pool.stats()`` at collection time. The duration
histograms (``create_time``, ``wait_time``, ``use_time``, in seconds, on millpond's bucket
bounds) are recorded by a listener subscribed to the pool's connect, checkout and checkin
events (:meth:`Pool.subscribe`): the OpenTelemetry API has no asynchronous histogram. Listening
to checkouts sends them through the pool's slow path, a few microseconds each; use
``histograms=False`` to keep the fast path (``stats()`` and Prometheus still have the
histograms). Every observation carries ``db.client.connection.pool.name`` (the pool's
``name``, never its URL).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Protocol

from opentelemetry.metrics import (
    CallbackOptions,
    Histogram,
    Meter,
    MeterProvider,
    Observation,
    get_meter,
)

from millpond import HistogramSnapshot, PoolEvent, PoolStats, __version__
from millpond.observability import Observed

__all__ = ["POOL_NAME", "STATE", "Evented", "Instrumentation", "instrument", "uninstrument"]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

_Callback = Callable[[CallbackOptions], Iterable[Observation]]
#: the events whose durations the histograms record
TIMED = ("connect", "checkout", "checkin")
#: the same bucket bounds as ``stats()`` and the Prometheus exporter
BOUNDS = list(HistogramSnapshot().bounds)


class Evented(Observed, Protocol):
    """A pool whose events can be listened to (``Pool`` and ``AsyncPool``)."""

    def subscribe(
        self, listener: Callable[[PoolEvent], object], kinds: Iterable[str] | None = None
    ) -> Callable[[], None]: ...


class Instrumentation:
    """The instruments of one meter provider, observing every pool instrumented on it (an
    instrument name may be registered once per meter). Pools are held weakly: once one is
    closed or collected, the callbacks observe nothing more for it."""

    def __init__(self, meter: Meter) -> None:
        self._pools: weakref.WeakSet[Observed] = weakref.WeakSet()
        #: each pool's unsubscribe function, for the histograms' listener
        self._listening: weakref.WeakKeyDictionary[Observed, Callable[[], None]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self.meter = meter
        self.create_time = self._histogram(
            "db.client.connection.create_time", "The time it took to create a new connection."
        )
        self.wait_time = self._histogram(
            "db.client.connection.wait_time",
            "The time it took to obtain an open connection from the pool.",
        )
        self.use_time = self._histogram(
            "db.client.connection.use_time",
            "The time between borrowing a connection and returning it to the pool.",
        )
        self._by_kind = {
            "connect": self.create_time,
            "checkout": self.wait_time,
            "checkin": self.use_time,
        }
        self.instruments = [
            meter.create_observable_up_down_counter(
                "db.client.connection.count", [self._count], unit="{connection}",
                description="The number of connections that are currently in state "
                "described by the state attribute."),
            meter.create_observable_up_down_counter(
                "db.client.connection.idle.max", [self._read(lambda s: s.max_size)],
                unit="{connection}",
                description="The maximum number of idle open connections allowed."),
            meter.create_observable_up_down_counter(
                "db.client.connection.idle.min", [self._read(lambda s: s.min_size)],
                unit="{connection}",
                description="The minimum number of idle open connections allowed."),
            meter.create_observable_up_down_counter(
                "db.client.connection.max",
                [self._read(lambda s: s.max_size + s.max_overflow)], unit="{connection}",
                description="The maximum number of open connections allowed."),
            meter.create_observable_up_down_counter(
                "db.client.connection.pending_requests", [self._read(lambda s: s.waiting)],
                unit="{request}",
                description="The number of current pending requests for an open connection."),
            meter.create_observable_counter(
                "db.client.connection.timeouts", [self._read(lambda s: s.timeouts)],
                unit="{timeout}",
                description="The number of connection timeouts that have occurred trying to "
                "obtain a connection from the pool."),
        ]  # fmt: skip

    def _histogram(self, name: str, description: str) -> Histogram:
        return self.meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=BOUNDS
        )

    def add(self, pool: Evented, histograms: bool = True) -> None:
        with self._lock:
            self._pools.add(pool)
            if not histograms or pool in self._listening:
                return
            self._listening[pool] = pool.subscribe(self._recorder(pool.name), kinds=TIMED)

    def discard(self, pool: Observed) -> None:
        with self._lock:
            self._pools.discard(pool)
            stop = self._listening.pop(pool, None)
        if stop is not None:
            stop()

    def _recorder(self, name: str) -> Callable[[PoolEvent], None]:
        attributes = {POOL_NAME: name}
        by_kind = self._by_kind

        def record(event: PoolEvent) -> None:
            histogram = by_kind.get(event.kind)
            if histogram is not None and event.duration is not None:
                histogram.record(event.duration, attributes)

        return record

    def _stats(self) -> list[PoolStats]:
        with self._lock:
            pools = list(self._pools)
        out = []
        for pool in pools:
            s = pool.stats()
            if s.closed:
                self.discard(pool)
            else:
                out.append(s)
        return out

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for s in self._stats():
            out.append(Observation(s.idle, {POOL_NAME: s.name, STATE: "idle"}))
            out.append(Observation(s.in_use, {POOL_NAME: s.name, STATE: "used"}))
        return out

    def _read(self, value: Callable[[PoolStats], int]) -> _Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value(s), {POOL_NAME: s.name}) for s in self._stats()]

        return callback


# one Instrumentation per meter provider (None: the global one)
_by_provider: dict[int, tuple[MeterProvider | None, Instrumentation]] = {}
_registering = threading.Lock()


def instrument(
    pool: Evented, meter_provider: MeterProvider | None = None, *, histograms: bool = True
) -> Instrumentation:
    """Observe ``pool`` with the connection-pool instruments of ``meter_provider`` (default:
    the global one). Every pool instrumented on one provider shares its instruments, told
    apart by ``db.client.connection.pool.name``. ``histograms=False``: no create/wait/use
    time histograms, and no listener on the pool (its checkouts keep the fast path)."""
    with _registering:
        entry = _by_provider.get(id(meter_provider))
        if entry is None or entry[0] is not meter_provider:
            meter = get_meter("millpond", __version__, meter_provider=meter_provider)
            entry = (meter_provider, Instrumentation(meter))
            _by_provider[id(meter_provider)] = entry
        instrumentation = entry[1]
    instrumentation.add(pool, histograms)
    return instrumentation


def uninstrument(pool: Observed, meter_provider: MeterProvider | None = None) -> None:
    """Stop observing ``pool`` and unsubscribe its histograms' listener (a closed pool stops
    by itself)."""
    with _registering:
        entry = _by_provider.get(id(meter_provider))
    if entry is not None and entry[0] is meter_provider:
        entry[1].discard(pool)
