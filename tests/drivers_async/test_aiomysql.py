"""The aiomysql adapter against the real MariaDB server."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from millpond.drivers.async_base import AsyncAdapter
from millpond.drivers.async_url import resolve_async
from millpond.drivers.base import TxStatus

from .conftest import LONG_QUERY, OpenFn, mysql_kill, run, scalar, wait_dead, with_scheme

pytestmark = [pytest.mark.asyncio, pytest.mark.mysql]


@pytest.fixture
def table(mysql_admin: Any) -> Iterator[str]:
    """A scratch table. Request it before ``opened``: fixtures are torn down in reverse, so
    the test's connections (and their locks) are gone before the DROP."""
    name = "mp_async_" + uuid.uuid4().hex[:10]
    with mysql_admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (x int) ENGINE=InnoDB")
    yield name
    with mysql_admin.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


def rows(admin: Any, table: str) -> list[int]:
    with admin.cursor() as cur:
        cur.execute(f"SELECT x FROM {table} ORDER BY x")
        return [r[0] for r in cur.fetchall()]


def wait_running(admin: Any, thread_id: int, limit: float = 5.0) -> None:
    """Wait until the server runs a statement for ``thread_id`` (a bound, not a timing test)."""
    deadline = time.monotonic() + limit
    while True:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM information_schema.processlist "
                "WHERE id = %s AND command = 'Query'",
                (thread_id,),
            )
            if cur.fetchone() == (1,):
                return
        assert time.monotonic() < deadline, f"thread {thread_id} never started its statement"
        time.sleep(0.005)


def adapter_with(mysql_url: str, **connect_kwargs: Any) -> AsyncAdapter:
    return resolve_async(with_scheme(mysql_url, "mysql+aiomysql"), connect_kwargs)


async def test_connect_ping_and_idle_status(mysql_adapter: AsyncAdapter, opened: OpenFn) -> None:
    conn = await opened(mysql_adapter)
    assert type(conn).__module__.startswith("aiomysql")
    await mysql_adapter.ping(conn)
    assert mysql_adapter.status(conn) is TxStatus.IDLE
    assert mysql_adapter.get_autocommit(conn) is True
    assert not mysql_adapter.is_closed(conn)
    assert weakref.ref(conn)() is conn


async def test_ping_after_kill_is_a_disconnect(
    mysql_adapter: AsyncAdapter, opened: OpenFn, mysql_admin: Any
) -> None:
    conn = await opened(mysql_adapter)
    await mysql_kill(mysql_admin, conn)
    with pytest.raises(Exception) as info:  # noqa: PT011 - OperationalError 2013 or 1927
        await mysql_adapter.ping(conn)
    assert mysql_adapter.is_disconnect(info.value, conn)
    assert mysql_adapter.is_disconnect(info.value)
    assert mysql_adapter.status(conn) is TxStatus.BROKEN


async def test_status_follows_the_transaction(
    table: str, mysql_adapter: AsyncAdapter, opened: OpenFn
) -> None:
    conn = await opened(mysql_adapter)
    token = await mysql_adapter.begin(conn)
    assert mysql_adapter.status(conn) is TxStatus.INTRANS
    await run(conn, f"INSERT INTO {table} VALUES (1)")
    await mysql_adapter.commit(conn, token)
    assert mysql_adapter.status(conn) is TxStatus.IDLE

    await mysql_adapter.begin(conn)
    await run(conn, f"INSERT INTO {table} VALUES (2)")
    await mysql_adapter.rollback(conn)
    assert mysql_adapter.status(conn) is TxStatus.IDLE

    token = await mysql_adapter.begin(conn)
    await run(conn, f"INSERT INTO {table} VALUES (3)")
    with pytest.raises(Exception, match="doesn't exist"):
        await run(conn, "SELECT * FROM mp_no_such_table")
    # MySQL keeps the transaction (and the row) after a failed statement: still INTRANS
    assert mysql_adapter.status(conn) is TxStatus.INTRANS
    await mysql_adapter.rollback_transaction(conn, token)
    assert mysql_adapter.status(conn) is TxStatus.IDLE

    await mysql_adapter.close(conn)
    assert mysql_adapter.status(conn) is TxStatus.BROKEN
    assert mysql_adapter.is_closed(conn)


async def test_outside_autocommit_an_idle_flag_means_unknown(
    table: str, mysql_url: str, opened: OpenFn, mysql_admin: Any
) -> None:
    adapter = adapter_with(mysql_url, autocommit=False)
    conn = await opened(adapter)
    assert adapter.get_autocommit(conn) is False
    await run(conn, f"SELECT * FROM {table}")
    # the SELECT opened a transaction that aiomysql's status flags do not show
    assert not conn.get_transaction_status()
    with mysql_admin.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = %s",
            (await scalar(conn, "SELECT CONNECTION_ID()"),),
        )
        assert cur.fetchone() == (1,)
    assert adapter.status(conn) is TxStatus.UNKNOWN
    await adapter.commit(conn)  # an OK packet: now the flags are current, but still not IDLE
    assert adapter.status(conn) is TxStatus.UNKNOWN


async def test_sql_error_is_not_a_disconnect(mysql_adapter: AsyncAdapter, opened: OpenFn) -> None:
    conn = await opened(mysql_adapter)
    with pytest.raises(Exception, match="SQL syntax") as info:
        await run(conn, "SELEC 1")
    assert not mysql_adapter.is_disconnect(info.value, conn)
    assert not mysql_adapter.is_disconnect(info.value)
    await mysql_adapter.ping(conn)


@pytest.mark.parametrize("autocommit", [True, False])
async def test_full_reset_restores_a_pristine_session(
    mysql_url: str, opened: OpenFn, autocommit: bool
) -> None:
    adapter = adapter_with(
        mysql_url, autocommit=autocommit, charset="latin1", init_command="SET @mp_init = 7"
    )
    assert adapter.supports_full_reset
    conn = await opened(adapter)
    default_limit = await scalar(conn, "SELECT @@SESSION.sql_select_limit")
    for sql in (
        "SET @mp_var = 1, @mp_init = 8",
        "SET SESSION sql_select_limit = 5",
        "CREATE TEMPORARY TABLE mp_tmp (x int)",
        "SET NAMES utf8mb4",
        "SELECT GET_LOCK('mp_async_lock', 0)",
    ):
        await run(conn, sql)
    await run(conn, "BEGIN")  # an open transaction on top of it

    await adapter.full_reset(conn)

    checks = {
        "SELECT @mp_var": None,
        "SELECT @mp_init": 7,  # init_command ran again
        "SELECT @@SESSION.sql_select_limit": default_limit,
        "SELECT @@character_set_client": "latin1",  # the connection's own character set
        "SELECT IS_USED_LOCK('mp_async_lock') IS NULL": 1,
    }
    for sql, expected in checks.items():
        assert await scalar(conn, sql) == expected, sql
    with pytest.raises(Exception, match="doesn't exist"):
        await run(conn, "SELECT * FROM mp_tmp")
    assert adapter.get_autocommit(conn) is autocommit
    assert await scalar(conn, "SELECT @@autocommit") == int(autocommit)
    if autocommit:
        assert adapter.status(conn) is TxStatus.IDLE


async def test_terminate_never_waits_for_the_server(
    mysql_adapter: AsyncAdapter, opened: OpenFn, mysql_admin: Any
) -> None:
    conn = await opened(mysql_adapter)
    thread_id = await scalar(conn, "SELECT CONNECTION_ID()")
    task = asyncio.ensure_future(run(conn, LONG_QUERY["mysql"]))
    try:
        await asyncio.sleep(0)  # let the statement go out
        await asyncio.to_thread(wait_running, mysql_admin, thread_id)
        started = time.perf_counter()
        mysql_adapter.terminate(conn)
        assert time.perf_counter() - started < 1.0
        assert mysql_adapter.is_closed(conn)
        assert mysql_adapter.status(conn) is TxStatus.BROKEN
        assert mysql_adapter.is_disconnect(await wait_dead(task), conn)
        await mysql_adapter.close(conn)  # a quiet no-op now
    finally:
        task.cancel()
        # SLEEP() does not notice its client is gone; the thread may be gone already
        with mysql_admin.cursor() as cur, contextlib.suppress(Exception):
            cur.execute(f"KILL {int(thread_id)}")


async def test_begin_commit_and_rollback_transaction(
    table: str, mysql_adapter: AsyncAdapter, opened: OpenFn, mysql_admin: Any
) -> None:
    conn = await opened(mysql_adapter)
    token = await mysql_adapter.begin(conn)
    await run(conn, f"INSERT INTO {table} VALUES (1)")
    assert rows(mysql_admin, table) == []
    await mysql_adapter.commit(conn, token)
    assert rows(mysql_admin, table) == [1]

    token = await mysql_adapter.begin(conn)
    await run(conn, f"INSERT INTO {table} VALUES (2)")
    await mysql_adapter.rollback_transaction(conn, token)
    assert rows(mysql_admin, table) == [1]


async def test_begin_outside_autocommit_does_not_commit_pending_work(
    table: str, mysql_url: str, opened: OpenFn, mysql_admin: Any
) -> None:
    adapter = adapter_with(mysql_url, autocommit=False)
    conn = await opened(adapter)
    await run(conn, f"INSERT INTO {table} VALUES (1)")  # implicitly in a transaction
    await adapter.begin(conn)  # an explicit BEGIN here would commit the row
    await adapter.rollback_transaction(conn)
    assert rows(mysql_admin, table) == []


async def test_set_autocommit(mysql_adapter: AsyncAdapter, opened: OpenFn) -> None:
    conn = await opened(mysql_adapter)
    await mysql_adapter.set_autocommit(conn, False)
    assert mysql_adapter.get_autocommit(conn) is False
    assert await scalar(conn, "SELECT @@autocommit") == 0
    await mysql_adapter.set_autocommit(conn, True)
    assert mysql_adapter.get_autocommit(conn) is True
    assert mysql_adapter.status(conn) is TxStatus.IDLE


@pytest.mark.parametrize("autocommit", [True, False])
async def test_a_result_left_unread_does_not_reach_the_next_borrower(
    mysql_url: str, autocommit: bool
) -> None:
    import warnings

    import aiomysql

    import millpond

    kept = []  # the borrower keeps its cursor: nothing frees the result behind the pool
    url = with_scheme(mysql_url, "mysql+aiomysql")
    pool = millpond.AsyncPool(url, connect_kwargs={"autocommit": autocommit}, max_size=1)
    async with pool:
        async with pool.connection() as conn:
            cur = await conn.cursor(aiomysql.SSCursor)
            await cur.execute("SELECT * FROM information_schema.COLLATIONS")
            await cur.fetchone()
            kept.append(cur)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # aiomysql would warn the next borrower
            for _ in range(3):
                async with pool.connection() as conn:
                    assert await scalar(conn, "SELECT 7") == 7
        stats = pool.stats()
    assert stats.connects == 1, stats
