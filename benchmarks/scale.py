"""Scale: does the pool's cost per operation stay flat as the pool and its queue grow?

Two measurements, both against millpond's in-memory fake driver (``millpond.testing``), so
that a pool of 1000 needs no 1000 server connections and what is timed is the pool alone:

- **idle pool size**: a ``millpond.Pool`` (``FakeDriver()``) of 1, 10, 100 and 1000 open,
  idle connections; one thread does checkout + return (``getconn``/``putconn``, no query) in
  a loop, in microseconds per operation. Pools are measured in interleaved rounds (every
  size once per round, in a rotated order) and the median round is reported, like
  ``overhead.py``.
- **queued waiters**: a ``millpond.AsyncPool`` (``AsyncFakeDriver()``) of one connection
  and N + 1 tasks that each loop ``getconn`` -> ``putconn``: one task holds the connection,
  N are queued in ``getconn``. Each return hands the connection to the head of the queue,
  and the returning task queues again at the tail, so N waiters stay queued the whole time.
  Timed: one return + hand-off cycle (return, wake the head waiter, it resumes, the
  returner re-queues), in microseconds per cycle, for N = 1, 100 and 10,000 (threads
  could not go to 10,000; tasks can). Each round runs every N once in a fresh event loop,
  in a rotated order; the median round is reported.

The goal: flat, the largest median within 1.5x of the smallest, for each of the two series.

    python benchmarks/scale.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import _common as c
import millpond
from millpond.testing import AsyncFakeDriver, FakeDriver

SIZES = (1, 10, 100, 1000)
WAITERS = (1, 100, 10_000)
GOAL_FLAT = 1.5  # largest / smallest
QUEUE_TIMEOUT = 3600.0  # seconds; a real (not infinite) budget, so every wait arms a timer


# -- idle pool size (sync Pool) ------------------------------------------------------------


def _sized_pool(size: int) -> tuple[Callable[[int], None], Callable[[], None]]:
    # default options except the size (pre_ping on, ping_window 0.5 s)
    pool = millpond.Pool(FakeDriver(), min_size=size, max_size=size, open=False)
    pool.open(wait=True, timeout=60)
    getconn, putconn = pool.getconn, pool.putconn

    def loop(n: int) -> None:
        for _ in range(n):
            putconn(getconn())

    return loop, pool.close


def run_sizes(rounds: int, seconds: float) -> list[dict[str, Any]]:
    active = []
    for size in SIZES:
        loop, cleanup = _sized_pool(size)
        active.append({"size": size, "loop": loop, "cleanup": cleanup,
                       "n": c.calibrate(loop, seconds), "times": []})
    try:
        for r in range(rounds):
            order = active[r % len(active):] + active[: r % len(active)]
            for k in order:
                k["times"].append(c.time_per_op(k["loop"], k["n"]))
    finally:
        for k in active:
            k["cleanup"]()
    return [{"n": k["size"], "us": c.median(k["times"]) * 1e6,
             "min_us": min(k["times"]) * 1e6, "max_us": max(k["times"]) * 1e6}
            for k in active]


# -- queued waiters (AsyncPool) ------------------------------------------------------------


async def _cycle_time(waiters: int, warmup: float, seconds: float) -> tuple[float, int]:
    """Seconds per return + hand-off cycle with ``waiters`` tasks queued in getconn."""
    pool = millpond.AsyncPool(AsyncFakeDriver(), min_size=1, max_size=1,
                              timeout=QUEUE_TIMEOUT)
    await pool.open(wait=True, timeout=30)
    count = 0
    stop = False
    getconn, putconn = pool.getconn, pool.putconn

    async def worker() -> None:
        nonlocal count
        while not stop:
            conn = await getconn()
            count += 1
            await putconn(conn)

    # hold the connection while the tasks start, so that every one of them queues (a task
    # that found it idle would take and return it forever without yielding to the loop)
    held = await getconn()
    tasks = [asyncio.create_task(worker()) for _ in range(waiters + 1)]
    try:
        while len(pool._core.waiters) < waiters + 1:  # private: a benchmark may peek
            await asyncio.sleep(0.001)
        await putconn(held)
        await asyncio.sleep(warmup)  # the queue is steady
        gc.collect()
        gc.disable()
        try:
            c0, t0 = count, time.perf_counter()
            await asyncio.sleep(seconds)
            c1, t1 = count, time.perf_counter()
        finally:
            gc.enable()
        queued = len(pool._core.waiters)
    finally:
        stop = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()
    return (t1 - t0) / max(1, c1 - c0), queued


def run_waiters(rounds: int, seconds: float) -> list[dict[str, Any]]:
    times: dict[int, list[float]] = {n: [] for n in WAITERS}
    queued: dict[int, list[int]] = {n: [] for n in WAITERS}
    for r in range(rounds):
        order = WAITERS[r % len(WAITERS):] + WAITERS[: r % len(WAITERS)]
        for n in order:
            # warm-up long enough for all 10,000 tasks to start and queue
            per, q = asyncio.run(_cycle_time(n, 0.05 + n * 4e-6, seconds))
            times[n].append(per)
            queued[n].append(q)
    return [{"n": n, "us": c.median(times[n]) * 1e6, "min_us": min(times[n]) * 1e6,
             "max_us": max(times[n]) * 1e6, "queued": min(queued[n])} for n in WAITERS]


def _flat(rows: list[dict[str, Any]]) -> dict[str, Any]:
    lo = min(rows, key=lambda r: r["us"])
    hi = max(rows, key=lambda r: r["us"])
    ratio = hi["us"] / lo["us"]
    return {"ratio": ratio, "ok": ratio <= GOAL_FLAT, "lo": lo, "hi": hi}


def run(rounds: int = 7, seconds: float = 0.05, async_seconds: float = 0.15) -> dict[str, Any]:
    sizes = run_sizes(rounds, seconds)
    waiters = run_waiters(max(3, rounds // 2 + 1), async_seconds)
    return {"sizes": sizes, "waiters": waiters, "sizes_flat": _flat(sizes),
            "waiters_flat": _flat(waiters), "rounds": rounds,
            "async_rounds": max(3, rounds // 2 + 1), "async_seconds": async_seconds}


def goals(res: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for key, label, unit in (("sizes_flat", "idle pool size 1-1000 (Pool)", "us/op"),
                             ("waiters_flat", "1-10,000 queued waiters (AsyncPool)",
                              "us/cycle")):
        f = res[key]
        detail = (f"largest/smallest {f['ratio']:.2f}x ({f['hi']['us']:.2f} {unit} at "
                  f"{f['hi']['n']:,} vs {f['lo']['us']:.2f} at {f['lo']['n']:,}), "
                  f"goal <= {GOAL_FLAT}x")
        if not f["ok"]:
            detail += f": {f['ratio'] / GOAL_FLAT:.2f}x over"
        verdict = f"**met** ({detail})" if f["ok"] else f"**not met** ({detail})"
        out.append((f"scale: flat across {label}", verdict))
    return out


def render(res: dict[str, Any]) -> str:
    base = res["sizes"][0]["us"]
    t1 = c.table(
        ["idle connections", "us/op (median)", "range", "vs size 1"],
        [[f"{r['n']:,}", f"{r['us']:.2f}", f"{r['min_us']:.2f}-{r['max_us']:.2f}",
          f"{r['us'] / base:.2f}x"] for r in res["sizes"]])
    base = res["waiters"][0]["us"]
    t2 = c.table(
        ["waiters queued", "us/cycle (median)", "range", "vs 1 waiter", "queue length seen"],
        [[f"{r['n']:,}", f"{r['us']:.2f}", f"{r['min_us']:.2f}-{r['max_us']:.2f}",
          f"{r['us'] / base:.2f}x", f"{r['queued']:,}"] for r in res["waiters"]])
    return (f"{t1}\n\nflat: largest/smallest {res['sizes_flat']['ratio']:.2f}x\n\n"
            f"{t2}\n\nflat: largest/smallest {res['waiters_flat']['ratio']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    t0 = time.monotonic()
    res = run(a.rounds)
    print(render(res))
    for goal, verdict in goals(res):
        print(f"{goal}: {verdict}")
    print(f"took {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
