"""asyncio pools: checkout + return with no query, and 200 tasks sharing 10 connections.

Every contender runs in the same event loop and the same run, interleaved with the others:

1. **Overhead** (one task, real open connections, no query): ``async with`` and the explicit
   awaitable pair, in microseconds per checkout + return. Median of interleaved rounds, each
   with its ratio to the floor of the same shape.
2. **Contention**: 200 tasks on a pool of 10, each looping: borrow (timed: that is the
   "wait"), ``SELECT 1`` on PostgreSQL, return. Throughput, wait percentiles, and fairness:
   the slowest task's operation count over the mean (1.0 = equal shares). Each pool runs in
   slices interleaved with the others' and is opened afresh for each slice, so that only one
   pool's connections exist at a time on a server other suites share.

The floor is written here: a lock-free FIFO ``deque`` of idle connections and a ``deque`` of
futures for waiters, a returned connection going straight to the oldest live waiter. It is
what an asyncio pool cannot do without while still being able to wait (and be fair); no
health check, no reset, no bookkeeping.

    python benchmarks/async_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import _common as c
import millpond

#: connections per pool in the overhead part (one task uses one at a time; more would only
#: cost the shared server slots)
OVERHEAD_SIZE = 2
TASKS = 200
SIZE = 10

GOAL_OVERHEAD = 2.0  # x the floor, uncontended `async with`
GOAL_THROUGHPUT = 1.5  # x the best peer, 200 tasks on 10 connections
GOAL_FAIRNESS = 0.9

ASYNCPG_URL = c.PG_URL.replace("postgresql://", "postgresql+asyncpg://", 1)
PSYCOPG_URL = c.PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)
AIOMYSQL_URL = c.MY_URL.replace("mysql://", "mysql+aiomysql://", 1)

Loop = Callable[[int], Awaitable[None]]
Cleanup = Callable[[], Awaitable[Any]]
Op = Callable[[], Awaitable[float]]  # one borrow + work + return; gives back the wait


# -- the floor ------------------------------------------------------------------------------------


class FloorPool:
    """Idle connections in a FIFO deque, waiters as futures in another. Code between two
    awaits is atomic on the loop, so there is no lock."""

    __slots__ = ("_idle", "_loop", "_waiters")

    def __init__(self, conns: list[Any]) -> None:
        self._idle: deque[Any] = deque(conns)
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._loop = asyncio.get_running_loop()

    async def getconn(self) -> Any:
        if self._idle:
            return self._idle.popleft()
        fut = self._loop.create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            # handed a connection just as we were cancelled: pass it on rather than lose it
            if fut.done() and not fut.cancelled():
                self._put(fut.result())
            raise

    async def putconn(self, conn: Any) -> None:
        # a coroutine only to have the same call shape as the pools' (await pool.putconn())
        self._put(conn)

    def _put(self, conn: Any) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():  # a waiter that gave up has a cancelled future: skip it
                fut.set_result(conn)
                return
        self._idle.append(conn)

    def connection(self) -> _FloorBorrow:
        return _FloorBorrow(self)


class _FloorBorrow:
    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: FloorPool) -> None:
        self._pool = pool
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        self._conn = await self._pool.getconn()
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        self._pool._put(self._conn)


# -- timing ---------------------------------------------------------------------------------------


async def _calibrate(loop: Loop, target_s: float, start: int = 64) -> int:
    """Iterations of ``loop`` that take about ``target_s``; the first call warms up."""
    await loop(start)
    n = start
    while True:
        t0 = time.perf_counter()
        await loop(n)
        dt = time.perf_counter() - t0
        if dt >= target_s / 4 or n >= 10_000_000:
            return max(1, int(n * target_s / max(dt, 1e-9)))
        n *= 4


async def _time_per_op(loop: Loop, n: int) -> float:
    # the collector paused, so one contender's garbage is not collected on another's clock
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        await loop(n)
        return (time.perf_counter() - t0) / n
    finally:
        gc.enable()


# -- 1. overhead -----------------------------------------------------------------------------------


async def _asyncpg_conns(n: int) -> list[Any]:
    import asyncpg

    return [await asyncpg.connect(c.PG_URL) for _ in range(n)]


async def _close_all(conns: list[Any]) -> None:
    for conn in conns:
        await conn.close()


def _with_loop(borrow: Callable[[], Any]) -> Loop:
    async def loop(n: int) -> None:
        for _ in range(n):
            async with borrow():
                pass

    return loop


def _pair_loop(get: Callable[[], Awaitable[Any]], put: Callable[[Any], Awaitable[Any]]) -> Loop:
    async def loop(n: int) -> None:
        for _ in range(n):
            await put(await get())

    return loop


async def _floor(shape: str) -> tuple[Loop, Cleanup]:
    conns = await _asyncpg_conns(OVERHEAD_SIZE)
    pool = FloorPool(conns)
    loop = _with_loop(pool.connection) if shape == "with" else _pair_loop(pool.getconn,
                                                                          pool.putconn)
    return loop, lambda: _close_all(conns)


async def _millpond_pool(url: str, size: int, connect_kwargs: dict[str, Any] | None = None
                         ) -> millpond.AsyncPool:
    # default options (pre_ping on, ping_window 0.5 s, reset="rollback"); only the size set
    pool = millpond.AsyncPool(url, min_size=size, max_size=size, timeout=60.0,
                              connect_kwargs=connect_kwargs)
    await pool.open(wait=True, timeout=30)
    return pool


def _millpond(url: str, shape: str, connect_kwargs: dict[str, Any] | None = None
              ) -> Callable[[], Awaitable[tuple[Loop, Cleanup]]]:
    async def setup() -> tuple[Loop, Cleanup]:
        pool = await _millpond_pool(url, OVERHEAD_SIZE, connect_kwargs)
        loop = _with_loop(pool.connection) if shape == "with" else _pair_loop(pool.getconn,
                                                                              pool.putconn)
        return loop, pool.close

    return setup


async def _psycopg_pool(shape: str) -> tuple[Loop, Cleanup]:
    from psycopg_pool import AsyncConnectionPool

    pool: Any = AsyncConnectionPool(c.PG_URL, min_size=OVERHEAD_SIZE, max_size=OVERHEAD_SIZE,
                                    open=False)
    await pool.open(wait=True, timeout=30)
    loop = _with_loop(pool.connection) if shape == "with" else _pair_loop(pool.getconn,
                                                                          pool.putconn)
    return loop, pool.close


async def _asyncpg_pool(shape: str) -> tuple[Loop, Cleanup]:
    import asyncpg

    pool: Any = await asyncpg.create_pool(c.PG_URL, min_size=OVERHEAD_SIZE,
                                          max_size=OVERHEAD_SIZE)
    loop = _with_loop(pool.acquire) if shape == "with" else _pair_loop(pool.acquire,
                                                                       pool.release)
    return loop, pool.close


async def _aiomysql_pool(shape: str) -> tuple[Loop, Cleanup]:
    import aiomysql

    pool: Any = await aiomysql.create_pool(
        host=c.MY_HOST, port=c.MY_PORT, user=c.MY_USER, password="", db=c.MY_DB,
        minsize=OVERHEAD_SIZE, maxsize=OVERHEAD_SIZE, autocommit=True,
    )

    async def close() -> None:
        pool.close()
        await pool.wait_closed()

    loop = _with_loop(pool.acquire) if shape == "with" else _pair_loop(pool.acquire,
                                                                       pool.release)
    return loop, close


async def _sqlalchemy_engine(size: int) -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(ASYNCPG_URL, pool_size=size, max_overflow=0, pool_timeout=60)
    held = [await engine.connect() for _ in range(size)]  # open every connection up front
    for conn in held:
        await conn.close()
    return engine


async def _sqlalchemy_connect() -> tuple[Loop, Cleanup]:
    engine = await _sqlalchemy_engine(OVERHEAD_SIZE)
    return _with_loop(engine.connect), engine.dispose


async def _sqlalchemy_raw() -> tuple[Loop, Cleanup]:
    from sqlalchemy.util import greenlet_spawn

    engine = await _sqlalchemy_engine(OVERHEAD_SIZE)
    pool = engine.sync_engine.pool

    def body(n: int) -> None:
        for _ in range(n):
            pool.connect().close()

    async def loop(n: int) -> None:
        # the pool's checkin may await (reset on return), so it runs in a greenlet, as under
        # the engine; one greenlet per batch keeps that cost out of the per-op figure
        await greenlet_spawn(body, n)

    return loop, engine.dispose


@dataclass
class Contender:
    name: str
    driver: str
    setup: Callable[[], Awaitable[tuple[Loop, Cleanup]]]
    group: str  # "floor", "millpond" (judged), "peer" or "info"
    shape: str = "with"  # "with" or "pair": the floor it is compared with
    needs: tuple[str, ...] = ("asyncpg",)
    server: str = "postgresql"
    note: str = ""
    times: list[float] = field(default_factory=list)


def overhead_contenders() -> list[Contender]:
    return [
        Contender("floor: FIFO deque + futures, `async with`", "asyncpg",
                  lambda: _floor("with"), "floor"),
        Contender("floor: FIFO deque + futures, get/put", "asyncpg",
                  lambda: _floor("pair"), "floor", "pair"),
        Contender("millpond `async with pool.connection()`", "asyncpg",
                  _millpond(ASYNCPG_URL, "with"), "millpond"),
        Contender("millpond `await getconn()/putconn()`", "asyncpg",
                  _millpond(ASYNCPG_URL, "pair"), "millpond", "pair"),
        Contender("millpond `async with pool.connection()`", "psycopg",
                  _millpond(PSYCOPG_URL, "with"), "info", needs=("psycopg",)),
        Contender("millpond `async with pool.connection()`", "aiomysql",
                  _millpond(AIOMYSQL_URL, "with", {"autocommit": True}), "info",
                  needs=("aiomysql",), server="mysql", note="autocommit=True, like the "
                  "aiomysql pool below (outside it every return costs a ROLLBACK)"),
        Contender("psycopg_pool AsyncConnectionPool `async with`", "psycopg",
                  lambda: _psycopg_pool("with"), "peer", needs=("psycopg_pool",)),
        Contender("psycopg_pool AsyncConnectionPool getconn/putconn", "psycopg",
                  lambda: _psycopg_pool("pair"), "peer", "pair", needs=("psycopg_pool",)),
        Contender("asyncpg Pool `async with pool.acquire()`", "asyncpg",
                  lambda: _asyncpg_pool("with"), "peer",
                  note="resets the session on every release (a round trip)"),
        Contender("asyncpg Pool acquire/release", "asyncpg",
                  lambda: _asyncpg_pool("pair"), "peer", "pair"),
        Contender("aiomysql Pool `async with pool.acquire()`", "aiomysql",
                  lambda: _aiomysql_pool("with"), "peer", needs=("aiomysql",),
                  server="mysql", note="autocommit=True"),
        Contender("SQLAlchemy async engine `async with engine.connect()`", "asyncpg",
                  _sqlalchemy_connect, "peer", needs=("asyncpg", "sqlalchemy", "greenlet")),
        Contender("SQLAlchemy AsyncAdaptedQueuePool connect/close (raw)", "asyncpg",
                  _sqlalchemy_raw, "peer", "pair", needs=("asyncpg", "sqlalchemy", "greenlet"),
                  note="in one greenlet per batch"),
    ]


async def _server_down(server: str) -> str | None:
    """None if the server takes a connection, else why not (for a "skipped" note)."""
    connect = c.pg_connect if server == "postgresql" else c.my_connect
    return await asyncio.to_thread(c.server_up, connect)


async def run_overhead(rounds: int, seconds: float) -> dict[str, Any]:
    skipped: list[str] = []
    active: list[tuple[Contender, Loop, Cleanup, int]] = []
    down = {s: await _server_down(s) for s in ("postgresql", "mysql")}
    try:
        for k in overhead_contenders():
            missing = [m for m in k.needs if not c.have(m)]
            if missing:
                skipped.append(f"{k.name} ({k.driver}): `{missing[0]}` not installed")
                continue
            if down[k.server]:
                skipped.append(f"{k.name} ({k.driver}): {k.server} unreachable: {down[k.server]}")
                continue
            loop, cleanup = await k.setup()
            active.append((k, loop, cleanup, await _calibrate(loop, seconds)))
        if not any(k.group == "floor" for k, *_ in active):
            return {"skipped": skipped or ["the floor could not run"], "rows": []}
        for r in range(rounds):
            # rotated so that no contender always runs first, or right after a GC-heavy one
            for k, loop, _, n in active[r % len(active):] + active[: r % len(active)]:
                k.times.append(await _time_per_op(loop, n))
    finally:
        for _k, _loop, cleanup, _n in active:
            await cleanup()
    floors = {k.shape: c.median(k.times) for k, *_ in active if k.group == "floor"}
    rows = []
    for k, *_ in active:
        med = c.median(k.times)
        rows.append({
            "name": k.name, "driver": k.driver, "group": k.group, "shape": k.shape,
            "note": k.note, "us": med * 1e6, "min_us": min(k.times) * 1e6,
            "max_us": max(k.times) * 1e6, "ratio": med / floors[k.shape],
        })
    return {"rows": rows, "skipped": skipped, "rounds": rounds, "size": OVERHEAD_SIZE}


# -- 2. contention ---------------------------------------------------------------------------------


def _clock() -> float:
    return time.perf_counter()


async def _c_floor() -> tuple[Op, Cleanup]:
    conns = await _asyncpg_conns(SIZE)
    pool = FloorPool(conns)

    async def op() -> float:
        t0 = _clock()
        async with pool.connection() as conn:
            t1 = _clock()
            await conn.fetchval("SELECT 1")
        return t1 - t0

    return op, lambda: _close_all(conns)


def _c_millpond(url: str, driver: str) -> Callable[[], Awaitable[tuple[Op, Cleanup]]]:
    async def setup() -> tuple[Op, Cleanup]:
        kwargs = {"autocommit": True} if driver == "psycopg" else None
        pool = await _millpond_pool(url, SIZE, kwargs)
        connection = pool.connection

        async def op() -> float:
            t0 = _clock()
            async with connection() as conn:
                t1 = _clock()
                if driver == "asyncpg":
                    await conn.fetchval("SELECT 1")
                else:
                    await (await conn.execute("SELECT 1")).fetchone()
            return t1 - t0

        return op, pool.close

    return setup


async def _c_asyncpg_pool() -> tuple[Op, Cleanup]:
    import asyncpg

    pool: Any = await asyncpg.create_pool(c.PG_URL, min_size=SIZE, max_size=SIZE)

    async def op() -> float:
        t0 = _clock()
        async with pool.acquire() as conn:
            t1 = _clock()
            await conn.fetchval("SELECT 1")
        return t1 - t0

    return op, pool.close


async def _c_psycopg_pool() -> tuple[Op, Cleanup]:
    from psycopg_pool import AsyncConnectionPool

    # autocommit, as for millpond's psycopg row: a SELECT leaves nothing to roll back
    pool: Any = AsyncConnectionPool(c.PG_URL, min_size=SIZE, max_size=SIZE, open=False,
                                    kwargs={"autocommit": True}, timeout=60)
    await pool.open(wait=True, timeout=30)

    async def op() -> float:
        t0 = _clock()
        async with pool.connection() as conn:
            t1 = _clock()
            await (await conn.execute("SELECT 1")).fetchone()
        return t1 - t0

    return op, pool.close


async def _c_sqlalchemy() -> tuple[Op, Cleanup]:
    engine = await _sqlalchemy_engine(SIZE)

    async def op() -> float:
        t0 = _clock()
        async with engine.connect() as sa_conn:
            t1 = _clock()
            # the query goes to asyncpg directly, as for the other asyncpg contenders: this
            # measures SQLAlchemy's pool and connection, not its statement execution
            raw = await sa_conn.get_raw_connection()
            await raw.driver_connection.fetchval("SELECT 1")
        return t1 - t0

    return op, engine.dispose


@dataclass
class Crowd:
    name: str
    driver: str
    setup: Callable[[], Awaitable[tuple[Op, Cleanup]]]
    group: str
    needs: tuple[str, ...] = ("asyncpg",)
    note: str = ""
    slices: list[dict[str, float]] = field(default_factory=list)


def contention_contenders() -> list[Crowd]:
    return [
        Crowd("floor: FIFO deque + futures", "asyncpg", _c_floor, "floor"),
        Crowd("millpond AsyncPool", "asyncpg", _c_millpond(ASYNCPG_URL, "asyncpg"), "millpond"),
        Crowd("asyncpg Pool", "asyncpg", _c_asyncpg_pool, "peer"),
        Crowd("psycopg_pool AsyncConnectionPool", "psycopg", _c_psycopg_pool, "peer",
              needs=("psycopg_pool",), note="autocommit"),
        Crowd("SQLAlchemy async engine", "asyncpg", _c_sqlalchemy, "peer",
              needs=("asyncpg", "sqlalchemy", "greenlet"),
              note="query on the driver connection"),
        Crowd("millpond AsyncPool", "psycopg", _c_millpond(PSYCOPG_URL, "psycopg"), "info",
              needs=("psycopg",), note="autocommit"),
    ]


async def _slice(setup: Callable[[], Awaitable[tuple[Op, Cleanup]]], seconds: float,
                 warmup: float) -> dict[str, float]:
    """One pool, opened afresh: TASKS tasks loop over ``op``; only the ``seconds`` after a
    warm-up count."""
    op, cleanup = await setup()
    counts = [0] * TASKS
    waits: list[float] = []
    measuring = False
    stop = False

    async def worker(i: int) -> None:
        while not stop:
            wait = await op()
            if measuring:
                counts[i] += 1
                waits.append(wait)

    try:
        tasks = [asyncio.ensure_future(worker(i)) for i in range(TASKS)]
        await asyncio.sleep(warmup)
        measuring = True
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        measuring = False
        elapsed = time.perf_counter() - t0
        stop = True
        done, pending = await asyncio.wait(tasks, timeout=60)
        for t in pending:
            t.cancel()
        for t in done:
            t.result()  # a failed worker fails the benchmark instead of skewing it
    finally:
        await cleanup()
    waits.sort()
    mean = sum(counts) / TASKS
    return {
        "ops_per_s": sum(counts) / elapsed,
        "wait_p50_ms": c.percentile(waits, 50) * 1e3,
        "wait_p99_ms": c.percentile(waits, 99) * 1e3,
        "wait_max_ms": (waits[-1] if waits else float("nan")) * 1e3,
        "fairness": min(counts) / mean if mean else 0.0,
        "min_ops": min(counts),
        "max_ops": max(counts),
    }


async def run_contention(rounds: int, seconds: float, warmup: float) -> dict[str, Any]:
    down = await _server_down("postgresql")
    if down:
        return {"skipped": [f"PostgreSQL at {c.PG_URL} unreachable: {down}"], "rows": []}
    skipped: list[str] = []
    active: list[Crowd] = []
    for k in contention_contenders():
        missing = [m for m in k.needs if not c.have(m)]
        if missing:
            skipped.append(f"{k.name} ({k.driver}): `{missing[0]}` not installed")
        else:
            active.append(k)
    for r in range(rounds):
        for k in active[r % len(active):] + active[: r % len(active)]:
            k.slices.append(await _slice(k.setup, seconds, warmup))
    peers = [k for k in active if k.group == "peer"]
    best_peer = max((c.median([s["ops_per_s"] for s in k.slices]) for k in peers), default=0.0)
    rows = []
    for k in active:
        by_fairness = sorted(k.slices, key=lambda s: s["fairness"])
        mid = by_fairness[len(by_fairness) // 2]
        ops = c.median([s["ops_per_s"] for s in k.slices])
        rows.append({
            "name": k.name, "driver": k.driver, "group": k.group, "note": k.note,
            "ops_per_s": ops,
            "vs_best_peer": ops / best_peer if best_peer else float("nan"),
            "wait_p50_ms": c.median([s["wait_p50_ms"] for s in k.slices]),
            "wait_p99_ms": c.median([s["wait_p99_ms"] for s in k.slices]),
            "wait_max_ms": max(s["wait_max_ms"] for s in k.slices),
            "fairness": mid["fairness"],
            "fairness_worst": by_fairness[0]["fairness"],
            "min_ops": int(mid["min_ops"]), "max_ops": int(mid["max_ops"]),
        })
    return {"rows": rows, "skipped": skipped, "rounds": rounds, "seconds": seconds,
            "tasks": TASKS, "size": SIZE}


# -- the whole section -------------------------------------------------------------------------------


def run(quick: bool = False) -> dict[str, Any]:
    """Both parts in one event loop; about 45 s (``quick``: about 12 s)."""

    async def both() -> dict[str, Any]:
        ov = await run_overhead(rounds=5 if quick else 15, seconds=0.01 if quick else 0.03)
        ct = await run_contention(rounds=3 if quick else 5, seconds=0.25 if quick else 0.8,
                                  warmup=0.1 if quick else 0.2)
        return {"overhead": ov, "contention": ct}

    return asyncio.run(both())


def _verdict(ok: bool, detail: str) -> str:
    return f"**met** ({detail})" if ok else f"**not met** ({detail})"


def goals(res: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    ov = res["overhead"]
    for r in (r for r in ov["rows"] if r["group"] == "millpond"):
        floor = next(f for f in ov["rows"] if f["group"] == "floor" and f["shape"] == r["shape"])
        ok = r["ratio"] <= GOAL_OVERHEAD
        detail = (f"{r['ratio']:.2f}x the floor ({r['us']:.2f} vs {floor['us']:.2f} us/op), "
                  f"goal {GOAL_OVERHEAD:g}x")
        if not ok:
            detail += f": {r['ratio'] / GOAL_OVERHEAD:.2f}x too slow"
        out.append((f"asyncio overhead: {r['name']} ({r['driver']}) uncontended within "
                    f"{GOAL_OVERHEAD:g}x of the lock-free deque", _verdict(ok, detail)))
    if not ov["rows"]:
        out.append(("asyncio overhead", "not measured: " + "; ".join(ov["skipped"])))
    ct = res["contention"]
    mp = next((r for r in ct["rows"] if r["group"] == "millpond"), None)
    peers = [r for r in ct["rows"] if r["group"] == "peer"]
    if mp is None or not peers:
        out.append(("asyncio contention", "not measured: " + "; ".join(ct["skipped"])))
        return out
    best = max(peers, key=lambda r: r["ops_per_s"])
    ratio = mp["ops_per_s"] / best["ops_per_s"]
    ok = ratio >= GOAL_THROUGHPUT
    detail = (f"{ratio:.2f}x {best['name']} ({best['driver']}), the best peer: "
              f"{mp['ops_per_s']:,.0f} vs {best['ops_per_s']:,.0f} ops/s, goal "
              f">= {GOAL_THROUGHPUT:g}x")
    if not ok:
        floor = next((r for r in ct["rows"] if r["group"] == "floor"), None)
        detail += f": {GOAL_THROUGHPUT / ratio:.2f}x short"
        if floor is not None:
            detail += (f"; the floor itself reached {floor['ops_per_s'] / best['ops_per_s']:.2f}x")
    out.append((f"asyncio contention ({TASKS} tasks, pool of {SIZE}, asyncpg SELECT 1): "
                f"throughput >= {GOAL_THROUGHPUT:g}x the best peer's", _verdict(ok, detail)))
    ok = mp["fairness"] >= GOAL_FAIRNESS
    detail = (f"{mp['fairness']:.2f} in the median slice (worst {mp['fairness_worst']:.2f}), "
              f"goal >= {GOAL_FAIRNESS}")
    if not ok:
        detail += f": {GOAL_FAIRNESS - mp['fairness']:.2f} short"
    out.append((f"asyncio contention ({TASKS} tasks, pool of {SIZE}): fairness >= "
                f"{GOAL_FAIRNESS}", _verdict(ok, detail)))
    return out


def describe(res: dict[str, Any]) -> list[str]:
    """The section's Markdown lines (for ``run_all.py``'s document)."""
    ov, ct = res["overhead"], res["contention"]
    return [
        "### Overhead: checkout + return, one task, no query",
        "",
        f"One task, pools of {ov.get('size', OVERHEAD_SIZE)} real connections (PostgreSQL "
        "unless the driver is aiomysql), no query. millpond with default options (pre_ping "
        "on, ping_window 0.5 s); peers with theirs. Median of "
        f"{ov.get('rounds', '?')} interleaved rounds; \"range\" is the fastest and slowest "
        "round; \"vs floor\" compares with the floor of the same shape (`async with`, or the "
        "awaited get/put pair). The floor is a lock-free FIFO `deque` of connections with "
        "futures for waiters (`benchmarks/async_bench.py`).",
        "",
        render_overhead(ov),
        "",
        f"### Contention: {ct.get('tasks', TASKS)} tasks, a pool of {ct.get('size', SIZE)}, "
        "`SELECT 1`",
        "",
        "Each task loops: borrow (timed: the wait), `SELECT 1` on PostgreSQL, return. The "
        "asyncpg contenders run `conn.fetchval(\"SELECT 1\")` (a cached prepared statement); "
        "the psycopg ones `execute` + `fetchone` in autocommit. Each pool is opened afresh "
        f"for each of {ct.get('rounds', '?')} slices of {ct.get('seconds', 0):g} s "
        "(after a short warm-up), interleaved with the other pools' slices; throughput and "
        "wait percentiles are the median slice's, \"wait max\" the worst of all; fairness is "
        "the slowest task's operation count over the mean, median slice and worst slice. "
        "\"vs best peer\" divides by the fastest of asyncpg's, psycopg_pool's and "
        "SQLAlchemy's pools.",
        "",
        render_contention(ct),
        "",
    ]


def render_overhead(res: dict[str, Any]) -> str:
    if not res["rows"]:
        return "skipped: " + "; ".join(res["skipped"])
    rows = [[r["name"], r["driver"], f"{r['us']:.2f}", f"{r['min_us']:.2f}-{r['max_us']:.2f}",
             f"{r['ratio']:.2f}x", r["note"]] for r in res["rows"]]
    out = c.table(["pool", "driver", "us/op (median)", "range", "vs floor", "note"], rows)
    for s in res["skipped"]:
        out += f"\n\nskipped: {s}"
    return out


def render_contention(res: dict[str, Any]) -> str:
    if not res["rows"]:
        return "skipped: " + "; ".join(res["skipped"])
    rows = [[r["name"], r["driver"], f"{r['ops_per_s']:,.0f}", f"{r['vs_best_peer']:.2f}x",
             f"{r['wait_p50_ms']:.2f}", f"{r['wait_p99_ms']:.2f}", f"{r['wait_max_ms']:.1f}",
             f"{r['fairness']:.2f}", f"{r['fairness_worst']:.2f}",
             f"{r['min_ops']:,}-{r['max_ops']:,}", r["note"]] for r in res["rows"]]
    out = c.table(["pool", "driver", "ops/s", "vs best peer", "wait p50 (ms)",
                   "wait p99 (ms)", "wait max (ms)", "fairness (median slice)", "worst slice",
                   "ops/task, median slice", "note"], rows)
    for s in res["skipped"]:
        out += f"\n\nskipped: {s}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    a = ap.parse_args()
    t0 = time.monotonic()
    res = run(a.quick)
    print("\n".join(describe(res)))
    print(c.table(["goal", "result"], goals(res)))
    print(f"\n{time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
