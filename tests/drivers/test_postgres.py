"""PsycopgAdapter and Psycopg2Adapter against the real PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from millpond.drivers.base import SyncAdapter, TxStatus

from .conftest import pg_kill, pg_pid, run, scalar

pytestmark = pytest.mark.postgres

Opened = Callable[[SyncAdapter], Any]


@pytest.fixture
def conn(pg_adapter: SyncAdapter, opened: Opened) -> Any:
    return opened(pg_adapter)


@pytest.fixture
def table(pg_admin: Any) -> Iterator[str]:
    """A scratch table. Ask for it before ``conn``, so that the connection is closed (and its
    locks released) before the table is dropped."""
    name = "mp_" + uuid.uuid4().hex[:12]
    pg_admin.execute(f"CREATE TABLE {name} (x int)")
    yield name
    pg_admin.execute("SET lock_timeout = '5s'")  # a leftover lock fails the test, not hangs it
    pg_admin.execute(f"DROP TABLE {name}")


def count_rows(admin: Any, table: str) -> int:
    return int(admin.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def server_xact(admin: Any, conn: Any) -> str:
    """The session's state as the server sees it (pg_stat_activity.state)."""
    row = admin.execute(
        "SELECT state FROM pg_stat_activity WHERE pid = %s", (pg_pid(conn),)
    ).fetchone()
    return str(row[0])


@pytest.mark.parametrize("autocommit", [False, True])
def test_ping_is_one_clean_round_trip(
    pg_adapter: SyncAdapter, conn: Any, pg_admin: Any, autocommit: bool
) -> None:
    pg_adapter.set_autocommit(conn, autocommit)
    pg_adapter.ping(conn)
    assert pg_adapter.status(conn) is TxStatus.IDLE
    assert server_xact(pg_admin, conn) == "idle"  # not "idle in transaction"
    assert pg_adapter.get_autocommit(conn) is autocommit


def test_ping_a_killed_connection(pg_adapter: SyncAdapter, conn: Any, pg_admin: Any) -> None:
    assert not pg_adapter.is_closed(conn)
    pg_kill(pg_admin, conn)
    with pytest.raises(pg_adapter.module.OperationalError) as info:
        pg_adapter.ping(conn)
    assert pg_adapter.is_disconnect(info.value, conn)
    assert pg_adapter.is_disconnect(info.value)  # the error alone says so too
    assert pg_adapter.is_closed(conn)
    assert pg_adapter.status(conn) is TxStatus.BROKEN
    pg_adapter.close(conn)


def test_errors_that_are_not_disconnects(pg_adapter: SyncAdapter, conn: Any) -> None:
    module = pg_adapter.module
    with pytest.raises(module.ProgrammingError) as syntax:
        run(conn, "SELEC 1")
    assert not pg_adapter.is_disconnect(syntax.value, conn)
    assert not pg_adapter.is_disconnect(syntax.value)
    pg_adapter.rollback(conn)
    # an OperationalError that leaves the session healthy: a cancelled statement
    run(conn, "SET statement_timeout = 1")
    with pytest.raises(module.OperationalError) as cancelled:
        run(conn, "SELECT pg_sleep(1)")
    assert not pg_adapter.is_disconnect(cancelled.value, conn)
    assert not pg_adapter.is_disconnect(cancelled.value)
    pg_adapter.rollback(conn)
    pg_adapter.ping(conn)


def test_status(pg_adapter: SyncAdapter, conn: Any, pg_admin: Any) -> None:
    assert pg_adapter.status(conn) is TxStatus.IDLE
    run(conn, "SELECT 1")
    assert pg_adapter.status(conn) is TxStatus.INTRANS
    assert server_xact(pg_admin, conn) == "idle in transaction"
    conn.commit()
    assert pg_adapter.status(conn) is TxStatus.IDLE
    run(conn, "SELECT 1")
    pg_adapter.rollback(conn)
    assert pg_adapter.status(conn) is TxStatus.IDLE
    with pytest.raises(pg_adapter.module.DatabaseError):
        run(conn, "SELECT 1/0")
    assert pg_adapter.status(conn) is TxStatus.INERROR
    pg_adapter.rollback(conn)
    assert pg_adapter.status(conn) is TxStatus.IDLE
    pg_adapter.close(conn)
    assert pg_adapter.status(conn) is TxStatus.BROKEN
    assert pg_adapter.is_closed(conn)
    assert pg_adapter.is_disconnect(ValueError("whatever was raised"), conn)


def test_full_reset_restores_a_pristine_session(
    pg_adapter: SyncAdapter, conn: Any, pg_admin: Any
) -> None:
    assert pg_adapter.supports_full_reset
    default_work_mem = scalar(conn, "SHOW work_mem")
    pg_adapter.rollback(conn)
    run(conn, "SET work_mem = '77MB'")
    run(conn, "SET millpond.custom = 'x'")
    run(conn, "CREATE TEMP TABLE scratch (y int)")
    run(conn, "PREPARE stmt AS SELECT 1")
    run(conn, "SELECT pg_advisory_lock(4242)")
    run(conn, "LISTEN millpond_channel")
    conn.commit()
    run(conn, "SET ROLE pg_monitor")  # and leave a transaction open on top
    pid = pg_pid(conn)

    pg_adapter.full_reset(conn)

    assert pg_adapter.status(conn) is TxStatus.IDLE
    assert pg_pid(conn) == pid  # same session, not a reconnect
    row = run(
        conn,
        "SELECT current_setting('work_mem'), current_setting('millpond.custom', true),"
        " to_regclass('pg_temp.scratch'), (SELECT count(*) FROM pg_prepared_statements),"
        " (SELECT count(*) FROM pg_listening_channels()), current_user = session_user",
    )[0]
    assert row == (default_work_mem, "", None, 0, 0, True)
    locks = pg_admin.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", (pid,)
    ).fetchone()
    assert locks == (0,)


@pytest.mark.parametrize("autocommit", [False, True])
def test_full_reset_keeps_autocommit(pg_adapter: SyncAdapter, conn: Any, autocommit: bool) -> None:
    pg_adapter.set_autocommit(conn, autocommit)
    run(conn, "SET work_mem = '77MB'")
    pg_adapter.full_reset(conn)
    assert pg_adapter.get_autocommit(conn) is autocommit
    assert pg_adapter.status(conn) is TxStatus.IDLE


def test_psycopg_prepared_statements_survive_full_reset(pg_url: str, opened: Opened) -> None:
    # psycopg 3 prepares statements server-side on its own; after DISCARD ALL its cache
    # must not point at statements that no longer exist
    pytest.importorskip("psycopg")
    from millpond.drivers.url import resolve

    adapter = resolve(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    conn = opened(adapter)
    conn.execute("SELECT %s::int", (1,), prepare=True)
    assert scalar(conn, "SELECT count(*) FROM pg_prepared_statements") == 1
    adapter.full_reset(conn)
    assert conn.execute("SELECT %s::int", (2,), prepare=True).fetchone() == (2,)


def test_autocommit_round_trip(
    pg_adapter: SyncAdapter, table: str, conn: Any, pg_admin: Any
) -> None:
    assert pg_adapter.get_autocommit(conn) is False
    pg_adapter.set_autocommit(conn, True)
    assert pg_adapter.get_autocommit(conn) is True
    run(conn, f"INSERT INTO {table} VALUES (1)")
    assert pg_adapter.status(conn) is TxStatus.IDLE
    assert count_rows(pg_admin, table) == 1
    pg_adapter.set_autocommit(conn, False)
    assert pg_adapter.get_autocommit(conn) is False
    run(conn, f"INSERT INTO {table} VALUES (2)")
    assert pg_adapter.status(conn) is TxStatus.INTRANS
    assert count_rows(pg_admin, table) == 1


def test_begin_commit_and_rollback_in_autocommit_mode(
    pg_adapter: SyncAdapter, table: str, conn: Any, pg_admin: Any
) -> None:
    pg_adapter.set_autocommit(conn, True)
    pg_adapter.begin(conn)
    assert pg_adapter.status(conn) is TxStatus.INTRANS
    run(conn, f"INSERT INTO {table} VALUES (1)")
    assert count_rows(pg_admin, table) == 0
    pg_adapter.commit(conn)  # psycopg2's own commit() would do nothing here
    assert pg_adapter.status(conn) is TxStatus.IDLE
    assert count_rows(pg_admin, table) == 1
    pg_adapter.begin(conn)
    run(conn, f"INSERT INTO {table} VALUES (2)")
    pg_adapter.rollback(conn)
    assert pg_adapter.status(conn) is TxStatus.IDLE
    assert count_rows(pg_admin, table) == 1
    assert pg_adapter.get_autocommit(conn) is True


def test_begin_outside_autocommit_leaves_it_to_the_driver(
    pg_adapter: SyncAdapter, conn: Any
) -> None:
    pg_adapter.begin(conn)
    assert pg_adapter.status(conn) is TxStatus.IDLE  # the driver begins at the first statement
    run(conn, "SELECT 1")
    assert pg_adapter.status(conn) is TxStatus.INTRANS


def test_repeated_calls_outlive_psycopgs_auto_prepare(pg_adapter: SyncAdapter, conn: Any) -> None:
    # psycopg 3 prepares a statement server-side from its fifth run; a prepared DISCARD ALL
    # would deallocate itself and the sixth call would fail
    for _ in range(8):
        pg_adapter.full_reset(conn)
        pg_adapter.ping(conn)
    pg_adapter.set_autocommit(conn, True)
    for _ in range(8):
        pg_adapter.begin(conn)
        pg_adapter.rollback(conn)
        pg_adapter.full_reset(conn)
    assert pg_adapter.status(conn) is TxStatus.IDLE
