"""What one ``millpond bench`` request does on a connection, for every driver it can drive.

A workload is a statement template; ``{id}`` marks its one parameter (a row id), bound in the
driver's own placeholder style. Synchronous drivers are driven through DB-API 2.0; the asyncio
drivers each have their own call shapes, so each gets a small :class:`AsyncSQL`.

The same module creates and fills the benchmark table and reads the server's connection limit,
both on the one connection the command opens before any worker starts.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ROWS",
    "TABLE",
    "WORKLOADS",
    "AsyncSQL",
    "AsyncWork",
    "ServerInfo",
    "SyncWork",
    "Workload",
    "async_sql_for",
    "database_of",
    "make_async_work",
    "make_sync_work",
    "prepare_async",
    "prepare_sync",
    "server_info_async",
    "server_info_sync",
]

TABLE = "millpond_bench"
ROWS = 1000

# one portable definition: INTEGER PRIMARY KEY is the row id on SQLite, a plain key elsewhere
_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} "
    "(id INTEGER PRIMARY KEY, name VARCHAR(40) NOT NULL, value INTEGER NOT NULL)"
)


@dataclass(frozen=True)
class Workload:
    name: str
    sql: str  # "{id}" marks the one parameter
    table: bool = False  # needs the generated table
    commit: bool = False  # a write: commit after it, inside one short transaction
    help: str = ""


WORKLOADS: dict[str, Workload] = {
    "select1": Workload("select1", "SELECT 1", help="SELECT 1, the cost of a round trip"),
    "read": Workload(
        "read",
        f"SELECT id, name, value FROM {TABLE} WHERE id = {{id}}",
        table=True,
        help=f"one row of {TABLE} by primary key",
    ),
    "write": Workload(
        "write",
        f"UPDATE {TABLE} SET value = value + 1 WHERE id = {{id}}",
        table=True,
        commit=True,
        help=f"update one row of {TABLE} and commit",
    ),
}

# driver name (the adapter's ``name``) -> the database it talks to
_DATABASES = {
    "psycopg": "postgresql",
    "psycopg2": "postgresql",
    "asyncpg": "postgresql",
    "psycopg-async": "postgresql",
    "pymysql": "mysql",
    "mysql-connector": "mysql",
    "aiomysql": "mysql",
    "sqlite3": "sqlite",
    "aiosqlite": "sqlite",
}


def database_of(driver: str) -> str:
    """``postgresql``, ``mysql``, ``sqlite`` or ``other`` (a driver millpond has no adapter for)."""
    return _DATABASES.get(driver, "other")


def _pick(rng: random.Random) -> int:
    return rng.randint(1, ROWS)


# -- synchronous drivers (DB-API 2.0) ------------------------------------------------------------

SyncWork = Callable[[Any, random.Random], None]

# DB-API paramstyle -> (placeholder, how to pass one value)
_PARAMSTYLES: dict[str, tuple[str, Callable[[int], Any]]] = {
    "qmark": ("?", lambda v: (v,)),
    "format": ("%s", lambda v: (v,)),
    "pyformat": ("%s", lambda v: (v,)),
    "numeric": (":1", lambda v: (v,)),
    "named": (":id", lambda v: {"id": v}),
}


def make_sync_work(workload: Workload, sql: str | None, paramstyle: str | None) -> SyncWork:
    """One request on a DB-API connection: execute, fetch any rows, commit if it writes (a
    custom ``--sql`` always commits: it may write)."""
    commit = workload.commit or sql is not None
    query = sql if sql is not None else workload.sql
    bind: Callable[[int], Any] | None = None
    inline = False
    if sql is None and "{id}" in query:
        style = _PARAMSTYLES.get(paramstyle or "")
        if style is None:
            # a driver with an unusual paramstyle: an integer literal is safe to inline
            query, inline = query.replace("{id}", "%d"), True
        else:
            query, bind = query.replace("{id}", style[0]), style[1]

    def work(conn: Any, rng: random.Random) -> None:
        cur = conn.cursor()
        try:
            if bind is not None:
                cur.execute(query, bind(_pick(rng)))
            elif inline:
                cur.execute(query % _pick(rng))
            else:
                cur.execute(query)
            if cur.description is not None:
                cur.fetchall()
        finally:
            cur.close()
        if commit:
            conn.commit()

    return work


def prepare_sync(conn: Any, paramstyle: str | None, sqlite_file: bool) -> None:
    """Create and fill the benchmark table if it is missing or short of rows."""
    with warnings.catch_warnings():  # server notes as Python warnings (see prepare_async)
        warnings.simplefilter("ignore")
        _prepare_sync(conn, paramstyle, sqlite_file)


def _prepare_sync(conn: Any, paramstyle: str | None, sqlite_file: bool) -> None:
    cur = conn.cursor()
    try:
        if sqlite_file:
            # concurrent writers on one file: WAL lets readers run beside the writer
            cur.execute("PRAGMA journal_mode=WAL")
            cur.fetchall()
        cur.execute(_CREATE)
        conn.commit()
        cur.execute(f"SELECT COUNT(*) FROM {TABLE}")
        row = cur.fetchone()
        if row is not None and row[0] == ROWS:
            conn.commit()
            return
        cur.execute(f"DELETE FROM {TABLE}")
        style = _PARAMSTYLES.get(paramstyle or "")
        if style is None or style[0] in (":1", ":id"):
            # numeric and named styles want other parameter shapes; these values are our own
            # integers and names, so literals are safe
            for i, name, value in _rows():
                cur.execute(
                    f"INSERT INTO {TABLE} (id, name, value) VALUES ({i}, '{name}', {value})"
                )
        else:
            ph = style[0]
            cur.executemany(
                f"INSERT INTO {TABLE} (id, name, value) VALUES ({ph}, {ph}, {ph})", _rows()
            )
        conn.commit()
    finally:
        cur.close()


def _rows() -> list[tuple[int, str, int]]:
    return [(i, f"row-{i}", i) for i in range(1, ROWS + 1)]


@dataclass(frozen=True)
class ServerInfo:
    max_connections: int
    in_use: int | None  # connections open on the server now, ours included


_LIMIT_QUERIES: dict[str, tuple[str, str]] = {
    "postgresql": (
        "SELECT current_setting('max_connections')::int",
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
    ),
    "mysql": ("SELECT @@max_connections", "SELECT COUNT(*) FROM information_schema.PROCESSLIST"),
}


def server_info_sync(conn: Any, database: str) -> ServerInfo | None:
    """The server's connection limit and use, or None where there is none (SQLite) or it cannot
    be read (no privilege): the advice then speaks without it."""
    queries = _LIMIT_QUERIES.get(database)
    if queries is None:
        return None
    values: list[int | None] = []
    for query in queries:
        try:
            cur = conn.cursor()
            try:
                cur.execute(query)
                row = cur.fetchone()
            finally:
                cur.close()
            values.append(int(row[0]) if row else None)
        except Exception:
            values.append(None)
        # leave no transaction open (and recover from a failed one on PostgreSQL)
        try:
            conn.rollback()
        except Exception:
            return None
    return ServerInfo(values[0], values[1]) if values[0] else None


# -- asyncio drivers -----------------------------------------------------------------------------

AsyncWork = Callable[[Any, random.Random], Awaitable[None]]


class AsyncSQL:
    """How to run a statement on one asyncio driver's connection. The base class is the
    DB-API-like shape (aiomysql and most others): an awaitable cursor, ``%s`` placeholders."""

    placeholder = "%s"

    def placeholders(self, sql: str, count: int = 1) -> str:
        """``sql`` with its ``{id}`` (or ``{0}``, ``{1}``...) markers in this driver's style."""
        if count == 1:
            return sql.replace("{id}", self.placeholder)
        return sql.format(*(self.placeholder for _ in range(count)))

    async def execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur = conn.cursor()
        if hasattr(cur, "__await__"):
            cur = await cur
        try:
            await cur.execute(sql, tuple(params) or None)
            rows: list[Any] = list(await cur.fetchall()) if cur.description else []
            return rows
        finally:
            closed = cur.close()
            if hasattr(closed, "__await__"):
                await closed

    async def executemany(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            await self.execute(conn, sql, row)

    async def commit(self, conn: Any) -> None:
        await conn.commit()

    async def rollback(self, conn: Any) -> None:
        await conn.rollback()

    async def write(self, conn: Any, sql: str, params: Sequence[Any]) -> None:
        """A short write transaction."""
        await self.execute(conn, sql, params)
        await self.commit(conn)


class _AiomysqlSQL(AsyncSQL):
    async def executemany(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with conn.cursor() as cur:
            await cur.executemany(sql, rows)


class _AsyncpgSQL(AsyncSQL):
    # asyncpg talks the extended protocol itself: $n placeholders, no cursor, autocommit
    # unless a transaction is opened
    placeholder = "$1"

    def placeholders(self, sql: str, count: int = 1) -> str:
        if count == 1:
            return sql.replace("{id}", "$1")
        return sql.format(*(f"${i + 1}" for i in range(count)))

    async def execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        rows: list[Any] = await conn.fetch(sql, *params)
        return rows

    async def executemany(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await conn.executemany(sql, rows)

    async def commit(self, conn: Any) -> None:
        return None  # every statement outside conn.transaction() commits on its own

    async def rollback(self, conn: Any) -> None:
        return None

    async def write(self, conn: Any, sql: str, params: Sequence[Any]) -> None:
        # BEGIN, UPDATE, COMMIT: the same three round trips as the DB-API drivers make, so the
        # write workload means the same thing on every driver
        async with conn.transaction():
            await conn.execute(sql, *params)


class _PsycopgAsyncSQL(AsyncSQL):
    async def execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur = await conn.execute(sql, tuple(params) or None)
        rows: list[Any] = list(await cur.fetchall()) if cur.description else []
        return rows

    async def executemany(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with conn.cursor() as cur:
            await cur.executemany(sql, rows)


class _AiosqliteSQL(AsyncSQL):
    placeholder = "?"

    async def execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with conn.execute(sql, tuple(params)) as cur:
            rows: list[Any] = list(await cur.fetchall()) if cur.description else []
            return rows

    async def executemany(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await conn.executemany(sql, rows)


def async_sql_for(driver: str) -> AsyncSQL:
    if driver == "asyncpg":
        return _AsyncpgSQL()
    if driver == "psycopg-async":
        return _PsycopgAsyncSQL()
    if driver == "aiosqlite":
        return _AiosqliteSQL()
    if driver == "aiomysql":
        return _AiomysqlSQL()
    return AsyncSQL()


def make_async_work(workload: Workload, sql: str | None, dialect: AsyncSQL) -> AsyncWork:
    """The asyncio twin of :func:`make_sync_work`."""
    if sql is not None:
        custom = sql

        async def run_custom(conn: Any, rng: random.Random) -> None:
            await dialect.execute(conn, custom)
            await dialect.commit(conn)

        return run_custom

    query = dialect.placeholders(workload.sql)
    if workload.commit:

        async def run_write(conn: Any, rng: random.Random) -> None:
            await dialect.write(conn, query, (_pick(rng),))

        return run_write
    if "{id}" in workload.sql:

        async def run_read(conn: Any, rng: random.Random) -> None:
            await dialect.execute(conn, query, (_pick(rng),))

        return run_read

    async def run_plain(conn: Any, rng: random.Random) -> None:
        await dialect.execute(conn, query)

    return run_plain


async def prepare_async(conn: Any, dialect: AsyncSQL, sqlite_file: bool) -> None:
    # aiomysql turns the server's notes ("table already exists", for CREATE TABLE IF NOT
    # EXISTS) into Python warnings, which would print before the results
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        await _prepare_async(conn, dialect, sqlite_file)


async def _prepare_async(conn: Any, dialect: AsyncSQL, sqlite_file: bool) -> None:
    if sqlite_file:
        await dialect.execute(conn, "PRAGMA journal_mode=WAL")
    await dialect.execute(conn, _CREATE)
    await dialect.commit(conn)
    rows = await dialect.execute(conn, f"SELECT COUNT(*) FROM {TABLE}")
    if rows and rows[0][0] == ROWS:
        await dialect.commit(conn)
        return
    await dialect.execute(conn, f"DELETE FROM {TABLE}")
    insert = dialect.placeholders(
        f"INSERT INTO {TABLE} (id, name, value) VALUES ({{}}, {{}}, {{}})", 3
    )
    await dialect.executemany(conn, insert, _rows())
    await dialect.commit(conn)


async def server_info_async(conn: Any, database: str, dialect: AsyncSQL) -> ServerInfo | None:
    queries = _LIMIT_QUERIES.get(database)
    if queries is None:
        return None
    values: list[int | None] = []
    for query in queries:
        try:
            rows = await dialect.execute(conn, query)
            values.append(int(rows[0][0]) if rows else None)
        except Exception:
            values.append(None)
        try:
            await dialect.rollback(conn)
        except Exception:
            return None
    return ServerInfo(values[0], values[1]) if values[0] else None
