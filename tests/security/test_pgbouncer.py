"""server_pooler="pgbouncer-transaction": the option, what it configures, and a real pgbouncer
in transaction mode under load (16 threads x 1,000 transactions; the same with asyncpg tasks).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

import millpond
from millpond.drivers.async_url import resolve_async
from millpond.drivers.url import resolve

from .conftest import PgBouncer

WORKERS = 16
TRANSACTIONS = 1_000
MODE = "pgbouncer-transaction"


# -- the option ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["pgbouncer", "pgbouncer-session", "", 1])
def test_unknown_server_pooler_is_a_config_error(value: Any) -> None:
    with pytest.raises(millpond.ConfigError, match="server_pooler"):
        millpond.Pool("sqlite://", server_pooler=value, open=False)
    with pytest.raises(millpond.ConfigError, match="server_pooler"):
        millpond.AsyncPool("sqlite+aiosqlite://", server_pooler=value)


def _params(adapter: Any) -> dict[str, Any]:
    """The keyword arguments an adapter's connect closure passes to the driver."""
    connect = adapter._connect
    cells = dict(zip(connect.__code__.co_freevars, connect.__closure__ or (), strict=True))
    return dict(cells["params"].cell_contents)


def test_statement_caches_are_configured_for_pgbouncer() -> None:
    url = "postgresql+psycopg://app@127.0.0.1:6432/test"
    assert _params(resolve(url, server_pooler=MODE))["prepare_threshold"] is None
    assert "prepare_threshold" not in _params(resolve(url))
    # what the user says explicitly wins (pgbouncer >= 1.21 can track prepared statements)
    assert (
        _params(resolve(url + "?prepare_threshold=5", server_pooler=MODE))["prepare_threshold"] == 5
    )
    apg = "postgresql+asyncpg://app@127.0.0.1:6432/test"
    assert _params(resolve_async(apg, server_pooler=MODE))["statement_cache_size"] == 0
    assert "statement_cache_size" not in _params(resolve_async(apg))
    pg3 = "postgresql+psycopg://app@127.0.0.1:6432/test"
    assert _params(resolve_async(pg3, server_pooler=MODE))["prepare_threshold"] is None
    # psycopg2 prepares nothing by itself: nothing to switch off
    pg2 = "postgresql+psycopg2://app@127.0.0.1:6432/test"
    assert _params(resolve(pg2, server_pooler=MODE)) == _params(resolve(pg2))


def test_configure_warns_and_full_reset_is_a_rollback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="millpond")
    pool = millpond.Pool(
        "sqlite://",
        server_pooler=MODE,
        configure=lambda conn: None,
        reset="full",
        name="bouncy",
        open=False,
    )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "configure=" in warnings[0].getMessage()
    assert "'bouncy'" in warnings[0].getMessage()
    assert pool._reset == "rollback"
    caplog.clear()
    apool = millpond.AsyncPool("sqlite+aiosqlite://", server_pooler=MODE, configure=print)
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1
    assert apool._reset == "rollback"  # the default stays the default
    caplog.clear()
    millpond.Pool("sqlite://", server_pooler=MODE, open=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- a real pgbouncer ------------------------------------------------------------------------


def _scheme(bouncer: PgBouncer, scheme: str) -> str:
    return scheme + "://" + bouncer.url.partition("://")[2]


@pytest.mark.postgres
@pytest.mark.slow
def test_psycopg_threads_through_pgbouncer(pgbouncer: PgBouncer) -> None:
    """Every worker runs the same five statements again and again: without the pgbouncer mode
    psycopg would prepare them server-side by their fifth run, on whichever server connection
    pgbouncer picked, and fail on the next one ("prepared statement _pg3_0 does not exist")."""
    errors: list[BaseException] = []
    done = [0] * WORKERS
    url = _scheme(pgbouncer, "postgresql+psycopg")
    with millpond.Pool(
        url, server_pooler=MODE, min_size=4, max_size=WORKERS, reset="full", timeout=30
    ) as pool:
        pool.open(wait=True, timeout=10)

        def work(i: int) -> None:
            try:
                for n in range(TRANSACTIONS):
                    with pool.transaction() as conn:
                        row = conn.execute("SELECT %s::int + 1, txid_current()", (n,)).fetchone()
                        assert row is not None and row[0] == n + 1
                        conn.execute("SELECT pg_backend_pid()").fetchone()
                    done[i] += 1
            except BaseException as exc:
                errors.append(exc)

        started = time.monotonic()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - started
        stats = pool.stats()
    assert errors == [], errors[:3]
    assert sum(done) == WORKERS * TRANSACTIONS
    assert stats.reset_failures == 0
    assert elapsed < 60, f"{elapsed:.1f}s"


@pytest.mark.postgres
@pytest.mark.slow
def test_asyncpg_tasks_through_pgbouncer(pgbouncer: PgBouncer) -> None:
    """The same volume with asyncpg tasks: without statement_cache_size=0 the statements
    asyncpg prepares and caches per connection vanish when pgbouncer moves it to another
    server connection."""
    url = _scheme(pgbouncer, "postgresql+asyncpg")

    async def main() -> tuple[list[BaseException], int, int, float]:
        errors: list[BaseException] = []
        done = 0
        async with millpond.AsyncPool(
            url, server_pooler=MODE, min_size=4, max_size=WORKERS, reset="full", timeout=30
        ) as pool:
            await pool.open(wait=True, timeout=10)

            async def work() -> None:
                nonlocal done
                try:
                    for n in range(TRANSACTIONS):
                        async with pool.transaction() as conn:
                            value = await conn.fetchval("SELECT $1::int + 1", n)
                            assert value == n + 1
                            await conn.fetchval("SELECT txid_current()")
                        done += 1
                except BaseException as exc:
                    errors.append(exc)

            started = time.monotonic()
            await asyncio.gather(*(work() for _ in range(WORKERS)))
            elapsed = time.monotonic() - started
            failures = pool.stats().reset_failures
        return errors, done, failures, elapsed

    errors, done, failures, elapsed = asyncio.run(main())
    assert errors == [], errors[:3]
    assert done == WORKERS * TRANSACTIONS
    assert failures == 0
    assert elapsed < 60, f"{elapsed:.1f}s"


@pytest.mark.postgres
def test_without_the_mode_psycopg_breaks_behind_pgbouncer(pgbouncer: PgBouncer) -> None:
    """The control: the failure the mode prevents is real. psycopg's prepared statements
    (prepare_threshold=0: prepare at once) do not follow a client that pgbouncer moves."""
    import psycopg

    url = _scheme(pgbouncer, "postgresql+psycopg")
    failures = 0
    with millpond.Pool(
        url, connect_kwargs={"prepare_threshold": 0}, min_size=2, max_size=2
    ) as pool:
        pool.open(wait=True, timeout=10)
        holder = pool.getconn()
        try:
            # two clients in turn: each borrowed transaction may land on either server session
            holder.execute("SELECT 1").fetchone()
            holder.commit()
            for n in range(50):
                with pool.connection() as conn:
                    try:
                        conn.execute("SELECT %s::int", (n,)).fetchone()
                    except psycopg.errors.Error:
                        failures += 1
                holder.execute("SELECT %s::int * 2", (n,)).fetchone()
                holder.commit()
        except psycopg.errors.Error:
            failures += 1
        finally:
            pool.putconn(holder, discard=True)
    if failures == 0:
        pytest.skip("pgbouncer happened to keep each client on one server session")
