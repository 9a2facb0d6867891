"""The frozen snapshot ``pool.stats()`` returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from millpond._core.histogram import HistogramSnapshot

__all__ = ["PoolStats"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Gauges (what the pool looks like now) and counters (what happened since it opened)."""

    name: str
    # gauges
    size: int  # open connections the pool owns: idle + in_use
    idle: int
    in_use: int  # lent out, or being reset after return
    waiting: int  # callers queued for a connection
    opening: int  # connects in flight or queued for a worker
    min_size: int
    max_size: int
    max_overflow: int
    closed: bool
    #: connections retired whose close has not finished; they still count against the cap
    closing: int = 0
    # counters
    checkouts: int = 0  # connections lent
    waits: int = 0  # checkouts that had to queue
    timeouts: int = 0  # callers that gave up (PoolTimeout)
    shed: int = 0  # callers refused with TooManyWaiters
    connects: int = 0  # connections opened
    connect_errors: int = 0
    pings: int = 0
    ping_failures: int = 0
    resets: int = 0  # rollbacks or full resets done on return
    reset_failures: int = 0
    leaks: int = 0  # leak_timeout warnings
    lost: int = 0  # connections dropped by a borrower without being returned
    #: connections closed, by reason: expired, idle, broken, ping_failed, reset_failed,
    #: max_uses, overflow, resized, drained, discarded, closed, garbage_collected, fork
    closed_by_reason: Mapping[str, int] = field(default_factory=dict)
    last_connect_error: str | None = None
    last_connect_error_at: float | None = None  # on the pool's monotonic clock
    # timings, in seconds, on the pool's clock (bucket counts, sum, max, p50/p99 estimates)
    #: asking for a connection to getting it; an idle one on the fast path counts as ~0
    wait_time: HistogramSnapshot = field(default_factory=HistogramSnapshot)
    #: lent to returned (a connection closed by its borrower's return counts too)
    use_time: HistogramSnapshot = field(default_factory=HistogramSnapshot)
    #: connect + configure of each connection opened
    create_time: HistogramSnapshot = field(default_factory=HistogramSnapshot)

    @property
    def closed_total(self) -> int:
        return sum(self.closed_by_reason.values())

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["closed_by_reason"] = dict(self.closed_by_reason)
        return d
