"""``millpond.AsyncPool`` against the real servers, for each asyncio driver.

The fake-driver tests (``test_cancellation.py``) pin down each await point deterministically;
these check that the same guarantees hold over real sockets, where a cancelled query can leave
a connection mid-protocol and the server, not the pool's bookkeeping, is the judge of how many
sessions exist.

Each test sees the server from outside the pool, through an independent synchronous admin
connection (psycopg, PyMySQL, sqlite3), never through the driver under test:

* PostgreSQL sessions are tagged with ``application_name`` (a URL parameter, which both asyncpg
  and psycopg pass on to the server), and counted in ``pg_stat_activity``.
* MariaDB sessions are tagged by a throw-away user created for the test (the test server runs
  without ``performance_schema``, so there are no connection attributes to filter on), and
  counted in the process list.
* SQLite has no server: the scenarios that count sessions do not apply to it.

The servers come from ``tests/conftest.py`` (``pg_url``, ``mysql_url``, ``sqlite_path``): an
unreachable server skips, or fails under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import random
import socket
import sqlite3
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import pytest
import pytest_asyncio

import millpond
from millpond.drivers.async_base import AsyncAdapter
from millpond.drivers.async_url import resolve_async

pytestmark = pytest.mark.asyncio

# -- drivers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AsyncDriver:
    id: str
    kind: str  # "postgres" | "mysql" | "sqlite"
    scheme: str
    library: str
    #: a plain SELECT leaves the session needing a ROLLBACK on return (psycopg and aiomysql
    #: outside autocommit), so the return path has an await a cancellation can land on
    resets_after_select: bool
    #: a connection whose query was cut off is brought back by the driver (it cancels the
    #: statement on the server and reads its end) and kept, rather than replaced
    recovers_cut_off: bool = False

    @property
    def has_server(self) -> bool:
        return self.kind != "sqlite"


ASYNCPG = AsyncDriver("asyncpg", "postgres", "postgresql+asyncpg", "asyncpg", False, True)
PSYCOPG = AsyncDriver("psycopg", "postgres", "postgresql+psycopg", "psycopg", True, True)
AIOMYSQL = AsyncDriver("aiomysql", "mysql", "mysql+aiomysql", "aiomysql", True)
AIOSQLITE = AsyncDriver("aiosqlite", "sqlite", "sqlite+aiosqlite", "aiosqlite", False)

ALL = (ASYNCPG, PSYCOPG, AIOMYSQL, AIOSQLITE)
SERVERS = (ASYNCPG, PSYCOPG, AIOMYSQL)
_MARKS = {"postgres": (pytest.mark.postgres,), "mysql": (pytest.mark.mysql,), "sqlite": ()}


def drivers(*which: AsyncDriver) -> list[Any]:
    """``pytest.param``s for ``@pytest.mark.parametrize("db", ..., indirect=True)``."""
    return [pytest.param(d, id=d.id, marks=_MARKS[d.kind]) for d in which]


#: a statement that runs until interrupted
LONG_QUERY = {
    "postgres": "SELECT pg_sleep(30)",
    "mysql": "SELECT SLEEP(30)",
    "sqlite": "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
    "SELECT count(*) FROM r",
}


class Boom(Exception):
    """An application error raised inside a block."""


def collect_garbage() -> None:
    """Run the collector now, before an assertion that is expected to fail (xfail).

    CPython 3.11 before 3.11.8 (gh-106905): a weakref callback or finalizer that runs Python
    code while ``ast.parse`` builds its tree raises "SystemError: AST constructor recursion
    depth mismatch". pytest parses source to format every failure, xfails included, and the
    collector is likely to run then and find this test's dropped connections, whose weakref
    callbacks (the pool's garbage-collection watch) run Python: the session dies with an
    INTERNALERROR. Collecting first leaves the collector nothing to do at that moment.
    """
    gc.collect()


async def eventually(cond: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Wait for the server or the pool's background tasks to reach a state: a bound on a hang,
    not a timing assertion."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {limit}s: {what}")
        await asyncio.sleep(0.01)


# -- one database per test -------------------------------------------------------------------


class Database:
    """One driver on one server: URLs for the pool, SQL on the driver's raw connections, and
    an admin connection that looks at the server from outside the pool."""

    def __init__(self, driver: AsyncDriver, base_url: str, tag: str, sqlite_path: Path) -> None:
        self.driver = driver
        self.tag = tag
        self.tables: list[str] = []
        self._admin: Any = None
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port
        self.user = unquote(parts.username or "")
        self.password = unquote(parts.password or "")
        self.database = parts.path.lstrip("/")
        self.sqlite_path = sqlite_path

    # URLs ------------------------------------------------------------------------------------

    def url(self, *, password: str | None = None, port: int | None = None) -> str:
        d = self.driver
        if d.kind == "sqlite":
            return f"{d.scheme}:///{self.sqlite_path}"
        user = self.tag if d.kind == "mysql" else self.user
        password = self.password if password is None else password
        netloc = quote(user, safe="")
        if password:
            netloc += ":" + quote(password, safe="")
        netloc += f"@{self.host}:{port or self.port}"
        query = f"?application_name={self.tag}" if d.kind == "postgres" else ""
        return f"{d.scheme}://{netloc}/{self.database}{query}"

    def autocommit_kwargs(self, autocommit: bool) -> dict[str, Any] | None:
        """``connect_kwargs`` that put the driver's connections in autocommit mode (or not);
        None for asyncpg, which has no such switch (always autocommit)."""
        d = self.driver
        if d is ASYNCPG:
            return None
        if d is AIOSQLITE:
            return {"isolation_level": None} if autocommit else {}
        return {"autocommit": autocommit}

    # the admin connection --------------------------------------------------------------------

    def admin(self) -> Any:
        if self._admin is None:
            kind = self.driver.kind
            if kind == "postgres":
                import psycopg

                self._admin = psycopg.connect(
                    host=self.host,
                    port=self.port,
                    user=self.user,
                    password=self.password or None,
                    dbname=self.database,
                    autocommit=True,
                    connect_timeout=5,
                    application_name=f"{self.tag}_admin",
                )
            elif kind == "mysql":
                import pymysql

                self._admin = pymysql.connect(
                    host=self.host,
                    port=self.port or 3306,
                    user=self.user,
                    password=self.password,
                    database=self.database,
                    autocommit=True,
                    connect_timeout=5,
                )
            else:
                self._admin = sqlite3.connect(self.sqlite_path, isolation_level=None, timeout=10)
        return self._admin

    def admin_query(self, sql: str) -> list[tuple[Any, ...]]:
        cur = self.admin().cursor()
        try:
            cur.execute(sql)
            return [tuple(r) for r in cur.fetchall()] if cur.description is not None else []
        finally:
            cur.close()

    def setup(self) -> None:
        if self.driver.kind == "mysql":
            db = self.database.replace("`", "``")
            # one account for any host and one for exactly ours: the server's own anonymous
            # accounts for 127.0.0.1/localhost would otherwise win the host match over '%'
            for host in ("%", self.host):
                self.admin_query(f"CREATE USER '{self.tag}'@'{host}' IDENTIFIED BY ''")
                self.admin_query(f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{self.tag}'@'{host}'")

    def teardown(self) -> None:
        try:
            for t in self.tables:
                with contextlib.suppress(Exception):
                    self.admin_query(f"DROP TABLE IF EXISTS {t}")
            if self.driver.kind == "mysql":
                for i in self.server_ids() or ():
                    with contextlib.suppress(Exception):
                        self.admin_query(f"KILL {i}")
                for host in ("%", self.host):
                    with contextlib.suppress(Exception):
                        self.admin_query(f"DROP USER IF EXISTS '{self.tag}'@'{host}'")
            elif self.driver.kind == "postgres":
                with contextlib.suppress(Exception):
                    self.admin_query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE application_name = '{self.tag}'"
                    )
        finally:
            if self._admin is not None:
                with contextlib.suppress(Exception):
                    self._admin.close()

    # the pool's sessions, seen by the server ---------------------------------------------------

    def server_ids(self) -> set[int] | None:
        """Ids of this test's pool sessions the server has now (None: no server)."""
        kind = self.driver.kind
        if kind == "postgres":
            sql = f"SELECT pid FROM pg_stat_activity WHERE application_name = '{self.tag}'"
        elif kind == "mysql":
            # a killed thread lingers in the list until it notices; it is no session any more
            sql = (
                "SELECT ID FROM information_schema.PROCESSLIST "
                f"WHERE USER = '{self.tag}' AND COMMAND <> 'Killed'"
            )
        else:
            return None
        return {int(r[0]) for r in self.admin_query(sql)}

    def live_ids(self) -> set[int]:
        ids = self.server_ids()
        assert ids is not None
        return ids

    def kill(self, backend_id: int) -> None:
        """End a session from the server's side and wait until the server has let it go."""
        if self.driver.kind == "postgres":
            # with a timeout (PostgreSQL 14+) this returns once the backend has exited
            rows = self.admin_query(f"SELECT pg_terminate_backend({int(backend_id)}, 5000)")
            assert rows == [(True,)], rows
        else:
            self.admin_query(f"KILL {int(backend_id)}")
            deadline = time.monotonic() + 10
            while backend_id in self.live_ids():
                assert time.monotonic() < deadline, f"session {backend_id} survived KILL"
                time.sleep(0.005)

    def make_table(self) -> str:
        name = "mp_" + uuid.uuid4().hex[:16]
        engine = " ENGINE=InnoDB" if self.driver.kind == "mysql" else ""
        self.admin_query(f"CREATE TABLE {name} (v INTEGER NOT NULL){engine}")
        self.tables.append(name)
        return name

    def count(self, table: str, where: str = "1=1") -> int:
        """Rows committed in ``table``, as another session sees them."""
        return int(self.admin_query(f"SELECT COUNT(*) FROM {table} WHERE {where}")[0][0])

    # SQL on the driver's own connections -------------------------------------------------------

    async def rows(self, conn: Any, sql: str) -> list[tuple[Any, ...]]:
        d = self.driver
        if d is ASYNCPG:
            return [tuple(r) for r in await conn.fetch(sql)]
        if d is PSYCOPG:
            cur = await conn.execute(sql)
            return [tuple(r) for r in await cur.fetchall()] if cur.description is not None else []
        if d is AIOMYSQL:
            async with conn.cursor() as cur:
                await cur.execute(sql)
                return [tuple(r) for r in await cur.fetchall()] if cur.description else []
        return [tuple(r) for r in await conn.execute_fetchall(sql)]

    async def scalar(self, conn: Any, sql: str) -> Any:
        rows = await self.rows(conn, sql)
        assert len(rows) == 1, rows
        return rows[0][0]

    async def echo(self, conn: Any, n: int) -> int:
        """A ``SELECT 1`` whose answer identifies its question: a reply meant for another
        query (a connection lent mid-protocol) shows up as a wrong number. Bound as a
        parameter, so that drivers with a statement cache prepare it once."""
        d = self.driver
        if d is ASYNCPG:
            return int(await conn.fetchval("SELECT $1::int", n))
        if d is PSYCOPG:
            cur = await conn.execute("SELECT %s::int", (n,))
            row = await cur.fetchone()
        elif d is AIOMYSQL:
            async with conn.cursor() as cur:
                await cur.execute("SELECT %s", (n,))
                row = await cur.fetchone()
        else:
            (row,) = await conn.execute_fetchall("SELECT ?", (n,))
        assert row is not None
        return int(row[0])

    async def backend_id(self, conn: Any) -> int:
        kind = self.driver.kind
        if kind == "postgres":
            return int(await self.scalar(conn, "SELECT pg_backend_pid()"))
        if kind == "mysql":
            return int(await self.scalar(conn, "SELECT CONNECTION_ID()"))
        return id(conn)

    async def in_transaction(self, conn: Any) -> bool:
        d = self.driver
        if d is ASYNCPG:
            return bool(conn.is_in_transaction())
        if d is PSYCOPG:
            import psycopg

            return bool(conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)
        if d is AIOMYSQL:
            # asked of the server: aiomysql's status flags lag behind (see its adapter)
            return bool(int(await self.scalar(conn, "SELECT @@in_transaction")))
        return bool(conn.in_transaction)

    def autocommit(self, conn: Any) -> bool:
        d = self.driver
        if d is ASYNCPG:
            return True
        if d is AIOMYSQL:
            return bool(conn.get_autocommit())
        if d is AIOSQLITE:
            return conn.isolation_level is None
        return bool(conn.autocommit)

    async def begin(self, conn: Any) -> None:
        """Open a transaction by hand where a write would not open one by itself."""
        if self.autocommit(conn):
            await self.rows(conn, "BEGIN")


class MakePool(Protocol):
    def __call__(
        self, *, target: Any = ..., wait: bool = ..., **options: Any
    ) -> Awaitable[millpond.AsyncPool]: ...


@pytest.fixture
def db(request: pytest.FixtureRequest, sqlite_path: Path) -> Iterator[Database]:
    driver: AsyncDriver = request.param
    pytest.importorskip(driver.library)
    if driver.kind == "postgres":
        base = request.getfixturevalue("pg_url")
    elif driver.kind == "mysql":
        base = request.getfixturevalue("mysql_url")
    else:
        base = "sqlite://"
    database = Database(driver, str(base), "mpa_" + uuid.uuid4().hex[:12], sqlite_path)
    try:
        database.setup()
        yield database
    finally:
        database.teardown()


@pytest_asyncio.fixture
async def make_pool(db: Database) -> AsyncIterator[MakePool]:
    """Build pools on ``db``: on its tagged URL by default, so that the server can tell their
    sessions apart (``target=`` another URL or an adapter); opened and filled to ``min_size``
    unless ``wait=False``; every one is closed after the test."""
    pools: list[millpond.AsyncPool] = []

    async def make(*, target: Any = None, wait: bool = True, **options: Any) -> millpond.AsyncPool:
        options.setdefault("timeout", 10.0)
        pool = millpond.AsyncPool(db.url() if target is None else target, **options)
        pools.append(pool)
        if wait:
            await pool.open(wait=True, timeout=10)
        return pool

    yield make
    for p in pools:
        await p.close(timeout=2)


async def settle(pool: millpond.AsyncPool, size: int, limit: float = 10.0) -> None:
    """Wait for background connects, closes and shielded resets to finish, with ``size``
    connections idle."""

    def done() -> bool:
        s = pool.stats()
        return (s.idle, s.in_use, s.opening, s.waiting) == (size, 0, 0, 0)

    await eventually(done, f"pool back to {size} idle connections: {pool.stats()}", limit)


def assert_whole(pool: millpond.AsyncPool, size: int) -> None:
    s = pool.stats()
    assert (s.in_use, s.waiting, s.opening) == (0, 0, 0), s
    assert s.size == s.idle == size, s
    pool._core.check_invariants()


async def pool_ids(db: Database, pool: millpond.AsyncPool, n: int) -> set[int]:
    """Backend ids of ``n`` connections borrowed at once (so they are ``n`` different ones)."""
    conns = [await pool.getconn() for _ in range(n)]
    try:
        return {await db.backend_id(c) for c in conns}
    finally:
        for c in conns:
            await pool.putconn(c)


# -- opening and closing -----------------------------------------------------------------------


@pytest.mark.parametrize("db", drivers(*SERVERS), indirect=True)
async def test_min_size_connections_are_open_on_the_server(
    db: Database, make_pool: MakePool
) -> None:
    pool = await make_pool(min_size=3, max_size=5, wait=False)
    await asyncio.sleep(0.05)  # give a connect that __init__ wrongly started time to show up
    assert db.live_ids() == set(), "AsyncPool.__init__ connected to the server"
    await pool.open(wait=True, timeout=10)
    ids = db.live_ids()
    assert len(ids) == 3, ids
    s = pool.stats()
    assert (s.size, s.idle, s.in_use) == (3, 3, 0), s
    assert await pool_ids(db, pool, 3) == ids  # the sessions the server sees are the pool's
    assert db.live_ids() == ids  # and borrowing three opened nothing more
    await pool.close(timeout=2)
    await eventually(lambda: db.live_ids() == set(), "sessions gone after close()")


# -- what the next borrower sees ---------------------------------------------------------------


@pytest.mark.parametrize("db", drivers(*ALL), indirect=True)
@pytest.mark.parametrize("leave", ["normally", "with an exception"])
async def test_uncommitted_work_is_rolled_back_before_the_next_borrower(
    db: Database, make_pool: MakePool, leave: str
) -> None:
    table = db.make_table()
    pool = await make_pool(min_size=1, max_size=1)
    with contextlib.suppress(Boom):
        async with pool.connection() as conn:
            first = conn
            await db.begin(conn)
            await db.rows(conn, f"INSERT INTO {table} VALUES (1)")
            assert await db.in_transaction(conn)
            if leave != "normally":
                raise Boom
    assert db.count(table) == 0
    async with pool.connection() as conn:
        assert conn is first  # rolled back and kept: an application error breaks nothing
        assert not await db.in_transaction(conn)
        assert await db.scalar(conn, f"SELECT COUNT(*) FROM {table}") == 0
        assert await db.echo(conn, 7) == 7
    assert pool.stats().resets >= 1
    assert pool.stats().closed_total == 0


@pytest.mark.parametrize("db", drivers(ASYNCPG), indirect=True)
async def test_an_abandoned_asyncpg_transaction_object_does_not_reach_the_next_borrower(
    db: Database, make_pool: MakePool
) -> None:
    table = db.make_table()
    pool = await make_pool(min_size=1, max_size=1)
    async with pool.connection() as conn:
        tr = conn.transaction()
        await tr.start()  # and never committed nor rolled back
        await conn.execute(f"INSERT INTO {table} VALUES (1)")
    # asyncpg still holding the abandoned Transaction would make this a SAVEPOINT outside
    # any transaction, or refuse it
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(f"INSERT INTO {table} VALUES (2)")
    assert db.count(table, "v = 1") == 0
    assert db.count(table, "v = 2") == 1


@pytest.mark.parametrize("db", drivers(*ALL), indirect=True)
@pytest.mark.parametrize("autocommit", [False, True], ids=["implicit-tx", "autocommit"])
async def test_transaction_commits_on_success_and_rolls_back_on_error(
    db: Database, make_pool: MakePool, autocommit: bool
) -> None:
    if db.driver is ASYNCPG and not autocommit:
        # asyncpg has no autocommit=False mode: the adapter says so instead of pretending
        pool = await make_pool(min_size=1, max_size=1)
        async with pool.connection() as conn:
            with pytest.raises(millpond.ConfigError, match="autocommit"):
                await pool._adapter.set_autocommit(conn, False)
        return
    table = db.make_table()
    pool = await make_pool(min_size=1, max_size=1, connect_kwargs=db.autocommit_kwargs(autocommit))

    async with pool.transaction() as conn:
        await db.rows(conn, f"INSERT INTO {table} VALUES (1)")
        assert await db.in_transaction(conn)
        if db.driver is ASYNCPG:
            # the pool began with asyncpg's own Transaction, so a nested one is a SAVEPOINT;
            # after a bare BEGIN asyncpg would refuse conn.transaction() outright
            with contextlib.suppress(Boom):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (2)")
                    raise Boom
        assert db.count(table) == 0  # not visible before the commit
    assert db.count(table, "v = 1") == 1
    assert db.count(table, "v = 2") == 0

    with pytest.raises(Boom):
        async with pool.transaction() as conn:
            await db.rows(conn, f"INSERT INTO {table} VALUES (3)")
            raise Boom
    assert db.count(table, "v = 3") == 0

    async with pool.connection() as conn:
        assert not await db.in_transaction(conn)
        assert db.autocommit(conn) is autocommit  # the pool's mode survives transaction()
    assert pool.stats().closed_total == 0


@pytest.mark.parametrize("db", drivers(*ALL), indirect=True)
async def test_a_cancellation_during_the_rollback_of_a_failed_transaction_keeps_the_pool_whole(
    db: Database, make_pool: MakePool
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    task: asyncio.Task[None]

    async def block() -> None:
        async with pool.transaction() as conn:
            await db.echo(conn, 1)
            # runs as soon as the transaction's __aexit__ awaits the driver's ROLLBACK
            asyncio.get_running_loop().call_soon(task.cancel)
            raise Boom

    task = asyncio.create_task(block())
    await asyncio.wait({task}, timeout=10)
    assert task.done()
    await settle(pool, 1)
    assert_whole(pool, 1)
    async with pool.connection() as conn:
        assert await db.echo(conn, 5) == 5


@pytest.mark.parametrize("db", drivers(*ALL), indirect=True)
async def test_a_cancellation_during_the_rollback_of_a_failed_transaction_propagates(
    db: Database, make_pool: MakePool
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    task: asyncio.Task[None]

    async def block() -> None:
        async with pool.transaction() as conn:
            await db.echo(conn, 1)
            asyncio.get_running_loop().call_soon(task.cancel)
            raise Boom

    task = asyncio.create_task(block())
    await asyncio.wait({task}, timeout=10)
    collect_garbage()
    assert task.cancelled(), f"the task ended with {task.exception()!r}, not cancelled"


@pytest.mark.parametrize(
    "db",
    [
        pytest.param(
            ASYNCPG,
            id="asyncpg",
            marks=(pytest.mark.postgres,),
        ),
        pytest.param(AIOMYSQL, id="aiomysql", marks=(pytest.mark.mysql,)),
    ],
    indirect=True,
)
async def test_a_timed_out_transaction_block_returns_promptly_when_the_server_goes_silent(
    db: Database, make_pool: MakePool
) -> None:
    """psycopg is left out: it hangs in its own query-cancellation code before the pool gets
    a say (the same happens with ``pool.connection()``)."""
    from tests.faults.proxy import FaultProxy

    assert db.port is not None
    with FaultProxy(db.host, db.port) as proxy:
        pool = await make_pool(target=db.url(port=proxy.port), min_size=1, max_size=1)

        async def block() -> None:
            async with pool.transaction() as conn:
                proxy.blackhole()
                await db.echo(conn, 1)  # never answered

        task = asyncio.create_task(asyncio.wait_for(block(), 0.2))
        await asyncio.wait({task}, timeout=3)
        hung = not task.done()
        if hung:
            task.cancel()
            await asyncio.wait({task}, timeout=5)
        proxy.pass_through()
        collect_garbage()
        assert not hung, "the cut-off transaction block was still running 3 s later"
        assert isinstance(task.exception(), TimeoutError)
        await settle(pool, 1)
        # recovered once the network came back, or replaced: either way whole and working
        assert pool.stats().lost == 0
        async with pool.connection(timeout=10) as conn:
            assert await db.echo(conn, 7) == 7


# -- broken connections ------------------------------------------------------------------------


async def cut_off(db: Database, pool: millpond.AsyncPool) -> tuple[Any, int]:
    """Borrow a connection, note it and its backend, and cut off a long statement on it with
    a timeout."""
    async with pool.connection() as conn:
        old_conn, old_id = conn, await db.backend_id(conn)

    async def block() -> None:
        async with pool.connection() as conn:
            assert conn is old_conn
            await db.rows(conn, LONG_QUERY[db.driver.kind])

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(block(), 0.3)
    return old_conn, old_id


@pytest.mark.parametrize("db", drivers(*ALL), indirect=True)
async def test_a_connection_cut_off_mid_query_is_recovered_or_replaced(
    db: Database, make_pool: MakePool
) -> None:
    """asyncpg and psycopg cancel the statement and read its end: the pool keeps the
    connection (a connect costs far more, issue 11 item 7), and it answers its own queries.
    The other drivers' connections may be mid-protocol: replaced."""
    pool = await make_pool(min_size=1, max_size=1)
    old_conn, old_id = await cut_off(db, pool)
    await settle(pool, 1)
    async with pool.connection() as conn:
        assert (conn is old_conn) is db.driver.recovers_cut_off
        assert await db.echo(conn, 42) == 42
        if db.driver.has_server:
            assert (await db.backend_id(conn) == old_id) is db.driver.recovers_cut_off
    assert pool.stats().closed_total == (0 if db.driver.recovers_cut_off else 1)
    await settle(pool, 1)
    assert_whole(pool, 1)


@pytest.mark.parametrize(
    "db",
    [
        pytest.param(
            ASYNCPG,
            id="asyncpg",
            marks=(pytest.mark.postgres,),
        ),
        pytest.param(PSYCOPG, id="psycopg", marks=(pytest.mark.postgres,)),
        pytest.param(AIOMYSQL, id="aiomysql", marks=(pytest.mark.mysql,)),
    ],
    indirect=True,
)
async def test_a_statement_cut_off_by_a_timeout_stops_on_the_server(
    db: Database, make_pool: MakePool
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    _old_conn, old_id = await cut_off(db, pool)
    async with pool.connection() as conn:
        new_id = await db.backend_id(conn)
    # the statement had 30 s to go: its session must end long before that
    with contextlib.suppress(AssertionError):
        await eventually(lambda: db.live_ids() == {new_id}, "the cut-off session ends", limit=5)
    collect_garbage()
    assert db.live_ids() == {new_id}, f"session {old_id} still there"


@pytest.mark.parametrize("db", drivers(*SERVERS), indirect=True)
@pytest.mark.parametrize("ping_window", [0.0, 0.1])
async def test_an_idle_backend_killed_on_the_server_is_never_lent(
    db: Database, make_pool: MakePool, ping_window: float
) -> None:
    pool = await make_pool(min_size=2, max_size=2, ping_window=ping_window)
    killed = await pool_ids(db, pool, 2)
    returned_at = time.monotonic()
    assert db.live_ids() == killed
    for backend in killed:
        db.kill(backend)
    # past the window in which a just-returned connection is trusted without a ping
    await asyncio.sleep(max(0.0, returned_at + ping_window * 1.2 - time.monotonic()))
    conns = [await pool.getconn(timeout=10) for _ in range(2)]
    try:
        fresh = {await db.backend_id(c) for c in conns}
        assert [await db.echo(c, i) for i, c in enumerate(conns)] == [0, 1]
    finally:
        for c in conns:
            await pool.putconn(c)
    assert not fresh & killed
    s = pool.stats()
    assert s.ping_failures == 2 and s.closed_by_reason.get("ping_failed") == 2, s
    assert db.live_ids() == fresh


@pytest.mark.parametrize("db", drivers(*SERVERS), indirect=True)
async def test_an_unreachable_port_gives_a_redacted_connect_error(
    db: Database, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "pw-" + uuid.uuid4().hex
    with socket.socket() as closed:
        closed.bind((db.host, 0))  # bound, never listening: connections are refused
        port = closed.getsockname()[1]
        pool = await make_pool(
            target=db.url(password=secret, port=port), min_size=1, max_size=1, wait=False
        )
        with caplog.at_level(logging.DEBUG, logger="millpond"):
            await pool.open()
            with pytest.raises(millpond.ConnectError) as info:
                await pool.getconn()
    error = info.value
    assert str(port) in str(error)  # it says where it tried
    assert error.__cause__ is not None  # and chains what the driver said
    told = [
        "".join(traceback.format_exception(error)),
        repr(error.__cause__),
        repr(pool),
        repr(pool.stats()),
        *(r.getMessage() for r in caplog.records),
    ]
    leaked = [t for t in told if secret in t]
    assert not leaked, leaked
    assert pool.stats().connect_errors >= 1


# -- the storm ---------------------------------------------------------------------------------

STORM_TASKS = 10_000
STORM_POOL = 5
#: tasks alive at once: enough to keep a queue at every connection, few enough that a
#: cancellation aimed at "while queued" lands at a random position in a short queue rather
#: than always at the back of a 10,000-long one
STORM_IN_FLIGHT = 64
#: share of the tasks cut off by wait_for, and share cancelled by the driver loop (together
#: about a third end cancelled: a timeout can come after the work is done, and an aimed
#: cancellation after the task has finished)
STORM_TIMED = 0.2
STORM_AIMED = 0.2
#: the chance per loop iteration that an armed cancellation fires: low while queued, so it
#: lands anywhere in the wait; high elsewhere, since those phases last a round trip or two
STORM_FIRE = {"queued": 0.05, "ping": 0.5, "query": 0.5, "return": 0.5}


def server_pid(conn: Any) -> int:
    """The server's id for a raw connection, as the driver learnt it when connecting (no
    round trip)."""
    module = type(conn).__module__
    if module.startswith("asyncpg"):
        return int(conn.get_server_pid())
    if module.startswith("psycopg"):
        return int(conn.info.backend_pid)
    return int(conn.server_thread_id[0])  # aiomysql, from the handshake


class Probe:
    """What the storm learns from inside the adapter: which server session each connection
    is, when the pool let go of it, and the moments a ping starts and a reset ends."""

    def __init__(self) -> None:
        self.opened: set[int] = set()
        self.released: dict[int, float] = {}  # session id -> when the pool dropped it
        # session id of each connection, learnt at connect: asyncpg forgets it once the
        # connection is terminated (abandon() does that itself), yet the close still counts
        self._pids: dict[int, tuple[Any, int]] = {}
        self.on_ping: Callable[[], None] = lambda: None
        self.after_reset: Callable[[], None] = lambda: None

    def adapter(self, db: Database) -> AsyncAdapter:
        """The driver's adapter, built from the URL as the pool would build it, probed."""
        adapter = resolve_async(db.url())
        real_connect, real_terminate, real_close = adapter.connect, adapter.terminate, adapter.close
        real_ping, real_rollback = adapter.ping, adapter.rollback

        def release(conn: Any) -> None:
            _conn, pid = self._pids[id(conn)]
            self.released.setdefault(pid, time.monotonic())

        async def connect() -> Any:
            conn = await real_connect()
            pid = server_pid(conn)
            self._pids[id(conn)] = (conn, pid)  # the object is kept: its id stays unique
            self.opened.add(pid)
            return conn

        def terminate(conn: Any) -> None:
            release(conn)
            real_terminate(conn)

        async def close(conn: Any) -> None:
            release(conn)
            await real_close(conn)

        async def ping(conn: Any) -> None:
            self.on_ping()
            await real_ping(conn)

        async def rollback(conn: Any) -> None:
            await real_rollback(conn)
            # the pool checks the connection in (handing it to the oldest waiter) in the
            # same step as this returns; a callback queued now runs before that waiter resumes
            asyncio.get_running_loop().call_soon(self.after_reset)

        adapter.connect = connect  # type: ignore[method-assign]
        adapter.terminate = terminate  # type: ignore[method-assign]
        adapter.close = close  # type: ignore[method-assign]
        adapter.ping = ping  # type: ignore[method-assign]
        adapter.rollback = rollback  # type: ignore[method-assign]
        return adapter


class Monitor:
    """Samples the pool's sessions on the server, from a thread (through the admin
    connection), for as long as the storm lasts.

    A session the pool has dropped can stay on the server's list for a few milliseconds
    while its backend exits; the pool has already counted its slot free and may be opening
    the replacement. Such a session counts in ``peak`` (what the server saw) and in
    ``linger``, but not in ``held`` (sessions the pool had not let go of when the sample was
    taken), which is what ``max_size`` bounds.
    """

    def __init__(self, db: Database, probe: Probe) -> None:
        self.db = db
        self.probe = probe
        self.samples = 0
        self.peak = 0  # sessions on the server's list
        self.over = 0  # samples with more than STORM_POOL of them
        self.held = 0  # sessions the pool had not let go of
        self.held_ids: set[int] = set()
        self.linger = 0.0  # longest a dropped session was still seen, seconds
        self.seen: set[int] = set()
        self._stop = False

    async def run(self) -> None:
        while not self._stop:
            ids = await asyncio.to_thread(self.db.live_ids)
            sampled = time.monotonic()
            released = self.probe.released
            held = {i for i in ids if i not in released or released[i] > sampled}
            self.samples += 1
            self.seen |= ids
            self.peak = max(self.peak, len(ids))
            self.over += len(ids) > STORM_POOL
            if len(held) > self.held:
                self.held, self.held_ids = len(held), held
            for i in ids - held:
                self.linger = max(self.linger, sampled - released[i])

    def stop(self) -> None:
        self._stop = True


@dataclass
class StormLog:
    """Per task: its phase now, the phase an aimed cancellation waits for, and how it ended."""

    phase: list[str]
    target: list[str | None]
    timed: set[int]  # run under wait_for
    cancel_sent: set[int]  # task.cancel() returned True for it
    landed: Counter[tuple[str, str]]  # (how, phase) -> cancellations that surfaced there
    wrong: list[tuple[int, int]]  # (asked, answered) for a reply to another query
    handoffs: int = 0


@pytest.mark.slow
@pytest.mark.parametrize("db", drivers(*SERVERS), indirect=True)
async def test_cancellation_storm(db: Database, make_pool: MakePool) -> None:
    """10,000 tasks on a pool of 5, each borrowing a connection for one ``SELECT``; about a
    third are cancelled at random moments, some by ``task.cancel()`` from a driver loop, each
    aimed at one phase (queued, at the hand-off, during the ping, during the query, during
    the reset on return), some by ``asyncio.wait_for`` with a timeout drawn around the
    current latency, so that it expires anywhere from the queue to the return.

    ``ping_window=0``, so every checkout pings and the ping is an await point the storm hits.
    """
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    why = f"(storm seed {seed})"
    n = STORM_TASKS
    targets = ["queued", "handoff", "ping", "query"]
    if db.driver.resets_after_select:
        targets.append("return")  # otherwise the return path has no await to land on
    log = StormLog(["new"] * n, [None] * n, set(), set(), Counter(), [])
    current: contextvars.ContextVar[int] = contextvars.ContextVar("storm_task", default=-1)
    tasks: list[asyncio.Future[None]] = []
    armed: set[int] = set()
    line: deque[int] = deque()  # tasks in the order they queued (the pool's FIFO order)
    latency = 0.002  # moving average of a task's time from start to done, seconds
    alive = 0
    spawned = False

    def enter(i: int, phase: str) -> None:
        log.phase[i] = phase
        if log.target[i] == phase:
            armed.add(i)

    def cancel(i: int) -> None:
        if tasks[i].cancel():
            log.cancel_sent.add(i)

    def next_in_line() -> None:
        # a returned connection has just gone to the oldest waiter, which has not run since
        while line and log.phase[line[0]] != "queued":
            line.popleft()
        if line and log.target[line[0]] == "handoff":
            log.handoffs += 1
            cancel(line.popleft())

    def on_ping() -> None:
        i = current.get()
        if i >= 0:
            enter(i, "ping")

    probe = Probe()
    probe.on_ping, probe.after_reset = on_ping, next_in_line
    pool = await make_pool(
        target=probe.adapter(db),
        min_size=STORM_POOL,
        max_size=STORM_POOL,
        ping_window=0.0,
        timeout=30.0,
    )
    loop = asyncio.get_running_loop()

    async def work(i: int) -> None:
        nonlocal latency
        current.set(i)
        started = loop.time()
        enter(i, "queued")
        line.append(i)
        try:
            async with pool.connection() as conn:
                enter(i, "query")
                got = await db.echo(conn, i)
                if got != i:
                    log.wrong.append((i, got))
                enter(i, "return")
            enter(i, "done")
            latency += (loop.time() - started - latency) * 0.05
            next_in_line()  # without a reset, the hand-off happened inside the return
        except BaseException:
            log.landed["wait_for" if i in log.timed else "cancel", log.phase[i]] += 1
            log.phase[i] = "gone"
            raise

    def finished(_task: asyncio.Future[None]) -> None:
        nonlocal alive
        alive -= 1

    async def spawn() -> None:
        nonlocal alive, spawned
        for i in range(n):
            while alive >= STORM_IN_FLIGHT:
                await asyncio.sleep(0)
            r = rng.random()
            coro: Awaitable[None] = work(i)
            if r < STORM_TIMED:
                log.timed.add(i)
                coro = asyncio.wait_for(coro, rng.uniform(0.0, 1.5 * latency))
            elif r < STORM_TIMED + STORM_AIMED:
                log.target[i] = rng.choice(targets)
            task = asyncio.ensure_future(coro)
            task.add_done_callback(finished)
            alive += 1
            tasks.append(task)
        spawned = True

    async def driver_loop() -> None:
        while not spawned or armed:
            await asyncio.sleep(0)
            for i in list(armed):
                target = log.target[i]
                assert target is not None
                if tasks[i].done():
                    armed.discard(i)
                elif rng.random() < STORM_FIRE.get(target, 0.5):
                    armed.discard(i)
                    cancel(i)

    monitor = Monitor(db, probe)
    watching = asyncio.create_task(monitor.run())
    started = time.monotonic()

    async def storm() -> list[BaseException | None]:
        await asyncio.gather(spawn(), driver_loop())
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = await asyncio.wait_for(storm(), 60)  # a hang fails instead of stalling
    finally:
        took = time.monotonic() - started
        monitor.stop()
        await watching
    collect_garbage()  # 10,000 finished tasks' worth, before any assertion can fail
    stats = pool.stats()
    print(
        f"\n{db.driver.id} storm {why}: {took:.1f}s; cancellations landed "
        f"{dict(sorted(log.landed.items()))}, {log.handoffs} at the hand-off; server: "
        f"{monitor.samples} samples, peak {monitor.peak} sessions listed ({monitor.over} "
        f"samples over {STORM_POOL}), peak {monitor.held} held by the pool, dropped sessions "
        f"listed up to {monitor.linger * 1000:.1f} ms, {len(monitor.seen)} distinct; {stats}"
    )

    # every task ended the way it was meant to, and no cancellation was swallowed
    outcome: Counter[str] = Counter()
    for i, result in enumerate(results):
        if i in log.cancel_sent:
            assert isinstance(result, asyncio.CancelledError), (i, result, why)
            outcome["cancelled"] += 1
        elif i in log.timed:
            assert result is None or isinstance(result, TimeoutError), (i, result, why)
            outcome["timed out" if result is not None else "ok"] += 1
        else:
            assert result is None, (i, result, why)
            outcome["ok"] += 1
    assert log.wrong == [], f"replies meant for other queries {log.wrong[:5]} {why}"
    gone = (outcome["cancelled"] + outcome["timed out"]) / n
    assert 0.25 <= gone <= 0.45, (outcome, why)

    # the cancellations really landed at each await point
    for how, phase in [
        ("cancel", "queued"),
        ("cancel", "ping"),
        ("cancel", "query"),
        ("wait_for", "queued"),
        ("wait_for", "query"),
    ]:
        assert log.landed[how, phase] > 0, (how, phase, log.landed, why)
    assert log.handoffs > 0, why
    if db.driver.resets_after_select:
        assert log.landed["cancel", "return"] > 0, (log.landed, why)
        assert stats.resets > 0
    assert stats.pings >= outcome["ok"]  # ping_window=0: every checkout that served pinged

    # afterwards: nothing in use, nobody waiting, everything idle or closed
    await settle(pool, STORM_POOL)
    assert_whole(pool, STORM_POOL)
    stats = pool.stats()
    assert stats.lost == 0 and stats.timeouts == 0, stats

    # the server never had more than max_size sessions the pool held, nor any session the
    # pool did not open; the ones it dropped went away promptly
    assert monitor.samples >= 20, monitor.samples
    assert monitor.held <= STORM_POOL, (monitor.held_ids, why)
    assert len(probe.opened) == stats.connects
    assert monitor.seen <= probe.opened, monitor.seen - probe.opened
    assert monitor.linger < 2.0, monitor.linger

    # what the server has now is exactly the pool's connections, and each of them is ready
    # for a query: not holding a reply meant for a cancelled task
    ids = await pool_ids(db, pool, STORM_POOL)
    await eventually(lambda: db.live_ids() == ids, "only the pool's sessions remain")
    conns = [await pool.getconn() for _ in range(STORM_POOL)]
    answers = [await db.echo(c, 1_000_000 + k) for k, c in enumerate(conns)]
    for c in conns:
        await pool.putconn(c)
    assert answers == [1_000_000 + k for k in range(STORM_POOL)]

    # and the pool still serves a crowd correctly
    async def echo(k: int) -> int:
        async with pool.connection() as conn:
            return await db.echo(conn, k)

    assert await asyncio.gather(*(echo(k) for k in range(500))) == list(range(500))
    await settle(pool, STORM_POOL)
    assert_whole(pool, STORM_POOL)
