"""The outage scenarios of issue 3, against real servers: what a pool does when its server
kills sessions, restarts, is down at start-up, stops answering, runs out of slots, or when
the process forks.

Every scenario checks the same three promises besides its own:

* nothing leaks: at the end no connection is lent and ``size`` is within bounds;
* the server never holds more than ``max_size + max_overflow`` sessions for the pool
  (a monitor thread samples the server's own view, see scenario_support);
* no caller waits past its deadline (each call is timed; ``MARGIN`` of slack).

PostgreSQL scenarios run on the disposable cluster (tests/faults/pgserver.py), which they may
stop and kill; MariaDB ones on the shared server, whose sessions are only ever the test's own.
The figures measured go to bench-out/faults.json (see scenario_support.figures_path) for
docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

import millpond

from .pgserver import DisposablePostgres
from .proxy import FaultProxy
from .scenario_support import (
    MARGIN,
    Call,
    CallLog,
    Figures,
    FirstSuccess,
    MysqlSessions,
    PeakMonitor,
    PgSessions,
    Sessions,
    figures_path,
    mysql_params,
    scalar,
    timed,
    unique_app,
    wait_until,
)


@pytest.fixture(scope="module")
def figures() -> Iterator[Figures]:
    recorded = Figures()
    yield recorded
    recorded.write(figures_path())


def assert_whole(stats: millpond.PoolStats) -> None:
    """Nothing lent, nobody waiting, size within bounds: the pool is whole."""
    cap = stats.max_size + stats.max_overflow
    assert stats.in_use == 0, stats
    assert stats.waiting == 0, stats
    assert 0 <= stats.size <= cap, stats


def settled(
    pool: millpond.Pool | millpond.AsyncPool, sessions: Sessions, monitor: PeakMonitor
) -> millpond.PoolStats:
    """Once no connect is in flight, the server holds exactly the pool's connections (a
    session the pool has just closed may take a moment to leave the server's list)."""
    assert wait_until(lambda: pool.stats().opening == 0, 5.0) is not None, pool.stats()
    stats = pool.stats()
    assert monitor.observe(sessions.wait_for(stats.size)) == stats.size, stats
    return stats


def pg_kwargs(app: str, connect_timeout: int = 2) -> dict[str, Any]:
    return {"application_name": app, "connect_timeout": connect_timeout}


def asyncpg_url(server: DisposablePostgres, port: int | None = None) -> str:
    return server.url_at(port or server.port).replace("postgresql://", "postgresql+asyncpg://")


def asyncpg_kwargs(app: str, timeout: float = 2.0) -> dict[str, Any]:
    return {"server_settings": {"application_name": app}, "timeout": timeout}


# == (a) every idle backend killed ===========================================================


@dataclass
class KillTarget:
    """A server whose sessions a test may kill, with the pool's view of it."""

    driver: str
    url: str
    connect_kwargs: dict[str, Any]
    sessions: Sessions
    session_id_sql: str
    kill: Callable[[list[int]], None]


@pytest.fixture(
    params=[
        pytest.param("psycopg", marks=pytest.mark.postgres),
        pytest.param("psycopg2", marks=pytest.mark.postgres),
        pytest.param("pymysql", marks=pytest.mark.mysql),
    ]
)
def kill_target(request: pytest.FixtureRequest) -> Iterator[KillTarget]:
    driver = request.param
    if driver == "pymysql":
        url = request.getfixturevalue("mysql_url")
        counter = MysqlSessions(url)

        def kill_mysql(ids: list[int]) -> None:
            admin = counter.admin()
            try:
                with admin.cursor() as cur:
                    for i in ids:
                        cur.execute(f"KILL {int(i)}")
            finally:
                admin.close()

        # read_timeout: a lost server must never hang a PyMySQL call for good
        yield KillTarget(
            driver,
            url,
            {"connect_timeout": 2, "read_timeout": 5},
            counter,
            "SELECT CONNECTION_ID()",
            kill_mysql,
        )
        counter.close()
        return
    server: DisposablePostgres = request.getfixturevalue("fresh_pg")
    app = unique_app(f"kill-{driver}")
    pg_counter = PgSessions(server, app)

    def kill_pg(ids: list[int]) -> None:
        with server.admin_connection() as admin:
            for i in ids:
                admin.execute("SELECT pg_terminate_backend(%s)", (i,))

    scheme = "postgresql+psycopg2" if driver == "psycopg2" else "postgresql"
    yield KillTarget(
        driver,
        server.url.replace("postgresql", scheme, 1),
        pg_kwargs(app),
        pg_counter,
        "SELECT pg_backend_pid()",
        kill_pg,
    )
    pg_counter.close()


KILL_MODES = {
    # pre_ping, and whether the connections sat idle past ping_window before the kill is seen
    "pre_ping": (True, True),
    "pre_ping-within-window": (True, False),
    "no-pre_ping": (False, True),
}


@pytest.mark.parametrize("mode", list(KILL_MODES))
def test_idle_backends_killed(kill_target: KillTarget, mode: str, figures: Figures) -> None:
    """Every idle session is killed by the server. With ``pre_ping`` (connections idle past
    ``ping_window``) the next 100 checkouts see no error; without it, or inside the window,
    each dead connection costs at most one error and is never lent again."""
    pre_ping, idle_past_window = KILL_MODES[mode]
    size, rounds = 4, 25
    ping_window = 0.5
    pool = millpond.Pool(
        kill_target.url,
        connect_kwargs=kill_target.connect_kwargs,
        min_size=size,
        max_size=size,
        pre_ping=pre_ping,
        ping_window=ping_window,
        timeout=5.0,
        open=False,
        name=f"kill-{kill_target.driver}-{mode}",
    )
    log = CallLog()
    with PeakMonitor(kill_target.sessions) as monitor, pool:
        pool.open(wait=True, timeout=10)
        # hold every connection at once, so all four are known and all four get killed
        dead = [pool.getconn() for _ in range(size)]
        ids = [int(scalar(c, kill_target.session_id_sql)) for c in dead]
        for c in dead:
            pool.putconn(c)
        returned_at = time.monotonic()
        # the count is right before anything is broken (this also proves the counter works)
        assert monitor.observe(kill_target.sessions()) == size
        kill_target.kill(ids)
        assert kill_target.sessions.wait_for(0) == 0
        if idle_past_window:
            time.sleep(max(0.0, returned_at + ping_window + 0.05 - time.monotonic()))

        # 100 checkouts: 25 rounds in which 4 threads each hold a connection until all 4 do,
        # so that every connection of the pool is lent in every round (LIFO would otherwise
        # keep lending the same one and leave dead ones untouched at the bottom)
        barrier = threading.Barrier(size, timeout=10)
        lent_dead: list[int] = []  # indexes into ``dead`` of dead connections lent out

        def borrower() -> None:
            for _ in range(rounds):
                started = time.monotonic()
                error: Exception | None = None
                try:
                    with pool.connection() as conn:
                        lent_dead.extend(i for i, d in enumerate(dead) if d is conn)
                        assert scalar(conn, "SELECT 1") == 1
                        # timed to here: the hold below is the test's, not the pool's
                        log.add(Call(started, time.monotonic()))
                        barrier.wait()
                except threading.BrokenBarrierError:
                    raise
                except Exception as exc:
                    error = exc
                if error is not None:
                    log.add(Call(started, time.monotonic(), error))
                    barrier.wait()

        with ThreadPoolExecutor(size) as ex:
            for f in [ex.submit(borrower) for _ in range(size)]:
                f.result(timeout=60)
        stats = settled(pool, kill_target.sessions, monitor)
        assert_whole(stats)
        assert stats.size == size
    assert kill_target.sessions.wait_for(0) == 0, "closing the pool left sessions on the server"

    errors = log.errors()
    assert len(log.snapshot()) == size * rounds
    # each dead connection at most once, and only the dead ones fail
    assert len(lent_dead) == len(set(lent_dead))
    assert len(errors) == len(lent_dead) <= size
    if pre_ping and idle_past_window:
        assert errors == [], [repr(c.error) for c in errors]
    for c in errors:
        assert not isinstance(c.error, millpond.PoolError), repr(c.error)
    assert log.max_elapsed() <= 5.0 + MARGIN
    assert monitor.peak <= size
    discarded = {k: v for k, v in stats.closed_by_reason.items() if k in ("broken", "ping_failed")}
    assert sum(discarded.values()) == size, stats.closed_by_reason
    figures.record(
        f"a/{kill_target.driver}/{mode}",
        killed=size,
        checkouts=size * rounds,
        errors=len(errors),
        error_kinds=log.error_kinds(),
        error_samples=log.error_samples(),
        discarded=discarded,
        peak_sessions=monitor.peak,
        cap=size,
        slowest_checkout_s=log.max_elapsed(),
    )


async def all_arrive(gate: asyncio.Barrier) -> None:
    """Holds each task until all have arrived, so every connection is lent in every round;
    bounded, so a lost task fails the test instead of hanging it."""
    async with asyncio.timeout(10):
        await gate.wait()


@pytest.mark.postgres
@pytest.mark.asyncio
@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre_ping", "no-pre_ping"])
async def test_idle_backends_killed_async(
    fresh_pg: DisposablePostgres, pre_ping: bool, figures: Figures
) -> None:
    """The same with AsyncPool over asyncpg, idle past ``ping_window``."""
    size, rounds = 4, 25
    app = unique_app("kill-asyncpg")
    counter = PgSessions(fresh_pg, app)
    log = CallLog()
    pool = millpond.AsyncPool(
        asyncpg_url(fresh_pg),
        connect_kwargs=asyncpg_kwargs(app),
        min_size=size,
        max_size=size,
        pre_ping=pre_ping,
        timeout=5.0,
        name=f"kill-asyncpg-{pre_ping}",
    )
    lent_dead: list[int] = []
    with PeakMonitor(counter) as monitor:
        async with pool:
            await pool.open(wait=True, timeout=10)
            dead = [await pool.getconn() for _ in range(size)]
            ids = [await c.fetchval("SELECT pg_backend_pid()") for c in dead]
            for c in dead:
                await pool.putconn(c)
            assert monitor.observe(counter()) == size
            with fresh_pg.admin_connection() as admin:
                for i in ids:
                    admin.execute("SELECT pg_terminate_backend(%s)", (i,))
            assert counter.wait_for(0) == 0
            await asyncio.sleep(0.55)

            async def borrow(gate: asyncio.Barrier) -> None:
                started = time.monotonic()
                error: Exception | None = None
                try:
                    async with pool.connection() as conn:
                        lent_dead.extend(i for i, d in enumerate(dead) if d is conn)
                        assert await conn.fetchval("SELECT 1") == 1
                        log.add(Call(started, time.monotonic()))
                        await all_arrive(gate)
                except TimeoutError:
                    raise
                except Exception as exc:
                    error = exc
                if error is not None:
                    log.add(Call(started, time.monotonic(), error))
                    await all_arrive(gate)

            for _ in range(rounds):
                gate = asyncio.Barrier(size)
                await asyncio.gather(*(borrow(gate) for _ in range(size)))
            stats = pool.stats()
            assert_whole(stats)
    assert counter.wait_for(0) == 0
    counter.close()
    errors = log.errors()
    assert len(lent_dead) == len(set(lent_dead))
    assert len(errors) == len(lent_dead) <= size
    if pre_ping:
        assert errors == [], [repr(c.error) for c in errors]
    assert monitor.peak <= size
    assert log.max_elapsed() <= 5.0 + MARGIN
    figures.record(
        f"a/asyncpg/{'pre_ping' if pre_ping else 'no-pre_ping'}",
        killed=size,
        checkouts=size * rounds,
        errors=len(errors),
        error_kinds=log.error_kinds(),
        error_samples=log.error_samples(),
        peak_sessions=monitor.peak,
        cap=size,
        slowest_checkout_s=log.max_elapsed(),
    )


# == (a2) idle sessions cut by the server: keepalive ====================================

#: the server ends a session idle this long (PostgreSQL 14+), as a NAT or firewall idle cut
#: would; keepalive pings every KEEPALIVE s, well inside it
IDLE_SESSION_TIMEOUT_MS = 1000
KEEPALIVE = 0.3


@pytest.mark.postgres
def test_keepalive_outlives_idle_session_timeout(
    fresh_pg: DisposablePostgres, figures: Figures
) -> None:
    """The server ends sessions idle for 1 s. With ``keepalive=0.3`` (and no pre_ping, so
    that only keepalive can save them) an idle connection stays alive: after 2.5 s of
    idleness the checkout works. One connection: with two, AsyncPool's housekeeper can be
    woken for one while the other is back from its ping, which hides the bug at random."""
    size = 1
    app = unique_app("keepalive")
    counter = PgSessions(fresh_pg, app)
    pool = millpond.Pool(
        fresh_pg.url,
        connect_kwargs={
            **pg_kwargs(app),
            "options": f"-c idle_session_timeout={IDLE_SESSION_TIMEOUT_MS}",
        },
        min_size=size,
        max_size=size,
        pre_ping=False,
        keepalive=KEEPALIVE,
        timeout=5.0,
        open=False,
        name="keepalive",
    )
    log = CallLog()
    with PeakMonitor(counter) as monitor, pool:
        pool.open(wait=True, timeout=10)
        time.sleep(2.5)
        held = [pool.getconn() for _ in range(size)]
        for conn in held:
            error: Exception | None = None
            started = time.monotonic()
            try:
                scalar(conn, "SELECT 1")
            except Exception as exc:
                error = exc
            log.add(Call(started, time.monotonic(), error))
            pool.putconn(conn, discard=error is not None)
        stats = pool.stats()
        assert_whole(stats)
    counter.close()
    figures.record(
        "a2/psycopg/keepalive",
        idle_session_timeout_s=IDLE_SESSION_TIMEOUT_MS / 1000,
        keepalive_s=KEEPALIVE,
        idle_for_s=2.5,
        keepalive_pings=stats.pings,
        errors=len(log.errors()),
        error_samples=log.error_samples(),
        peak_sessions=monitor.peak,
        cap=size,
    )
    assert monitor.peak <= size
    assert log.errors() == [], log.error_samples()


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_keepalive_outlives_idle_session_timeout_async(
    fresh_pg: DisposablePostgres, figures: Figures
) -> None:
    """The same with AsyncPool over asyncpg."""
    size = 1
    app = unique_app("keepalive-async")
    counter = PgSessions(fresh_pg, app)
    log = CallLog()
    settings = {"application_name": app, "idle_session_timeout": str(IDLE_SESSION_TIMEOUT_MS)}
    with PeakMonitor(counter) as monitor:
        async with millpond.AsyncPool(
            asyncpg_url(fresh_pg),
            connect_kwargs={"server_settings": settings, "timeout": 2.0},
            min_size=size,
            max_size=size,
            pre_ping=False,
            keepalive=KEEPALIVE,
            timeout=5.0,
            name="keepalive-async",
        ) as pool:
            await pool.open(wait=True, timeout=10)
            await asyncio.sleep(2.5)
            held = [await pool.getconn() for _ in range(size)]
            for conn in held:
                error: Exception | None = None
                started = time.monotonic()
                try:
                    await conn.fetchval("SELECT 1")
                except Exception as exc:
                    error = exc
                log.add(Call(started, time.monotonic(), error))
                await pool.putconn(conn, discard=error is not None)
            stats = pool.stats()
            assert_whole(stats)
    counter.close()
    figures.record(
        "a2/asyncpg/keepalive",
        idle_session_timeout_s=IDLE_SESSION_TIMEOUT_MS / 1000,
        keepalive_s=KEEPALIVE,
        idle_for_s=2.5,
        keepalive_pings=stats.pings,
        errors=len(log.errors()),
        error_samples=log.error_samples(),
        peak_sessions=monitor.peak,
        cap=size,
    )
    assert monitor.peak <= size
    assert log.errors() == [], log.error_samples()


# == (b) the server restarted under load =====================================================

#: the issue's goal: serving again within 1 s of the server accepting connections
RECOVERY_GOAL = 1.0
#: how long the server stays down: long enough for the backoff to reach its cap, so that the
#: recovery measured is the worst the backoff allows, not a lucky early retry
OUTAGE = 2.5


@dataclass
class Outage:
    down_at: float = 0.0
    accepting_at: float = 0.0
    last_ok: float = 0.0


def outage_figures(log: CallLog, outage: Outage, timeout: float) -> dict[str, Any]:
    """What the callers saw around an outage (all times in seconds)."""
    calls = log.snapshot()
    served = [c.ended for c in calls if c.ok and c.ended > outage.accepting_at]
    first_ok = min(served, default=float("inf"))
    during = [c for c in calls if outage.down_at <= c.started < outage.accepting_at]
    refused = [c.elapsed for c in during if isinstance(c.error, millpond.ConnectError)]
    after = [c for c in calls if c.started > first_ok and not c.ok]
    return {
        "recovery_s": first_ok - outage.accepting_at,
        "calls": len(calls),
        "errors": sum(1 for c in calls if not c.ok),
        "error_kinds": log.error_kinds(),
        "error_samples": log.error_samples(),
        "connect_error_median_s": statistics.median(refused) if refused else None,
        "connect_error_max_s": max(refused, default=None),
        "errors_after_recovery": len(after),
        "error_kinds_after_recovery": sorted({type(c.error).__name__ for c in after}),
        "slowest_call_s": log.max_elapsed(),
        "deadline_s": timeout,
    }


@pytest.mark.postgres
@pytest.mark.slow
def test_server_restarted_under_load(fresh_pg: DisposablePostgres, figures: Figures) -> None:
    """16 threads query through the pool while the server is stopped (fast) for 2.5 s and
    started again. Callers get ConnectError fast while it is down; the pool serves again
    within about 1 s of the server accepting connections, with no call from the user."""
    threads, min_size, max_size, timeout = 16, 4, 8, 2.0
    app = unique_app("restart")
    counter = PgSessions(fresh_pg, app)
    pool = millpond.Pool(
        fresh_pg.url,
        connect_kwargs=pg_kwargs(app),
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        open=False,
        name="restart",
    )
    log = CallLog()
    stop = threading.Event()
    outage = Outage()

    def worker() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                with pool.connection() as conn:
                    scalar(conn, "SELECT 1")
            except Exception as exc:
                log.add(Call(started, time.monotonic(), exc))
                # real callers pause before trying again; a spin would starve the restarting
                # server of the two cores it has
                stop.wait(0.02)
            else:
                outage.last_ok = time.monotonic()
                log.add(Call(started, outage.last_ok))
                stop.wait(0.001)

    with PeakMonitor(counter) as monitor, pool:
        pool.open(wait=True, timeout=10)
        with ThreadPoolExecutor(threads) as ex:
            futures = [ex.submit(worker) for _ in range(threads)]
            try:
                time.sleep(0.5)
                fresh_pg.stop("fast")
                outage.down_at = time.monotonic()
                connect_errors = pool.stats().connect_errors
                probe = FirstSuccess(fresh_pg.url).start()
                time.sleep(OUTAGE)
                attempts = pool.stats().connect_errors - connect_errors
                fresh_pg.start()
                started_at = time.monotonic()
                wait_until(lambda: probe.at is not None, 2.0)
                probe.stop()
                outage.accepting_at = min(probe.at or started_at, started_at)
                assert wait_until(lambda: outage.last_ok > outage.accepting_at, 5.0) is not None
                time.sleep(0.5)  # and keeps serving
            finally:
                stop.set()  # else a failed assertion would leave the executor waiting forever
            for f in futures:
                f.result(timeout=10)
        # the pool refills to min_size on its own
        assert wait_until(lambda: pool.stats().size >= min_size, 5.0) is not None
        stats = pool.stats()
        assert_whole(stats)
    assert counter.wait_for(0) == 0
    counter.close()

    found = outage_figures(log, outage, timeout)
    figures.record(
        "b/psycopg/restart",
        threads=threads,
        outage_s=OUTAGE,
        connect_attempts_failed_during_outage=attempts,
        peak_sessions=monitor.peak,
        cap=max_size,
        lost=stats.closed_by_reason,
        **found,
    )
    assert monitor.peak <= max_size
    assert found["slowest_call_s"] <= timeout + MARGIN
    # fail fast: a caller learns the server is down in far less than its deadline
    assert found["connect_error_max_s"] is not None
    assert found["connect_error_max_s"] < timeout / 2
    # no busy loop: backoff (1 s cap, jittered) keeps attempts to a few per second per slot
    assert attempts <= max_size * (OUTAGE / 0.05) / 4
    assert found["errors_after_recovery"] == 0, found
    # the backoff's 1 s cap is the bound by design; 0.1 s more for the connect itself and for
    # the waiter's thread to run on a busy machine
    assert found["recovery_s"] <= RECOVERY_GOAL + 0.1, found


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.asyncio
async def test_server_restarted_under_load_async(
    fresh_pg: DisposablePostgres, figures: Figures
) -> None:
    """The same with AsyncPool over asyncpg, 16 tasks."""
    tasks, min_size, max_size, timeout = 16, 4, 8, 2.0
    app = unique_app("restart-async")
    counter = PgSessions(fresh_pg, app)
    log = CallLog()
    outage = Outage()
    stop = asyncio.Event()

    async with millpond.AsyncPool(
        asyncpg_url(fresh_pg),
        connect_kwargs=asyncpg_kwargs(app),
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        name="restart-async",
    ) as pool:

        async def worker() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    async with pool.connection() as conn:
                        await conn.fetchval("SELECT 1")
                except Exception as exc:
                    log.add(Call(started, time.monotonic(), exc))
                    await asyncio.sleep(0.02)
                else:
                    outage.last_ok = time.monotonic()
                    log.add(Call(started, outage.last_ok))
                    await asyncio.sleep(0.001)

        with PeakMonitor(counter) as monitor:
            await pool.open(wait=True, timeout=10)
            running = [asyncio.create_task(worker()) for _ in range(tasks)]
            try:
                await asyncio.sleep(0.5)
                await asyncio.to_thread(fresh_pg.stop, "fast")
                outage.down_at = time.monotonic()
                probe = FirstSuccess(fresh_pg.url).start()
                await asyncio.sleep(OUTAGE)
                await asyncio.to_thread(fresh_pg.start)
                started_at = time.monotonic()
                for _ in range(200):
                    if probe.at is not None:
                        break
                    await asyncio.sleep(0.01)
                probe.stop()
                outage.accepting_at = min(probe.at or started_at, started_at)
                for _ in range(500):
                    if outage.last_ok > outage.accepting_at:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.5)
            finally:
                stop.set()
            await asyncio.wait_for(asyncio.gather(*running), 10)
            for _ in range(500):
                if pool.stats().size >= min_size:
                    break
                await asyncio.sleep(0.01)
            stats = pool.stats()
            assert_whole(stats)
            assert stats.size >= min_size
    assert counter.wait_for(0) == 0
    counter.close()
    found = outage_figures(log, outage, timeout)
    figures.record(
        "b/asyncpg/restart",
        threads=tasks,
        outage_s=OUTAGE,
        peak_sessions=monitor.peak,
        cap=max_size,
        lost=stats.closed_by_reason,
        **found,
    )
    assert monitor.peak <= max_size
    assert found["slowest_call_s"] <= timeout + MARGIN
    assert found["connect_error_max_s"] is not None
    assert found["connect_error_max_s"] < timeout / 2
    assert found["errors_after_recovery"] == 0, found
    assert found["recovery_s"] <= RECOVERY_GOAL + 0.1, found


# == (c) the server down at start-up =========================================================


def _chain(exc: BaseException | None) -> list[BaseException]:
    found = []
    while exc is not None:
        found.append(exc)
        exc = exc.__cause__
    return found


@pytest.mark.postgres
def test_server_down_at_startup(fresh_pg: DisposablePostgres, figures: Figures) -> None:
    """``open(wait=True, timeout=5)`` against a stopped server fails fast with ConnectError
    (carrying the driver's error), so does a checkout; once the server is started the pool
    fills itself to min_size without any call."""
    min_size, max_size, timeout = 2, 4, 5.0
    app = unique_app("startup")
    counter = PgSessions(fresh_pg, app)
    fresh_pg.stop()
    pool = millpond.Pool(
        fresh_pg.url,
        connect_kwargs=pg_kwargs(app),
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        open=False,
        name="startup",
    )
    try:
        started = time.monotonic()
        with pytest.raises(millpond.ConnectError) as open_error:
            pool.open(wait=True, timeout=timeout)
        open_fail_s = time.monotonic() - started
        assert any(isinstance(e, psycopg.OperationalError) for e in _chain(open_error.value))
        # "refused" normally; "closed the connection" if the postmaster was still exiting
        message = str(open_error.value)
        assert "refused" in message or "closed the connection" in message, message

        # a checkout while it is still down fails just as fast, whatever its deadline
        started = time.monotonic()
        with pytest.raises(millpond.ConnectError):
            pool.getconn(timeout=timeout)
        getconn_fail_s = time.monotonic() - started

        time.sleep(OUTAGE - (time.monotonic() - started))  # let the backoff reach its cap
        attempts = pool.stats().connect_errors
        with PeakMonitor(counter) as monitor:
            fresh_pg.start()
            fill_s = wait_until(lambda: pool.stats().size >= min_size, 5.0)
            assert fill_s is not None, pool.stats()
            started = time.monotonic()
            with pool.connection(timeout=timeout) as conn:
                assert scalar(conn, "SELECT 1") == 1
            checkout_s = time.monotonic() - started
            stats = pool.stats()
            assert_whole(stats)
            assert stats.size == min_size
            assert monitor.observe(counter.wait_for(min_size)) == min_size
            monitor.settle()
    finally:
        pool.close()
    assert counter.wait_for(0) == 0
    counter.close()
    figures.record(
        "c/psycopg/startup",
        open_fail_s=open_fail_s,
        getconn_fail_s=getconn_fail_s,
        deadline_s=timeout,
        connect_attempts_failed_during_outage=attempts,
        outage_s=OUTAGE,
        fill_to_min_size_s=fill_s,
        first_checkout_after_fill_s=checkout_s,
        peak_sessions=monitor.peak,
        cap=max_size,
        error_message=str(open_error.value),
    )
    assert open_fail_s < 1.0
    assert getconn_fail_s < 1.0
    assert fill_s <= RECOVERY_GOAL + 0.1
    assert monitor.peak <= max_size
    assert attempts <= min_size * (OUTAGE / 0.05) / 4


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_server_down_at_startup_async(fresh_pg: DisposablePostgres, figures: Figures) -> None:
    """The same with AsyncPool over asyncpg."""
    min_size, max_size, timeout = 2, 4, 5.0
    app = unique_app("startup-async")
    counter = PgSessions(fresh_pg, app)
    await asyncio.to_thread(fresh_pg.stop)
    pool = millpond.AsyncPool(
        asyncpg_url(fresh_pg),
        connect_kwargs=asyncpg_kwargs(app),
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        open=False,
        name="startup-async",
    )
    try:
        started = time.monotonic()
        with pytest.raises(millpond.ConnectError) as open_error:
            await pool.open(wait=True, timeout=timeout)
        open_fail_s = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(millpond.ConnectError):
            await pool.getconn(timeout=timeout)
        getconn_fail_s = time.monotonic() - started
        await asyncio.sleep(OUTAGE - (time.monotonic() - started))
        with PeakMonitor(counter) as monitor:
            await asyncio.to_thread(fresh_pg.start)
            accepting_at = time.monotonic()
            while pool.stats().size < min_size and time.monotonic() - accepting_at < 5:
                await asyncio.sleep(0.005)
            fill_s = time.monotonic() - accepting_at
            async with pool.connection(timeout=timeout) as conn:
                assert await conn.fetchval("SELECT 1") == 1
            stats = pool.stats()
            assert_whole(stats)
            assert stats.size == min_size
            assert monitor.observe(counter.wait_for(min_size)) == min_size
            await asyncio.to_thread(monitor.settle)
    finally:
        await pool.close()
    assert counter.wait_for(0) == 0
    counter.close()
    figures.record(
        "c/asyncpg/startup",
        open_fail_s=open_fail_s,
        getconn_fail_s=getconn_fail_s,
        deadline_s=timeout,
        outage_s=OUTAGE,
        fill_to_min_size_s=fill_s,
        peak_sessions=monitor.peak,
        cap=max_size,
        error_message=str(open_error.value),
    )
    assert open_fail_s < 1.0
    assert getconn_fail_s < 1.0
    assert fill_s <= RECOVERY_GOAL + 0.1
    assert monitor.peak <= max_size


# == (d) a blackholed server (accepts, never answers) ========================================

#: psycopg raises connect_timeout values below 2 s to 2 s
PG_CONNECT_TIMEOUT = 2


def recover_after_heal(attempt: Callable[[], None], timeout: float = 5.0) -> float | None:
    """Seconds until ``attempt`` (a whole checkout and query) first succeeds, retried every
    20 ms; None if it never does within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            attempt()
        except Exception:
            time.sleep(0.02)
            continue
        return time.monotonic() - started
    return None


@pytest.mark.postgres
def test_blackhole_connect(
    fresh_pg: DisposablePostgres, pg_proxy: FaultProxy, figures: Figures
) -> None:
    """New connections are swallowed by a blackhole. A caller whose deadline is shorter than
    the connect timeout gets an error at its deadline; one with a longer deadline gets
    ConnectError when the connect times out. Neither hangs; the pool recovers on its own."""
    app = unique_app("blackhole-connect")
    counter = PgSessions(fresh_pg, app)
    pool = millpond.Pool(
        fresh_pg.url_at(pg_proxy.port),
        connect_kwargs=pg_kwargs(app, PG_CONNECT_TIMEOUT),
        min_size=0,
        max_size=2,
        timeout=5.0,
        open=False,
        name="blackhole-connect",
    )
    pg_proxy.blackhole()
    log = CallLog()
    with PeakMonitor(counter) as monitor, pool:
        short, long = 1.0, 5.0
        with pytest.raises((millpond.PoolTimeout, millpond.ConnectError)), timed(log):
            pool.getconn(timeout=short)
        short_s = log.snapshot()[-1].elapsed
        with pytest.raises(millpond.ConnectError) as connect_error, timed(log):
            pool.getconn(timeout=long)
        long_s = log.snapshot()[-1].elapsed

        pg_proxy.pass_through()

        def attempt() -> None:
            with pool.connection(timeout=long) as conn:
                scalar(conn, "SELECT 1")

        recovered_s = recover_after_heal(attempt)
        assert recovered_s is not None
        stats = settled(pool, counter, monitor)
        assert_whole(stats)
        monitor.settle()
    assert counter.wait_for(0) == 0
    counter.close()
    figures.record(
        "d/psycopg/blackhole-connect",
        connect_timeout_s=PG_CONNECT_TIMEOUT,
        short_deadline_s=short,
        short_deadline_error=type(log.snapshot()[0].error).__name__,
        short_deadline_failed_after_s=short_s,
        long_deadline_s=long,
        long_deadline_failed_after_s=long_s,
        recovered_after_heal_s=recovered_s,
        peak_sessions=monitor.peak,
        cap=2,
        error_message=str(connect_error.value),
    )
    assert short_s <= short + MARGIN
    # the connect began with the first call, so the second waits for what is left of it
    assert short_s + long_s <= PG_CONNECT_TIMEOUT + MARGIN
    assert recovered_s <= RECOVERY_GOAL + 0.5
    assert monitor.peak <= 2


@pytest.mark.postgres
@pytest.mark.slow
def test_blackhole_ping_of_idle_connection(
    fresh_pg: DisposablePostgres, pg_proxy: FaultProxy, figures: Figures
) -> None:
    """An idle connection whose server stops answering: the checkout pings it (it sat past
    ``ping_window``); the ping must give up within the caller's deadline (or a ping timeout)
    and the checkout fail, not hang."""
    app = unique_app("blackhole-ping")
    deadline = 1.0
    pool = millpond.Pool(
        fresh_pg.url_at(pg_proxy.port),
        connect_kwargs=pg_kwargs(app, PG_CONNECT_TIMEOUT),
        min_size=1,
        max_size=2,
        timeout=deadline,
        open=False,
        name="blackhole-ping",
    )
    ex = ThreadPoolExecutor(1)
    try:
        pool.open(wait=True, timeout=10)
        with pool.connection() as conn:
            scalar(conn, "SELECT 1")
        time.sleep(0.6)  # past ping_window: the next checkout pings
        pg_proxy.blackhole()

        def checkout() -> None:
            with pool.connection() as conn:
                scalar(conn, "SELECT 1")

        started = time.monotonic()
        future = ex.submit(checkout)
        allowed = deadline + PG_CONNECT_TIMEOUT + MARGIN
        with contextlib.suppress(Exception):
            future.result(timeout=allowed)
        waited = time.monotonic() - started
        hung = not future.done()
        figures.record(
            "d/psycopg/blackhole-ping",
            deadline_s=deadline,
            hung=hung,
            waited_s=waited,
            note="still blocked in the checkout ping when the test gave up" if hung else "",
        )
        assert not hung, f"the checkout is still blocked in its ping after {waited:.1f}s"
    finally:
        # healing delivers the held ping: the blocked caller gets its answer and returns
        pg_proxy.pass_through()
        with contextlib.suppress(Exception):
            ex.submit(lambda: None).result(timeout=10)
        ex.shutdown(wait=True)
        pool.close()


@pytest.mark.mysql
def test_blackhole_pymysql(mysql_url: str, mysql_proxy: FaultProxy, figures: Figures) -> None:
    """MariaDB behind a blackhole, PyMySQL with read_timeout=1: pings of idle connections
    time out, each counts as dead, and the checkout fails within its deadline plus one ping
    timeout; the pool recovers when the network heals."""
    size, deadline, read_timeout = 2, 1.5, 1
    params = mysql_params(mysql_url)
    url = f"mysql://{params['user']}@127.0.0.1:{mysql_proxy.port}/{params['database']}"
    counter = MysqlSessions(mysql_url)
    pool = millpond.Pool(
        url,
        connect_kwargs={
            "password": params["password"],
            "connect_timeout": read_timeout,
            "read_timeout": read_timeout,
            "write_timeout": read_timeout,
        },
        min_size=size,
        max_size=size,
        timeout=deadline,
        open=False,
        name="blackhole-pymysql",
    )
    log = CallLog()
    with PeakMonitor(counter) as monitor, pool:
        pool.open(wait=True, timeout=10)
        warm = [pool.getconn() for _ in range(size)]
        for c in warm:
            pool.putconn(c)
        assert monitor.observe(counter()) == size
        time.sleep(0.6)
        mysql_proxy.blackhole()
        with pytest.raises(millpond.PoolError) as failure, timed(log), pool.connection() as conn:
            scalar(conn, "SELECT 1")
        failed_s = log.snapshot()[-1].elapsed
        mysql_proxy.pass_through()

        def attempt() -> None:
            with pool.connection(timeout=5) as conn:
                scalar(conn, "SELECT 1")

        recovered_s = recover_after_heal(attempt)
        assert recovered_s is not None
        stats = settled(pool, counter, monitor)
        assert_whole(stats)
        monitor.settle()
    assert counter.wait_for(0) == 0
    counter.close()
    figures.record(
        "d/pymysql/blackhole-ping",
        deadline_s=deadline,
        read_timeout_s=read_timeout,
        error=type(failure.value).__name__,
        failed_after_s=failed_s,
        ping_failures=stats.ping_failures,
        recovered_after_heal_s=recovered_s,
        peak_sessions=monitor.peak,
        cap=size,
    )
    assert failed_s <= deadline + read_timeout + MARGIN
    assert monitor.peak <= size


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_blackhole_async(
    fresh_pg: DisposablePostgres, pg_proxy: FaultProxy, figures: Figures
) -> None:
    """AsyncPool over asyncpg: the checkout ping is bounded by the caller's deadline, and a
    connect by asyncpg's ``timeout``; nothing hangs."""
    app = unique_app("blackhole-async")
    counter = PgSessions(fresh_pg, app)
    deadline, long, connect_timeout = 1.0, 5.0, 2.0
    log = CallLog()
    with PeakMonitor(counter) as monitor:
        async with millpond.AsyncPool(
            asyncpg_url(fresh_pg, pg_proxy.port),
            connect_kwargs=asyncpg_kwargs(app, connect_timeout),
            min_size=1,
            max_size=2,
            timeout=deadline,
            name="blackhole-async",
        ) as pool:
            await pool.open(wait=True, timeout=10)
            async with pool.connection() as conn:
                await conn.fetchval("SELECT 1")
            await asyncio.sleep(0.6)
            await asyncio.to_thread(pg_proxy.blackhole)
            with pytest.raises(millpond.PoolError) as ping_failure, timed(log):
                async with pool.connection() as conn:
                    await conn.fetchval("SELECT 1")
            ping_s = log.snapshot()[-1].elapsed
            with pytest.raises(millpond.PoolError) as connect_failure, timed(log):
                async with pool.connection(timeout=long) as conn:
                    await conn.fetchval("SELECT 1")
            connect_s = log.snapshot()[-1].elapsed
            await asyncio.to_thread(pg_proxy.pass_through)
            healed = time.monotonic()
            recovered_s: float | None = None
            while time.monotonic() - healed < 5.0:
                try:
                    async with pool.connection(timeout=long) as conn:
                        await conn.fetchval("SELECT 1")
                except Exception:
                    await asyncio.sleep(0.02)
                    continue
                recovered_s = time.monotonic() - healed
                break
            assert recovered_s is not None
            stats = pool.stats()
            assert_whole(stats)
            await asyncio.to_thread(monitor.settle)
    assert counter.wait_for(0) == 0
    counter.close()
    figures.record(
        "d/asyncpg/blackhole",
        deadline_s=deadline,
        ping_error=type(ping_failure.value).__name__,
        ping_failed_after_s=ping_s,
        connect_timeout_s=connect_timeout,
        long_deadline_s=long,
        connect_error=type(connect_failure.value).__name__,
        connect_failed_after_s=connect_s,
        recovered_after_heal_s=recovered_s,
        peak_sessions=monitor.peak,
        cap=2,
    )
    assert ping_s <= deadline + MARGIN
    assert connect_s <= connect_timeout + MARGIN
    assert monitor.peak <= 2


# == (e) max_connections too small ==========================================================

TOO_MANY = "too many clients"


@pytest.mark.postgres
def test_too_many_clients(fresh_pg: DisposablePostgres, figures: Figures) -> None:
    """The server has no slot left. A checkout fails fast with ConnectError carrying the
    server's "too many clients"; the pool retries with backoff, fills itself when one slot
    frees up, serves what that slot allows (the other callers get the server's message at
    their deadline), and grows to demand once room appears."""
    fresh_pg.set_max_connections(4)
    app = unique_app("too-many")
    counter = PgSessions(fresh_pg, app)
    counter()  # the monitor's own slot, taken now: 3 left
    hogs = [fresh_pg.admin_connection() for _ in range(3)]
    max_size, deadline, hold = 3, 1.0, 1.5
    pool = millpond.Pool(
        fresh_pg.url,
        connect_kwargs=pg_kwargs(app),
        min_size=1,
        max_size=max_size,
        timeout=deadline,
        open=False,
        name="too-many",
    )
    log = CallLog()
    try:
        with PeakMonitor(counter) as monitor, pool:
            pool.open()
            # A: server full, pool empty
            time.sleep(0.2)
            with pytest.raises(millpond.ConnectError) as full, timed(log):
                pool.getconn(timeout=5.0)
            full_fail_s = log.snapshot()[-1].elapsed
            assert TOO_MANY in str(full.value), str(full.value)

            # B: one slot frees up; the pool takes it by itself (min_size=1)
            hogs.pop().close()
            fill_s = wait_until(lambda: pool.stats().size >= 1, 5.0)
            assert fill_s is not None, pool.stats()

            # three callers want a connection for longer than the others' deadline
            def hold_one() -> None:
                with timed(log), pool.connection() as conn:
                    scalar(conn, "SELECT 1")
                    time.sleep(hold)

            with ThreadPoolExecutor(3) as ex:
                outcomes = [ex.submit(hold_one) for _ in range(3)]
                errors = [f.exception(timeout=10) for f in outcomes]
            served = sum(1 for e in errors if e is None)
            phase_b = [e for e in errors if e is not None]

            # C: room appears; three callers hold connections at the same time
            for h in hogs:
                h.close()
            hogs.clear()
            room_at = time.monotonic()
            all_held = threading.Barrier(3, timeout=10)
            held_at: list[float] = []

            def hold_together() -> None:
                with timed(log), pool.connection(timeout=5.0) as conn:
                    scalar(conn, "SELECT 1")
                    all_held.wait()
                    held_at.append(time.monotonic())

            with ThreadPoolExecutor(3) as ex:
                for f in [ex.submit(hold_together) for _ in range(3)]:
                    f.result(timeout=15)
            grow_s = min(held_at) - room_at
            stats = settled(pool, counter, monitor)
            assert_whole(stats)
            monitor.settle()
    finally:
        for h in hogs:
            h.close()
    assert counter.wait_for(0) == 0
    counter.close()
    figures.record(
        "e/psycopg/too-many-clients",
        max_connections=4,
        full_server_fail_s=full_fail_s,
        fill_after_one_slot_s=fill_s,
        one_slot_served=served,
        one_slot_errors=[type(e).__name__ for e in phase_b],
        one_slot_error_carries_server_message=[TOO_MANY in str(e) for e in phase_b],
        grow_to_3_after_room_s=grow_s,
        connect_errors=stats.connect_errors,
        peak_sessions=monitor.peak,
        cap=max_size,
        slowest_failed_call_s=max(c.elapsed for c in log.snapshot() if c.error is not None),
        error_message=str(full.value),
    )
    assert full_fail_s < 1.0
    assert served >= 1
    for e in phase_b:
        assert isinstance(e, (millpond.ConnectError, millpond.PoolTimeout)), repr(e)
        assert TOO_MANY in str(e), f"{type(e).__name__} without the server's message: {e}"
    for c in log.snapshot():
        if c.error is not None:
            assert c.elapsed <= deadline + MARGIN
    assert monitor.peak <= max_size
    assert grow_s <= RECOVERY_GOAL + 0.5


# == (f) fork ===============================================================================


def query_many(pool: millpond.Pool, n: int, salt: int) -> dict[str, Any]:
    """``n`` checkouts, each checking the server's answer; the backend pids used."""
    pids: set[int] = set()
    wrong = errors = 0
    for i in range(n):
        try:
            with pool.connection(timeout=5.0) as conn:
                cur = conn.cursor()
                cur.execute("SELECT pg_backend_pid(), %s::int * 2", (salt + i,))
                row = cur.fetchone()
                cur.close()
        except Exception:
            errors += 1
            continue
        assert row is not None
        pids.add(int(row[0]))
        if row[1] != 2 * (salt + i):
            wrong += 1
    return {"pids": sorted(pids), "wrong": wrong, "errors": errors, "n": n}


def _child_report(pool: millpond.Pool) -> dict[str, Any]:
    """What a child reports: its queries through the inherited pool (from two threads, so its
    rebuilt lock and workers are exercised), then whether closing the pool went well."""
    with ThreadPoolExecutor(2) as ex:
        parts = list(ex.map(lambda s: query_many(pool, 50, s), [1000, 2000]))
    stats = pool.stats()
    pool.close()
    return {
        "pids": sorted({p for part in parts for p in part["pids"]}),
        "wrong": sum(part["wrong"] for part in parts),
        "errors": sum(part["errors"] for part in parts),
        "n": sum(part["n"] for part in parts),
        "fork_forgotten": stats.closed_by_reason.get("fork", 0),
        "in_use_at_end": stats.in_use,
        "size": stats.size,
    }


def _mp_child(pool: millpond.Pool, send: Any) -> None:
    send.send(_child_report(pool))


def _forked_child(pool: millpond.Pool, fd: int) -> None:
    """Runs in an os.fork() child: must never return into pytest's frames."""
    code = 1
    try:
        report = _child_report(pool)
        os.write(fd, json.dumps(report).encode())
        code = 0
    finally:
        os._exit(code)


def run_child(pool: millpond.Pool, how: str) -> dict[str, Any]:
    if how == "multiprocessing":
        ctx = multiprocessing.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_mp_child, args=(pool, send))
        proc.start()
        send.close()
        try:
            if not recv.poll(30):
                raise AssertionError("the child sent nothing within 30 s")
            report: dict[str, Any] = recv.recv()
        finally:
            proc.join(10)
        assert proc.exitcode == 0
        return report
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _forked_child(pool, w)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["multiprocessing", "os.fork"])
def test_fork(fresh_pg: DisposablePostgres, how: str, figures: Figures) -> None:
    """A child forked while the parent's threads query through the pool queries through the
    inherited pool too: both get correct answers, the child never touches a connection of the
    parent (disjoint backend pids), and the parent's connections survive the child's exit."""
    min_size, max_size = 2, 4
    app = unique_app("fork")
    counter = PgSessions(fresh_pg, app)
    pool = millpond.Pool(
        fresh_pg.url,
        connect_kwargs=pg_kwargs(app),
        min_size=min_size,
        max_size=max_size,
        timeout=5.0,
        open=False,
        name=f"fork-{how}",
    )
    stop = threading.Event()
    parent: list[dict[str, Any]] = []

    def parent_worker(salt: int) -> None:
        while not stop.is_set():
            parent.append(query_many(pool, 10, salt))

    with PeakMonitor(counter) as monitor, pool:
        pool.open(wait=True, timeout=10)
        with ThreadPoolExecutor(2) as ex:
            workers = [ex.submit(parent_worker, s) for s in (10, 20)]
            time.sleep(0.2)
            connects_before = pool.stats().connects
            child = run_child(pool, how)
            time.sleep(0.2)  # the parent goes on after the child is gone
            stop.set()
            for f in workers:
                f.result(timeout=10)
        stats = pool.stats()
        assert_whole(stats)
        monitor.settle()
    assert counter.wait_for(0) == 0
    counter.close()

    parent_pids = {p for part in parent for p in part["pids"]}
    figures.record(
        f"f/psycopg/{how}",
        parent_queries=sum(part["n"] for part in parent),
        parent_errors=sum(part["errors"] for part in parent),
        parent_wrong=sum(part["wrong"] for part in parent),
        child_queries=child["n"],
        child_errors=child["errors"],
        child_wrong=child["wrong"],
        child_forgot_inherited=child["fork_forgotten"],
        shared_backends=len(parent_pids & set(child["pids"])),
        parent_reconnects=stats.connects - connects_before,
        parent_discarded=stats.closed_by_reason,
        peak_sessions=monitor.peak,
        cap=max_size,
    )
    assert child["errors"] == child["wrong"] == 0, child
    assert child["in_use_at_end"] == 0
    assert not parent_pids & set(child["pids"]), "the child used a connection of the parent"
    assert all(part["errors"] == part["wrong"] == 0 for part in parent)
    # the child's exit (and its close()) left the parent's sessions alone: nothing of the
    # parent's broke, so nothing was discarded or reopened
    assert stats.connects == connects_before, stats
    assert not stats.closed_by_reason, stats.closed_by_reason
    # each process's pool stays within its own cap; the server sees both at once
    assert monitor.peak <= 2 * max_size


# == (h) hardening on a real network: a silent server while returning or closing ==========


@pytest.mark.postgres
def test_blackhole_during_the_return_rollback_pg(
    fresh_pg: DisposablePostgres, pg_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network goes silent while a borrower still has a transaction open: the ROLLBACK
    on return never gets an answer. The return is bounded (RESET_TIMEOUT, shortened here)
    and the connection closed, not returned; before, putconn blocked forever."""
    monkeypatch.setattr("millpond._sync.pool.RESET_TIMEOUT", 1.0)
    app = unique_app("blackhole-return")
    pool = millpond.Pool(
        fresh_pg.url_at(pg_proxy.port),
        connect_kwargs=pg_kwargs(app, PG_CONNECT_TIMEOUT),
        min_size=0,
        max_size=1,
        timeout=5,
        name="blackhole-return",
    )
    ex = ThreadPoolExecutor(1)
    try:
        conn = pool.getconn()
        scalar(conn, "SELECT 1")  # psycopg opens a transaction: the return rolls back
        pg_proxy.blackhole()
        started = time.monotonic()
        future = ex.submit(pool.putconn, conn)
        future.result(timeout=1.0 + 5 + MARGIN)  # raises TimeoutError if it hangs
        assert time.monotonic() - started < 1.0 + MARGIN + 1.0
        s = pool.stats()
        assert s.size == 0 and s.in_use == 0, s
        assert s.reset_failures == 1, s
        assert conn.closed
    finally:
        pg_proxy.pass_through()
        ex.shutdown(wait=True)
        pool.close(timeout=1)


@pytest.mark.mysql
def test_blackhole_during_the_return_rollback_pymysql(
    mysql_url: str, mysql_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("millpond._sync.pool.RESET_TIMEOUT", 1.0)
    params = mysql_params(mysql_url)
    url = f"mysql://{params['user']}@127.0.0.1:{mysql_proxy.port}/{params['database']}"
    pool = millpond.Pool(url, min_size=0, max_size=1, timeout=5, name="blackhole-return-my")
    ex = ThreadPoolExecutor(1)
    try:
        conn = pool.getconn()
        conn.begin()
        scalar(conn, "SELECT 1")
        mysql_proxy.blackhole()
        started = time.monotonic()
        ex.submit(pool.putconn, conn).result(timeout=1.0 + 5 + MARGIN)
        assert time.monotonic() - started < 1.0 + MARGIN + 1.0
        s = pool.stats()
        assert s.size == 0 and s.in_use == 0 and s.reset_failures == 1, s
    finally:
        mysql_proxy.pass_through()
        ex.shutdown(wait=True)
        pool.close(timeout=1)


@pytest.mark.postgres
def test_close_returns_within_its_timeout_while_connects_hang(
    fresh_pg: DisposablePostgres, pg_proxy: FaultProxy
) -> None:
    """Connects swallowed by a blackhole (longer than close's timeout): close(timeout=1)
    returns in about a second, one budget in all, not one per connect thread."""
    app = unique_app("blackhole-close")
    pool = millpond.Pool(
        fresh_pg.url_at(pg_proxy.port),
        connect_kwargs=pg_kwargs(app, connect_timeout=10),
        min_size=0,
        max_size=4,
        timeout=5,
        name="blackhole-close",
    )
    pg_proxy.blackhole()
    try:
        for _ in range(3):
            threading.Thread(target=_try_getconn, args=(pool,), daemon=True).start()
        assert wait_until(lambda: pool.stats().opening == 3, 5) is not None
        time.sleep(0.2)  # the connect threads are inside the driver's connect
        started = time.monotonic()
        pool.close(timeout=1)
        assert time.monotonic() - started < 1 + MARGIN + 1.0
    finally:
        pg_proxy.pass_through()
        pool.close(timeout=0)


def _try_getconn(pool: millpond.Pool) -> None:
    with contextlib.suppress(millpond.PoolError):
        pool.getconn(timeout=0.5)
