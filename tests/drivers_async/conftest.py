"""Fixtures for the asyncio driver adapter tests: one adapter per driver on the real servers
(``pg_url`` / ``mysql_url`` come from ``tests/conftest.py``: they skip when a server is
unreachable and fail under ``CI=true``), a tracker that closes every connection a test
opened, and helpers to run SQL on any of the four drivers' connections and to kill a session
from an independent, synchronous admin connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from millpond.drivers.async_base import AsyncAdapter
from millpond.drivers.async_url import resolve_async

OpenFn = Callable[[AsyncAdapter], Awaitable[Any]]

#: a statement that runs until interrupted, per backend
LONG_QUERY = {
    "postgres": "SELECT pg_sleep(30)",
    "mysql": "SELECT SLEEP(30)",
    "sqlite": (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"
    ),
}


def with_scheme(url: str, scheme: str) -> str:
    """``url`` (from the shared fixtures, whatever driver it names) under ``scheme``."""
    return f"{scheme}://{url.partition('://')[2]}"


async def run(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    """Execute ``sql`` on a raw connection of any of the four drivers; its rows, if any."""
    module = type(conn).__module__
    if module.startswith("asyncpg"):
        return [tuple(r) for r in await conn.fetch(sql)]
    if module.startswith("psycopg"):
        cur = await conn.execute(sql)
        return [tuple(r) for r in await cur.fetchall()] if cur.description is not None else []
    if module.startswith("aiomysql"):
        async with conn.cursor() as cur:
            await cur.execute(sql)
            return [tuple(r) for r in await cur.fetchall()] if cur.description else []
    if module.startswith("aiosqlite"):
        return [tuple(r) for r in await conn.execute_fetchall(sql)]
    raise AssertionError(f"no runner for {type(conn)!r}")


async def scalar(conn: Any, sql: str) -> Any:
    return (await run(conn, sql))[0][0]


@pytest_asyncio.fixture
async def opened() -> AsyncIterator[OpenFn]:
    """``await opened(adapter)`` connects; the connection is closed after the test whatever
    state the test left it in."""
    conns: list[tuple[AsyncAdapter, Any]] = []

    async def connect(adapter: AsyncAdapter) -> Any:
        conn = await adapter.connect()
        conns.append((adapter, conn))
        return conn

    yield connect
    for adapter, conn in conns:
        try:
            await asyncio.wait_for(adapter.close(conn), 5)
        except Exception:  # a killed connection may refuse even to close politely
            adapter.terminate(conn)


# -- PostgreSQL --------------------------------------------------------------------------------

PG_DRIVERS = ["asyncpg", "psycopg_async"]
_PG_LIBRARY = {"asyncpg": "asyncpg", "psycopg_async": "psycopg"}


def pg_adapter_for(driver: str, pg_url: str) -> AsyncAdapter:
    pytest.importorskip(_PG_LIBRARY[driver])
    return resolve_async(with_scheme(pg_url, f"postgresql+{driver}"))


@pytest.fixture(params=PG_DRIVERS)
def pg_adapter(request: pytest.FixtureRequest, pg_url: str) -> AsyncAdapter:
    return pg_adapter_for(request.param, pg_url)


@pytest.fixture
def asyncpg_adapter(pg_url: str) -> AsyncAdapter:
    return pg_adapter_for("asyncpg", pg_url)


@pytest.fixture
def psycopg_async_adapter(pg_url: str) -> AsyncAdapter:
    return pg_adapter_for("psycopg_async", pg_url)


@pytest.fixture
def pg_admin(pg_url: str) -> Iterator[Any]:
    """An autocommit psycopg (sync) connection outside any adapter, to look at and kill
    sessions without depending on the driver under test."""
    psycopg = pytest.importorskip("psycopg")
    conn = psycopg.connect(pg_url, autocommit=True)
    conn.execute("SET lock_timeout = '10s'")  # a leftover lock fails a test, never hangs it
    yield conn
    conn.close()


async def pg_kill(admin: Any, conn: Any) -> None:
    pid = await scalar(conn, "SELECT pg_backend_pid()")
    # the timeout argument (PostgreSQL 14+) waits until the backend has really exited
    row = admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()
    assert row == (True,)


# -- MariaDB -----------------------------------------------------------------------------------


@pytest.fixture
def mysql_adapter(mysql_url: str) -> AsyncAdapter:
    pytest.importorskip("aiomysql")
    # autocommit=True: the one mode where aiomysql's status flags tell IDLE from INTRANS
    return resolve_async(with_scheme(mysql_url, "mysql+aiomysql"), {"autocommit": True})


@pytest.fixture
def mysql_admin(mysql_url: str) -> Iterator[Any]:
    """An autocommit PyMySQL connection (aiomysql depends on PyMySQL) to kill sessions."""
    pymysql = pytest.importorskip("pymysql")
    from urllib.parse import urlsplit

    parts = urlsplit(mysql_url)
    conn = pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/") or "test",
        autocommit=True,
        init_command="SET SESSION lock_wait_timeout = 10",  # fail, never hang, on a lock
    )
    yield conn
    conn.close()


async def mysql_kill(admin: Any, conn: Any) -> None:
    thread_id = await scalar(conn, "SELECT CONNECTION_ID()")
    with admin.cursor() as cur:
        cur.execute(f"KILL {int(thread_id)}")


# -- SQLite ------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_adapter(tmp_path: Path) -> AsyncAdapter:
    pytest.importorskip("aiosqlite")
    return resolve_async(f"sqlite+aiosqlite:///{tmp_path / 'async.sqlite'}")


# -- shared ------------------------------------------------------------------------------------


async def wait_dead(task: asyncio.Future[Any], limit: float = 5.0) -> BaseException:
    """The exception ``task`` (a statement cut off under it) ends with, within ``limit``
    seconds: a bound on a hang, not a timing assertion."""
    await asyncio.wait({task}, timeout=limit)
    assert task.done(), f"the interrupted statement was still running after {limit}s"
    exc = task.exception()
    assert exc is not None, "the interrupted statement completed normally"
    return exc
