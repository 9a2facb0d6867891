"""The aiosqlite adapter on a SQLite file (no server)."""

from __future__ import annotations

import asyncio
import time
import weakref
from pathlib import Path

import pytest

from millpond.drivers.async_base import AsyncAdapter
from millpond.drivers.async_url import resolve_async
from millpond.drivers.base import TxStatus

from .conftest import LONG_QUERY, OpenFn, run, scalar, wait_dead

pytestmark = pytest.mark.asyncio


async def test_connect_ping_and_idle_status(sqlite_adapter: AsyncAdapter, opened: OpenFn) -> None:
    conn = await opened(sqlite_adapter)
    assert type(conn).__module__.startswith("aiosqlite")
    await sqlite_adapter.ping(conn)
    assert sqlite_adapter.status(conn) is TxStatus.IDLE
    assert sqlite_adapter.get_autocommit(conn) is False
    assert not sqlite_adapter.is_closed(conn)
    assert weakref.ref(conn)() is conn


async def test_status_follows_the_transaction(sqlite_adapter: AsyncAdapter, opened: OpenFn) -> None:
    conn = await opened(sqlite_adapter)
    await run(conn, "CREATE TABLE t (x int)")
    token = await sqlite_adapter.begin(conn)
    assert sqlite_adapter.status(conn) is TxStatus.INTRANS  # an explicit BEGIN, even for reads
    await run(conn, "INSERT INTO t VALUES (1)")
    await sqlite_adapter.commit(conn, token)
    assert sqlite_adapter.status(conn) is TxStatus.IDLE

    await run(conn, "INSERT INTO t VALUES (2)")  # sqlite3 begins implicitly before DML
    assert sqlite_adapter.status(conn) is TxStatus.INTRANS
    await sqlite_adapter.rollback(conn)
    assert sqlite_adapter.status(conn) is TxStatus.IDLE

    token = await sqlite_adapter.begin(conn)
    with pytest.raises(Exception, match="no such table"):
        await run(conn, "INSERT INTO nope VALUES (1)")
    assert sqlite_adapter.status(conn) is TxStatus.INTRANS  # SQLite keeps the transaction
    await sqlite_adapter.rollback_transaction(conn, token)
    assert sqlite_adapter.status(conn) is TxStatus.IDLE
    assert await scalar(conn, "SELECT count(*) FROM t") == 1

    await sqlite_adapter.close(conn)
    assert sqlite_adapter.status(conn) is TxStatus.BROKEN
    assert sqlite_adapter.is_closed(conn)


async def test_ping_on_a_closed_connection_is_a_disconnect(
    sqlite_adapter: AsyncAdapter, opened: OpenFn
) -> None:
    conn = await opened(sqlite_adapter)
    await sqlite_adapter.close(conn)
    with pytest.raises(ValueError, match=r"closed|no active connection") as info:
        await sqlite_adapter.ping(conn)
    assert sqlite_adapter.is_disconnect(info.value, conn)
    assert sqlite_adapter.is_disconnect(info.value)


async def test_sql_error_is_not_a_disconnect(sqlite_adapter: AsyncAdapter, opened: OpenFn) -> None:
    conn = await opened(sqlite_adapter)
    with pytest.raises(Exception, match="syntax error") as info:
        await run(conn, "SELEC 1")
    assert not sqlite_adapter.is_disconnect(info.value, conn)
    assert not sqlite_adapter.is_disconnect(info.value)


async def test_full_reset_drops_temp_objects_and_attachments(
    sqlite_adapter: AsyncAdapter, opened: OpenFn, tmp_path: Path
) -> None:
    assert not sqlite_adapter.supports_full_reset  # PRAGMAs survive: not pristine
    conn = await opened(sqlite_adapter)
    for sql in (
        "CREATE TABLE t (x int)",
        "CREATE TEMP TABLE mp_tmp (x int)",
        "CREATE TEMP VIEW mp_view AS SELECT x FROM mp_tmp",
        "CREATE TEMP TRIGGER mp_trg AFTER INSERT ON t BEGIN INSERT INTO mp_tmp VALUES (1); END",
        f"ATTACH DATABASE '{tmp_path / 'other.sqlite'}' AS other",
    ):
        await run(conn, sql)
    assert "other" in [r[1] for r in await run(conn, "PRAGMA database_list")]
    await run(conn, "INSERT INTO t VALUES (1)")  # an open transaction
    assert sqlite_adapter.status(conn) is TxStatus.INTRANS

    await sqlite_adapter.full_reset(conn)

    assert sqlite_adapter.status(conn) is TxStatus.IDLE
    assert await scalar(conn, "SELECT count(*) FROM t") == 0  # rolled back
    assert await run(conn, "SELECT name FROM temp.sqlite_master") == []
    assert "other" not in [r[1] for r in await run(conn, "PRAGMA database_list")]


async def test_terminate_interrupts_and_never_waits(
    sqlite_adapter: AsyncAdapter, opened: OpenFn
) -> None:
    conn = await opened(sqlite_adapter)
    task = asyncio.ensure_future(run(conn, LONG_QUERY["sqlite"]))
    await asyncio.sleep(0.05)  # let the worker thread start the statement
    started = time.perf_counter()
    sqlite_adapter.terminate(conn)
    assert time.perf_counter() - started < 1.0
    assert sqlite_adapter.is_closed(conn)
    assert sqlite_adapter.status(conn) is TxStatus.BROKEN
    # The pool closes what it terminated. aiosqlite's own close() would wait forever for its
    # stopped thread; the adapter's returns once the thread has closed the handle, so that
    # the thread never reports to a loop that is gone.
    await asyncio.wait_for(sqlite_adapter.close(conn), 5)
    assert conn._connection is None
    exc = await wait_dead(task)
    assert "interrupted" in str(exc)


async def test_begin_commit_and_rollback_transaction(
    sqlite_adapter: AsyncAdapter, opened: OpenFn
) -> None:
    conn = await opened(sqlite_adapter)
    other = await opened(sqlite_adapter)
    await run(conn, "CREATE TABLE t (x int)")
    token = await sqlite_adapter.begin(conn)
    await run(conn, "INSERT INTO t VALUES (1)")
    assert await scalar(other, "SELECT count(*) FROM t") == 0
    await sqlite_adapter.commit(conn, token)
    assert await scalar(other, "SELECT count(*) FROM t") == 1

    token = await sqlite_adapter.begin(conn)
    await run(conn, "INSERT INTO t VALUES (2)")
    await sqlite_adapter.rollback_transaction(conn, token)
    assert await scalar(other, "SELECT count(*) FROM t") == 1


async def test_autocommit_mode(sqlite_adapter: AsyncAdapter, opened: OpenFn) -> None:
    conn = await opened(sqlite_adapter)
    await run(conn, "CREATE TABLE t (x int)")
    await sqlite_adapter.set_autocommit(conn, True)  # from the loop's thread: no thread error
    assert sqlite_adapter.get_autocommit(conn) is True
    await run(conn, "INSERT INTO t VALUES (1)")
    assert sqlite_adapter.status(conn) is TxStatus.IDLE  # committed by itself

    token = await sqlite_adapter.begin(conn)
    assert sqlite_adapter.status(conn) is TxStatus.INTRANS
    # switching autocommit on would make sqlite3 commit the open transaction: refused
    await sqlite_adapter.set_autocommit(conn, True)  # already on: nothing to do
    await sqlite_adapter.rollback_transaction(conn, token)
    await sqlite_adapter.set_autocommit(conn, False)
    await run(conn, "INSERT INTO t VALUES (2)")
    with pytest.raises(Exception, match="inside a transaction"):
        await sqlite_adapter.set_autocommit(conn, True)
    assert sqlite_adapter.get_autocommit(conn) is False
    await sqlite_adapter.rollback(conn)
    assert await scalar(conn, "SELECT count(*) FROM t") == 1


async def test_shared_cache_memory_uri_is_one_database(opened: OpenFn) -> None:
    pytest.importorskip("aiosqlite")
    adapter = resolve_async("sqlite+aiosqlite:///file:mp_async_shared?mode=memory&cache=shared")
    first = await opened(adapter)
    second = await opened(adapter)
    await run(first, "CREATE TABLE shared (x int)")
    await run(first, "INSERT INTO shared VALUES (5)")
    await first.commit()
    assert await scalar(second, "SELECT x FROM shared") == 5
