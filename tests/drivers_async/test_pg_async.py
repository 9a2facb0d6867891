"""asyncpg and psycopg 3 (async) adapters against the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from millpond.drivers.async_base import AsyncAdapter
from millpond.drivers.base import TxStatus
from millpond.errors import ConfigError

from .conftest import LONG_QUERY, OpenFn, pg_kill, run, scalar, wait_dead

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres]


def wait_active(admin: Any, pid: int, limit: float = 5.0) -> None:
    """Wait until backend ``pid`` is running a statement (a bound, not a timing assertion)."""
    deadline = time.monotonic() + limit
    sql = "SELECT state FROM pg_stat_activity WHERE pid = %s"
    while admin.execute(sql, (pid,)).fetchone() != ("active",):
        assert time.monotonic() < deadline, f"backend {pid} never started its statement"
        time.sleep(0.005)


@pytest.fixture
def table(pg_admin: Any) -> Iterator[str]:
    """A scratch table. Request it before ``opened``: fixtures are torn down in reverse, so
    the test's connections (and their locks) are gone before the DROP."""
    name = "mp_async_" + uuid.uuid4().hex[:10]
    pg_admin.execute(f"CREATE TABLE {name} (x int)")
    yield name
    pg_admin.execute(f"DROP TABLE IF EXISTS {name}")


def rows(admin: Any, table: str) -> list[int]:
    return [r[0] for r in admin.execute(f"SELECT x FROM {table} ORDER BY x").fetchall()]


async def test_connect_ping_and_idle_status(pg_adapter: AsyncAdapter, opened: OpenFn) -> None:
    conn = await opened(pg_adapter)
    expected = "asyncpg" if pg_adapter.name == "asyncpg" else "psycopg"
    assert type(conn).__module__.partition(".")[0] == expected  # the driver's own object
    await pg_adapter.ping(conn)
    # the ping opened no transaction, even where the driver begins implicitly (psycopg)
    assert pg_adapter.status(conn) is TxStatus.IDLE
    assert not pg_adapter.is_closed(conn)
    assert weakref.ref(conn)() is conn  # the pool watches lent connections weakly


async def test_ping_after_the_backend_was_killed_is_a_disconnect(
    pg_adapter: AsyncAdapter, opened: OpenFn, pg_admin: Any
) -> None:
    conn = await opened(pg_adapter)
    await pg_kill(pg_admin, conn)
    with pytest.raises(Exception) as info:  # noqa: PT011 - each driver has its own class
        await pg_adapter.ping(conn)
    assert pg_adapter.is_disconnect(info.value, conn)
    assert pg_adapter.is_disconnect(info.value)  # judged from the error alone, too
    assert pg_adapter.is_closed(conn)
    assert pg_adapter.status(conn) is TxStatus.BROKEN


async def test_status_follows_the_transaction(pg_adapter: AsyncAdapter, opened: OpenFn) -> None:
    conn = await opened(pg_adapter)
    token = await pg_adapter.begin(conn)
    await run(conn, "SELECT 1")
    assert pg_adapter.status(conn) is TxStatus.INTRANS
    await pg_adapter.commit(conn, token)
    assert pg_adapter.status(conn) is TxStatus.IDLE

    await pg_adapter.begin(conn)
    await run(conn, "SELECT 1")
    assert pg_adapter.status(conn) is TxStatus.INTRANS
    await pg_adapter.rollback(conn)
    assert pg_adapter.status(conn) is TxStatus.IDLE

    token = await pg_adapter.begin(conn)
    await run(conn, "SELECT 1")
    with pytest.raises(Exception, match="division by zero"):
        await run(conn, "SELECT 1/0")
    # asyncpg reads the ReadyForQuery status but does not expose "failed" apart from
    # "in transaction"; both mean "roll back", which is what the pool needs to know
    failed = TxStatus.INTRANS if pg_adapter.name == "asyncpg" else TxStatus.INERROR
    assert pg_adapter.status(conn) is failed
    await pg_adapter.rollback_transaction(conn, token)
    assert pg_adapter.status(conn) is TxStatus.IDLE
    assert await scalar(conn, "SELECT 2") == 2

    await pg_adapter.close(conn)
    assert pg_adapter.status(conn) is TxStatus.BROKEN
    assert pg_adapter.is_closed(conn)


async def test_sql_error_is_not_a_disconnect(pg_adapter: AsyncAdapter, opened: OpenFn) -> None:
    conn = await opened(pg_adapter)
    with pytest.raises(Exception, match="syntax error") as info:
        await run(conn, "SELEC 1")
    assert not pg_adapter.is_disconnect(info.value, conn)
    assert not pg_adapter.is_disconnect(info.value)
    assert pg_adapter.status(conn) is not TxStatus.BROKEN
    await pg_adapter.rollback(conn)
    await pg_adapter.ping(conn)


async def test_full_reset_restores_a_pristine_session(
    pg_adapter: AsyncAdapter, opened: OpenFn
) -> None:
    assert pg_adapter.supports_full_reset
    conn = await opened(pg_adapter)
    autocommit = pg_adapter.get_autocommit(conn)
    default_work_mem = await scalar(conn, "SHOW work_mem")
    user = await scalar(conn, "SELECT current_user")
    for sql in (
        "SET work_mem = '7MB'",
        "SET mp.tenant = '42'",
        "CREATE TEMP TABLE mp_tmp (x int)",
        "PREPARE mp_stmt AS SELECT 1",
        "SELECT pg_advisory_lock(4242)",
        "LISTEN mp_channel",
        "SET ROLE pg_monitor",
    ):
        await run(conn, sql)
    await pg_adapter.commit(conn)  # psycopg began a transaction implicitly: keep the mess
    await pg_adapter.begin(conn)
    await run(conn, "SELECT 1")  # and leave a transaction open on top of it

    await pg_adapter.full_reset(conn)

    assert pg_adapter.status(conn) is TxStatus.IDLE
    checks = {
        "SHOW work_mem": default_work_mem,
        "SELECT current_user": user,
        "SELECT coalesce(current_setting('mp.tenant', true), '')": "",
        "SELECT to_regclass('pg_temp.mp_tmp') IS NULL": True,
        "SELECT count(*) FROM pg_prepared_statements WHERE name = 'mp_stmt'": 0,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()": 0,
        "SELECT count(*) FROM pg_listening_channels()": 0,
    }
    for sql, expected in checks.items():
        assert await scalar(conn, sql) == expected, sql
    await pg_adapter.rollback(conn)
    assert pg_adapter.get_autocommit(conn) == autocommit


async def test_full_reset_and_ping_run_back_to_back(
    pg_adapter: AsyncAdapter, opened: OpenFn
) -> None:
    conn = await opened(pg_adapter)
    # psycopg prepares a statement on its sixth run (prepare_threshold=5): a prepared
    # DISCARD ALL would deallocate itself and fail by name on the run after
    for _ in range(8):
        await pg_adapter.ping(conn)
        await pg_adapter.full_reset(conn)
        assert pg_adapter.status(conn) is TxStatus.IDLE


async def test_terminate_never_waits_for_the_server(
    pg_adapter: AsyncAdapter, opened: OpenFn, pg_admin: Any
) -> None:
    conn = await opened(pg_adapter)
    pid = await scalar(conn, "SELECT pg_backend_pid()")
    await pg_adapter.rollback(conn)
    task = asyncio.ensure_future(run(conn, LONG_QUERY["postgres"]))
    try:
        await asyncio.sleep(0)  # let the statement go out
        await asyncio.to_thread(wait_active, pg_admin, pid)
        started = time.perf_counter()
        pg_adapter.terminate(conn)  # synchronous: it cannot wait for the 30 s statement
        elapsed = time.perf_counter() - started
        assert elapsed < 1.0
        assert pg_adapter.is_closed(conn)
        assert pg_adapter.status(conn) is TxStatus.BROKEN
        # the borrower's statement fails at once instead of running to its end
        assert pg_adapter.is_disconnect(await wait_dead(task), conn)
        await pg_adapter.close(conn)  # closing a terminated connection is a quiet no-op
    finally:
        task.cancel()
        # the server notices a vanished client only when it next writes to it
        pg_admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_begin_commit_and_rollback_transaction(
    table: str, pg_adapter: AsyncAdapter, opened: OpenFn, pg_admin: Any
) -> None:
    conn = await opened(pg_adapter)
    token = await pg_adapter.begin(conn)
    await run(conn, f"INSERT INTO {table} VALUES (1)")
    assert rows(pg_admin, table) == []  # not visible before the commit
    await pg_adapter.commit(conn, token)
    assert rows(pg_admin, table) == [1]

    token = await pg_adapter.begin(conn)
    await run(conn, f"INSERT INTO {table} VALUES (2)")
    await pg_adapter.rollback_transaction(conn, token)
    assert pg_adapter.status(conn) is TxStatus.IDLE

    # a transaction begin() opened and the pool's plain rollback() ended (the borrower
    # left without finishing it) must not haunt the next begin()
    await pg_adapter.begin(conn)
    await run(conn, f"INSERT INTO {table} VALUES (3)")
    await pg_adapter.rollback(conn)
    token = await pg_adapter.begin(conn)
    await run(conn, f"INSERT INTO {table} VALUES (4)")
    await pg_adapter.commit(conn, token)
    assert rows(pg_admin, table) == [1, 4]
    assert pg_adapter.status(conn) is TxStatus.IDLE


# -- psycopg only ------------------------------------------------------------------------------


async def test_psycopg_autocommit_mode_begins_explicitly(
    table: str, psycopg_async_adapter: AsyncAdapter, opened: OpenFn, pg_admin: Any
) -> None:
    conn = await opened(psycopg_async_adapter)
    assert psycopg_async_adapter.get_autocommit(conn) is False
    await psycopg_async_adapter.set_autocommit(conn, True)
    assert psycopg_async_adapter.get_autocommit(conn) is True
    await psycopg_async_adapter.ping(conn)
    assert psycopg_async_adapter.get_autocommit(conn) is True

    token = await psycopg_async_adapter.begin(conn)
    assert psycopg_async_adapter.status(conn) is TxStatus.INTRANS  # BEGIN went out at once
    await run(conn, f"INSERT INTO {table} VALUES (1)")
    assert rows(pg_admin, table) == []
    # psycopg's commit() ends the BEGIN even though the connection is in autocommit mode
    await psycopg_async_adapter.commit(conn, token)
    assert rows(pg_admin, table) == [1]

    await psycopg_async_adapter.full_reset(conn)
    assert psycopg_async_adapter.get_autocommit(conn) is True  # kept across the reset


# -- asyncpg only ------------------------------------------------------------------------------


async def test_asyncpg_is_always_autocommit(asyncpg_adapter: AsyncAdapter, opened: OpenFn) -> None:
    conn = await opened(asyncpg_adapter)
    assert asyncpg_adapter.get_autocommit(conn) is True
    await asyncpg_adapter.set_autocommit(conn, True)  # nothing to do
    with pytest.raises(ConfigError, match="no autocommit=False"):
        await asyncpg_adapter.set_autocommit(conn, False)


async def test_asyncpg_full_reset_keeps_the_statement_cache_usable(
    asyncpg_adapter: AsyncAdapter, opened: OpenFn
) -> None:
    conn = await opened(asyncpg_adapter)
    assert await conn.fetchval("SELECT $1::int + 1", 1) == 2  # prepared and cached
    heard: list[str] = []
    await conn.add_listener("mp_channel", lambda *args: heard.append(args[2]))

    await asyncpg_adapter.full_reset(conn)

    # DISCARD ALL deallocated the cached statement: asyncpg must not reuse its name
    assert await conn.fetchval("SELECT $1::int + 1", 2) == 3
    # and asyncpg forgot the old callback, so a new listener really LISTENs again
    await conn.add_listener("mp_channel", lambda *args: heard.append("new"))
    assert await scalar(conn, "SELECT count(*) FROM pg_listening_channels()") == 1
    await conn.execute("NOTIFY mp_channel, 'hello'")
    for _ in range(100):
        if heard:
            break
        await asyncio.sleep(0.01)
    assert heard == ["new"]


async def test_asyncpg_cancelled_statement_makes_status_unknown(
    asyncpg_adapter: AsyncAdapter, opened: OpenFn, pg_admin: Any
) -> None:
    conn = await opened(asyncpg_adapter)
    pid = conn.get_server_pid()
    task = asyncio.ensure_future(conn.execute("BEGIN; SELECT pg_sleep(30)"))
    await asyncio.sleep(0)
    await asyncio.to_thread(wait_active, pg_admin, pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # asyncpg has sent a cancel request and not yet read the answer: its "not in a
    # transaction" is from before the BEGIN, so the adapter must not report IDLE
    assert not conn.is_in_transaction()
    assert asyncpg_adapter.status(conn) is TxStatus.UNKNOWN
    await asyncpg_adapter.rollback(conn)
    assert asyncpg_adapter.status(conn) is TxStatus.IDLE
    assert await conn.fetchval("SELECT 1") == 1
    assert not conn.is_in_transaction()


async def test_asyncpg_rollback_transaction_after_a_failed_commit(
    asyncpg_adapter: AsyncAdapter, opened: OpenFn, pg_admin: Any
) -> None:
    name = "mp_async_" + uuid.uuid4().hex[:10]
    pg_admin.execute(f"CREATE TABLE {name} (x int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    try:
        conn = await opened(asyncpg_adapter)
        token = await asyncpg_adapter.begin(conn)
        await conn.execute(f"INSERT INTO {name} VALUES (1), (1)")
        with pytest.raises(Exception, match="duplicate key"):
            await asyncpg_adapter.commit(conn, token)
        # what pool.transaction() does next: it must not fail on the ended Transaction
        await asyncpg_adapter.rollback_transaction(conn, token)
        assert asyncpg_adapter.status(conn) is TxStatus.IDLE
        token = await asyncpg_adapter.begin(conn)
        await conn.execute(f"INSERT INTO {name} VALUES (2)")
        await asyncpg_adapter.commit(conn, token)
        assert rows(pg_admin, name) == [2]
    finally:
        pg_admin.execute(f"DROP TABLE IF EXISTS {name}")


async def test_asyncpg_query_timeout_is_not_a_disconnect(
    asyncpg_adapter: AsyncAdapter, opened: OpenFn
) -> None:
    conn = await opened(asyncpg_adapter)
    with pytest.raises(TimeoutError) as info:
        await conn.execute("SELECT pg_sleep(5)", timeout=0.05)
    assert not asyncpg_adapter.is_disconnect(info.value, conn)
    assert not asyncpg_adapter.is_disconnect(info.value)
    await asyncpg_adapter.ping(conn)  # asyncpg cancelled the statement; the session is fine
