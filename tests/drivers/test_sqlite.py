"""SqliteAdapter on real SQLite files."""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from millpond.drivers.base import TxStatus
from millpond.drivers.sqlite import DEFAULT_BUSY_TIMEOUT, SqliteAdapter
from millpond.drivers.url import resolve
from millpond.errors import ConfigError

from .conftest import run, scalar

Opened = Callable[[Any], Any]


@pytest.fixture
def adapter(sqlite_path: Path) -> SqliteAdapter:
    result = resolve(f"sqlite:///{sqlite_path}")
    assert isinstance(result, SqliteAdapter)
    return result


@pytest.fixture
def conn(adapter: SqliteAdapter, opened: Opened) -> Any:
    c = opened(adapter)
    c.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    return c


def count_rows(path: Path) -> int:
    with sqlite3.connect(path) as other:
        return int(other.execute("SELECT count(*) FROM t").fetchone()[0])


def test_connection_is_weakrefable_and_crosses_threads(conn: Any) -> None:
    ref = weakref.ref(conn)
    assert ref() is conn
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(scalar(conn, "SELECT 41 + 1")))
    worker.start()
    worker.join()
    assert results == [42]  # a same-thread-only connection would have raised there


def test_busy_timeout_defaults_and_can_be_set(
    adapter: SqliteAdapter, opened: Opened, sqlite_path: Path
) -> None:
    conn = opened(adapter)
    assert scalar(conn, "PRAGMA busy_timeout") == int(DEFAULT_BUSY_TIMEOUT * 1000)
    quick = opened(resolve(f"sqlite:///{sqlite_path}?timeout=0.25"))
    assert scalar(quick, "PRAGMA busy_timeout") == 250


def test_check_same_thread_is_refused(sqlite_path: Path) -> None:
    with pytest.raises(ConfigError, match="check_same_thread"):
        resolve(f"sqlite:///{sqlite_path}", {"check_same_thread": True})


def test_user_factory_is_kept_and_made_weakrefable(sqlite_path: Path, opened: Opened) -> None:
    class Slotted(sqlite3.Connection):
        __slots__ = ()  # no __weakref__ of its own

    with pytest.raises(TypeError):
        weakref.ref(Slotted(":memory:"))
    conn = opened(resolve(f"sqlite:///{sqlite_path}", {"factory": Slotted}))
    assert isinstance(conn, Slotted)
    assert weakref.ref(conn)() is conn


def test_ping(adapter: SqliteAdapter, conn: Any) -> None:
    adapter.ping(conn)
    assert adapter.status(conn) is TxStatus.IDLE
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError) as info:
        adapter.ping(conn)
    assert adapter.is_disconnect(info.value, conn)
    assert adapter.is_disconnect(info.value)  # "closed database" needs no connection to tell


def test_syntax_error_is_not_a_disconnect(adapter: SqliteAdapter, conn: Any) -> None:
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("SELEC 1")
    assert not adapter.is_disconnect(info.value, conn)
    assert not adapter.is_disconnect(info.value)


def test_unreadable_file_is_a_disconnect(adapter: SqliteAdapter, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-db"
    bogus.write_bytes(b"this is not an SQLite database file, whatever its name says" * 20)
    conn = sqlite3.connect(bogus)
    try:
        with pytest.raises(sqlite3.DatabaseError) as info:
            conn.execute("SELECT * FROM sqlite_master")
    finally:
        conn.close()
    assert adapter.is_disconnect(info.value)  # SQLITE_NOTADB


def test_status(adapter: SqliteAdapter, conn: Any, sqlite_path: Path) -> None:
    assert adapter.status(conn) is TxStatus.IDLE
    conn.execute("INSERT INTO t VALUES (1)")  # sqlite3 begins implicitly before DML
    assert adapter.status(conn) is TxStatus.INTRANS
    conn.commit()
    assert adapter.status(conn) is TxStatus.IDLE
    assert count_rows(sqlite_path) == 1
    conn.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("INSERT INTO missing VALUES (1)")
    # SQLite has no failed-transaction state: the transaction stays open and usable
    assert adapter.status(conn) is TxStatus.INTRANS
    adapter.rollback(conn)
    assert adapter.status(conn) is TxStatus.IDLE
    assert count_rows(sqlite_path) == 1
    conn.close()
    assert adapter.status(conn) is TxStatus.BROKEN
    assert adapter.is_closed(conn)


def test_autocommit_round_trip(adapter: SqliteAdapter, conn: Any, sqlite_path: Path) -> None:
    assert adapter.get_autocommit(conn) is False
    adapter.set_autocommit(conn, True)
    assert adapter.get_autocommit(conn) is True
    conn.execute("INSERT INTO t VALUES (1)")
    assert adapter.status(conn) is TxStatus.IDLE
    assert count_rows(sqlite_path) == 1  # committed by itself
    adapter.set_autocommit(conn, False)
    assert adapter.get_autocommit(conn) is False
    conn.execute("INSERT INTO t VALUES (2)")
    assert adapter.status(conn) is TxStatus.INTRANS


def test_autocommit_switch_inside_a_transaction_commits_nothing(
    adapter: SqliteAdapter, conn: Any, sqlite_path: Path
) -> None:
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.ProgrammingError, match="inside a transaction"):
        adapter.set_autocommit(conn, True)
    adapter.rollback(conn)
    assert count_rows(sqlite_path) == 0


def test_isolation_level_survives_an_autocommit_round_trip(
    sqlite_path: Path, opened: Opened
) -> None:
    adapter = resolve(f"sqlite:///{sqlite_path}?isolation_level=IMMEDIATE")
    conn = opened(adapter)
    adapter.set_autocommit(conn, True)
    adapter.set_autocommit(conn, False)
    assert conn.isolation_level == "IMMEDIATE"


def test_begin_in_autocommit_mode(adapter: SqliteAdapter, conn: Any, sqlite_path: Path) -> None:
    adapter.set_autocommit(conn, True)
    adapter.begin(conn)
    assert adapter.status(conn) is TxStatus.INTRANS
    conn.execute("INSERT INTO t VALUES (1)")
    assert count_rows(sqlite_path) == 0
    adapter.commit(conn)
    assert adapter.status(conn) is TxStatus.IDLE
    assert count_rows(sqlite_path) == 1
    adapter.begin(conn)
    conn.execute("INSERT INTO t VALUES (2)")
    adapter.rollback(conn)
    assert count_rows(sqlite_path) == 1


def test_begin_uses_the_connections_locking_mode(sqlite_path: Path, opened: Opened) -> None:
    adapter = resolve(f"sqlite:///{sqlite_path}?isolation_level=IMMEDIATE&timeout=0")
    first, second = opened(adapter), opened(adapter)
    adapter.begin(first)  # BEGIN IMMEDIATE takes the write lock at once...
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        adapter.begin(second)  # ...so a second writer is refused before it reads anything
    adapter.rollback(first)


def test_full_reset(adapter: SqliteAdapter, conn: Any, tmp_path: Path, sqlite_path: Path) -> None:
    assert adapter.supports_full_reset is False  # PRAGMAs and Python registrations survive
    conn.execute("CREATE TEMP TABLE scratch (y INTEGER)")
    conn.execute("CREATE TEMP VIEW v AS SELECT * FROM scratch")
    conn.execute("CREATE TEMP TRIGGER trg AFTER INSERT ON main.t BEGIN SELECT 1; END")
    conn.execute("ATTACH DATABASE ? AS other", (str(tmp_path / "other.sqlite"),))
    conn.execute("INSERT INTO t VALUES (1)")
    adapter.full_reset(conn)
    assert adapter.status(conn) is TxStatus.IDLE
    assert count_rows(sqlite_path) == 0
    assert run(conn, "SELECT name FROM temp.sqlite_master") == []
    assert "other" not in [row[1] for row in run(conn, "PRAGMA database_list")]
    adapter.full_reset(conn)  # idempotent on a clean session


def test_memory_databases_are_per_connection(opened: Opened) -> None:
    adapter = resolve("sqlite://")
    first, second = opened(adapter), opened(adapter)
    first.execute("CREATE TABLE only_here (x)")
    assert run(second, "SELECT name FROM sqlite_master") == []


def test_shared_cache_memory_database(opened: Opened) -> None:
    adapter = resolve("sqlite:///file:millpond_shared_mem?mode=memory&cache=shared")
    first, second = opened(adapter), opened(adapter)
    first.execute("CREATE TABLE shared (x)")
    assert run(second, "SELECT name FROM sqlite_master") == [("shared",)]
