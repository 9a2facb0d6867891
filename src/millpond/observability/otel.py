"""OpenTelemetry metrics for millpond pools, on ``opentelemetry-api`` (``millpond[otel]``).

    from millpond.observability.otel import instrument
    instrument(pool)                       # the global MeterProvider
    instrument(pool, meter_provider=mp)    # or one of yours

Registers the semantic conventions' connection-pool instruments as observable ones whose
callbacks read ``pool.stats()`` at collection time: nothing runs on the pool's hot path. Every
observation carries ``db.client.connection.pool.name`` (the pool's ``name``, never its URL).

Not yet exported: the ``create_time``/``wait_time``/``use_time`` histograms. The OpenTelemetry
API has no asynchronous histogram, and replaying ``stats()``'s bucket counts into a synchronous
one would cost a ``record()`` per checkout at collection time; they need a duration listener in
the pool (see docs/observability.md). ``stats()`` and the Prometheus exporter have them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation, get_meter

from millpond import PoolStats, __version__
from millpond.observability import Observed

__all__ = ["POOL_NAME", "STATE", "Instrumentation", "instrument", "uninstrument"]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

_Callback = Callable[[CallbackOptions], Iterable[Observation]]


class Instrumentation:
    """The instruments of one meter provider, observing every pool instrumented on it (an
    instrument name may be registered once per meter). Pools are held weakly: once one is
    closed or collected, the callbacks observe nothing more for it."""

    def __init__(self, meter: Meter) -> None:
        self._pools: weakref.WeakSet[Observed] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.meter = meter
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

    def add(self, pool: Observed) -> None:
        with self._lock:
            self._pools.add(pool)

    def discard(self, pool: Observed) -> None:
        with self._lock:
            self._pools.discard(pool)

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


def instrument(pool: Observed, meter_provider: MeterProvider | None = None) -> Instrumentation:
    """Observe ``pool`` with the connection-pool instruments of ``meter_provider`` (default:
    the global one). Every pool instrumented on one provider shares its instruments, told
    apart by ``db.client.connection.pool.name``."""
    with _registering:
        entry = _by_provider.get(id(meter_provider))
        if entry is None or entry[0] is not meter_provider:
            meter = get_meter("millpond", __version__, meter_provider=meter_provider)
            entry = (meter_provider, Instrumentation(meter))
            _by_provider[id(meter_provider)] = entry
        instrumentation = entry[1]
    instrumentation.add(pool)
    return instrumentation


def uninstrument(pool: Observed, meter_provider: MeterProvider | None = None) -> None:
    """Stop observing ``pool`` (a closed pool stops by itself)."""
    with _registering:
        entry = _by_provider.get(id(meter_provider))
    if entry is not None and entry[0] is meter_provider:
        entry[1].discard(pool)
