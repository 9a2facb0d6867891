"""Fixtures for the driver adapter tests: one adapter per driver on the real servers, a
tracker that closes every connection a test opened, and helpers to run SQL and to kill a
session from a second, independent connection."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from millpond.drivers.base import SyncAdapter
from millpond.drivers.url import resolve


def run(conn: Any, sql: str, params: Any = None) -> list[Any]:
    """Execute ``sql`` on a raw connection; the rows if it returned any."""
    cur = conn.cursor()
    try:
        cur.execute(sql, params) if params is not None else cur.execute(sql)
        return list(cur.fetchall()) if cur.description is not None else []
    finally:
        cur.close()


def scalar(conn: Any, sql: str, params: Any = None) -> Any:
    return run(conn, sql, params)[0][0]


@pytest.fixture
def opened() -> Iterator[Callable[[SyncAdapter], Any]]:
    """``opened(adapter)`` connects and closes the connection after the test, whatever state
    the test left it in."""
    conns: list[tuple[SyncAdapter, Any]] = []

    def connect(adapter: SyncAdapter) -> Any:
        conn = adapter.connect()
        conns.append((adapter, conn))
        return conn

    yield connect
    for adapter, conn in conns:
        # a killed connection may refuse even to close; there is nothing else to do with it
        with contextlib.suppress(Exception):
            adapter.close(conn)


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(params=["psycopg", "psycopg2"])
def pg_adapter(request: pytest.FixtureRequest, pg_url: str) -> SyncAdapter:
    pytest.importorskip(request.param)
    return resolve(pg_url.replace("postgresql://", f"postgresql+{request.param}://", 1))


@pytest.fixture
def pg_admin(pg_url: str) -> Iterator[Any]:
    """An autocommit psycopg connection outside any adapter, to look at and kill sessions."""
    psycopg = pytest.importorskip("psycopg")
    conn = psycopg.connect(pg_url, autocommit=True)
    yield conn
    conn.close()


def pg_pid(conn: Any) -> int:
    info = getattr(conn, "info", None)
    return int(info.backend_pid) if info is not None else int(conn.get_backend_pid())


def pg_kill(admin: Any, conn: Any) -> None:
    # the timeout argument (PostgreSQL 14+) waits until the backend has really exited
    terminated = admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pg_pid(conn),)).fetchone()
    assert terminated == (True,)


# -- MariaDB ----------------------------------------------------------------------------------


#: the sync MySQL drivers, by URL scheme suffix -> the library each imports
MYSQL_DRIVERS = {"pymysql": "pymysql", "mysqlconnector": "mysql.connector", "mysqldb": "MySQLdb"}


@pytest.fixture(params=list(MYSQL_DRIVERS))
def mysql_adapter(request: pytest.FixtureRequest, mysql_url: str) -> SyncAdapter:
    pytest.importorskip(MYSQL_DRIVERS[request.param])
    return resolve(mysql_url.replace("mysql://", f"mysql+{request.param}://", 1))


@pytest.fixture
def mysql_admin(mysql_url: str) -> Iterator[Any]:
    pymysql = pytest.importorskip("pymysql")
    url = urlsplit(mysql_url)
    conn = pymysql.connect(
        host=url.hostname,
        port=url.port or 3306,
        user=url.username,
        password=url.password or "",
        database=url.path.lstrip("/"),
        autocommit=True,
    )
    yield conn
    conn.close()


def mysql_id(conn: Any) -> int:
    thread_id = getattr(conn, "thread_id", None)
    return int(thread_id()) if callable(thread_id) else int(conn.connection_id)


def mysql_kill(admin: Any, conn: Any) -> None:
    victim = mysql_id(conn)
    run(admin, f"KILL {victim:d}")
    # KILL returns before the victim's thread has gone; wait until it has, so the next
    # command on the victim cannot race the server's teardown
    deadline = time.monotonic() + 5
    while run(admin, "SELECT 1 FROM information_schema.processlist WHERE id = %s", (victim,)):
        assert time.monotonic() < deadline, f"session {victim} survived KILL"
        time.sleep(0.005)
