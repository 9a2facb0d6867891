"""Measuring one run of ``millpond bench``: workers (threads, or asyncio tasks) issue requests,
each borrowing a connection through one mode's context manager, until the duration or the
request budget is spent.

Each worker keeps private tallies, merged only when the run is over, so the request loop takes
no lock and shares nothing but the stop signal and the request budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import threading
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from millpond.errors import PoolError

__all__ = [
    "ERROR_BACKOFF",
    "Interrupted",
    "RunLimits",
    "RunResult",
    "drive_tasks",
    "drive_threads",
    "one_line",
    "percentile",
]

# A failed request waits this long before the next: a pool that fails at once (psycopg2.pool
# when every connection is lent) would otherwise spin, and its errors would steal the CPU the
# working requests need.
ERROR_BACKOFF = 0.001
# After the stop signal, workers finish the request in flight; one stuck longer is abandoned.
GRACE = 10.0

Update = Callable[[float, int, float], None]  # (progress done, requests done, seconds elapsed)


class Interrupted(Exception):
    """Ctrl-C stopped a run; its result holds what was measured until then."""


@dataclass(frozen=True)
class RunLimits:
    concurrency: int
    duration: float | None  # seconds, or None with a request budget
    requests: int | None
    think: float  # seconds between a worker's requests, holding no connection


@dataclass
class RunResult:
    mode: str
    label: str
    pool_size: int | None  # None: no pool
    concurrency: int
    requests: int = 0  # finished, with or without error
    errors: int = 0
    elapsed: float = 0.0
    # seconds, of successful requests; arrays of doubles take a quarter of a list's memory,
    # which matters at a few hundred thousand requests a second
    latencies: array[float] = field(default_factory=lambda: array("d"), repr=False)
    waits: array[float] = field(default_factory=lambda: array("d"), repr=False)
    connections_opened: int = 0
    first_error: str | None = None
    interrupted: bool = False

    _summary: dict[str, Any] | None = field(default=None, repr=False)

    def finish(self) -> None:
        """Compute the summary and let go of the samples: a sweep keeps one run's at a time."""
        self._summary = self.summary()
        self.latencies = array("d")
        self.waits = array("d")

    def summary(self) -> dict[str, Any]:
        if self._summary is not None:
            return self._summary
        lat = sorted(self.latencies)
        wait = sorted(self.waits)
        ok = self.requests - self.errors
        return {
            "mode": self.mode,
            "label": self.label,
            "pool_size": self.pool_size,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": ok,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed, 4),
            "throughput_rps": round(ok / self.elapsed, 1) if self.elapsed > 0 else 0.0,
            "latency_ms": {f"p{q}": _ms(percentile(lat, q)) for q in (50, 95, 99)},
            "wait_ms": {f"p{q}": _ms(percentile(wait, q)) for q in (50, 99)},
            "connections_opened": self.connections_opened,
            "first_error": self.first_error,
            "interrupted": self.interrupted,
        }


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile; None when there is nothing to rank."""
    if not sorted_values:
        return None
    k = math.ceil(pct / 100 * len(sorted_values)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 4)


def one_line(exc: BaseException) -> str:
    """An exception as one line of at most 500 characters, its class named unless it is ours."""
    text = " ".join(str(exc).split())
    if not text:
        text = type(exc).__name__
    elif not isinstance(exc, PoolError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 500 else text[:497] + "..."


class _Tally:
    __slots__ = ("done", "end", "errors", "first_error", "latencies", "rng", "waits")

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.done = 0
        self.errors = 0
        self.latencies: array[float] = array("d")
        self.waits: array[float] = array("d")
        self.first_error: BaseException | None = None
        self.end: float | None = None


def _merge(result: RunResult, tallies: list[_Tally], start: float, now: float) -> None:
    ends = [t.end for t in tallies]
    # a worker still running (abandoned, or cut off by Ctrl-C) ran until now
    result.elapsed = (now if None in ends else max(e for e in ends if e is not None)) - start
    for t in tallies:
        result.requests += t.done
        result.errors += t.errors
        result.latencies.extend(t.latencies)
        result.waits.extend(t.waits)
        if result.first_error is None and t.first_error is not None:
            result.first_error = one_line(t.first_error)


def drive_threads(
    result: RunResult,
    borrow: Callable[[], AbstractContextManager[Any]],
    work: Callable[[Any, random.Random], None],
    limits: RunLimits,
    update: Update,
) -> None:
    """Run the request loop on ``limits.concurrency`` threads and fill ``result``. Ctrl-C stops
    the threads, keeps what they measured and raises :class:`Interrupted`."""
    stop = threading.Event()
    budget = itertools.count() if limits.requests is not None else None
    total = limits.requests or 0
    think = limits.think
    tallies = [_Tally(seed) for seed in range(limits.concurrency)]
    clock = time.perf_counter

    def loop(t: _Tally) -> None:
        rng, lat, waits = t.rng, t.latencies, t.waits
        while not stop.is_set():
            if budget is not None and next(budget) >= total:
                break
            t0 = clock()
            try:
                with borrow() as conn:
                    t1 = clock()
                    work(conn, rng)
                t2 = clock()
            except Exception as exc:
                t.errors += 1
                if t.first_error is None:
                    t.first_error = exc
                t.done += 1
                stop.wait(ERROR_BACKOFF)
                continue
            waits.append(t1 - t0)
            lat.append(t2 - t0)
            t.done += 1
            if think:
                stop.wait(think)
        t.end = clock()

    threads = [
        threading.Thread(target=loop, args=(t,), name=f"millpond-bench-{i}", daemon=True)
        for i, t in enumerate(tallies)
    ]
    start = clock()
    interrupted = False
    try:
        for th in threads:
            th.start()
        while True:
            elapsed = clock() - start
            done = sum(t.done for t in tallies)
            update(elapsed if limits.duration is not None else done, done, elapsed)
            if limits.duration is not None and elapsed >= limits.duration:
                break
            if not any(th.is_alive() for th in threads):
                break
            left = limits.duration - elapsed if limits.duration is not None else 0.05
            time.sleep(max(0.0, min(0.1, left)))
    except KeyboardInterrupt:
        interrupted = True
    stop.set()
    try:
        deadline = time.monotonic() + GRACE + think
        for th in threads:
            th.join(timeout=max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:  # a second Ctrl-C: abandon the requests in flight (daemons)
        interrupted = True
    _merge(result, tallies, start, clock())
    result.interrupted = interrupted
    if interrupted:
        raise Interrupted


async def drive_tasks(
    result: RunResult,
    borrow: Callable[[], AbstractAsyncContextManager[Any]],
    work: Callable[[Any, random.Random], Awaitable[None]],
    limits: RunLimits,
    update: Update,
) -> None:
    """The asyncio twin of :func:`drive_threads`: ``limits.concurrency`` tasks on this loop.

    Ctrl-C reaches it as the cancellation of the task that runs it (the command's SIGINT
    handler cancels that task): the workers are stopped, what they measured is kept, and
    :class:`Interrupted` is raised instead of the cancellation.
    """
    stop = asyncio.Event()
    remaining = [limits.requests if limits.requests is not None else -1]
    think = limits.think
    tallies = [_Tally(seed) for seed in range(limits.concurrency)]
    clock = time.perf_counter

    async def pause(seconds: float) -> None:
        # a think time or back-off that ends at once when the run stops
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def loop(t: _Tally) -> None:
        rng, lat, waits = t.rng, t.latencies, t.waits
        try:
            while not stop.is_set():
                if remaining[0] == 0:
                    break
                if remaining[0] > 0:
                    remaining[0] -= 1
                t0 = clock()
                try:
                    async with borrow() as conn:
                        t1 = clock()
                        await work(conn, rng)
                    t2 = clock()
                except Exception as exc:
                    t.errors += 1
                    if t.first_error is None:
                        t.first_error = exc
                    t.done += 1
                    await pause(ERROR_BACKOFF)
                    continue
                waits.append(t1 - t0)
                lat.append(t2 - t0)
                t.done += 1
                if think:
                    await pause(think)
        finally:
            t.end = clock()

    start = clock()
    workers = [asyncio.ensure_future(loop(t)) for t in tallies]
    interrupted = False
    try:
        while True:
            elapsed = clock() - start
            done = sum(t.done for t in tallies)
            update(elapsed if limits.duration is not None else done, done, elapsed)
            if limits.duration is not None and elapsed >= limits.duration:
                break
            if all(w.done() for w in workers):
                break
            left = limits.duration - elapsed if limits.duration is not None else 0.05
            await asyncio.wait(workers, timeout=max(0.0, min(0.1, left)))
    except asyncio.CancelledError:
        interrupted = True
        _uncancel()
    stop.set()
    try:
        _done, pending = await asyncio.wait(workers, timeout=GRACE + think)
    except asyncio.CancelledError:  # a second Ctrl-C: stop waiting for requests in flight
        interrupted = True
        _uncancel()
        pending = {w for w in workers if not w.done()}
    for w in pending:
        w.cancel()
    if pending:
        await asyncio.wait(pending, timeout=GRACE)
    for w in workers:
        if w.done() and not w.cancelled():
            w.exception()  # retrieved, so asyncio does not log it as never retrieved
    _merge(result, tallies, start, clock())
    result.interrupted = interrupted
    if interrupted:
        raise Interrupted


def _uncancel() -> None:
    """Forget a cancellation we handled, so the awaits that follow (closing pools with their
    own timeouts) behave as in a task that was never cancelled."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
