"""The modes ``millpond bench`` compares: no pool, millpond, and the peer pools.

Every mode is reduced to the same three calls (borrow a connection as a context manager, count
the connections opened, close), so the request loop is identical for all of them and only the
pool differs. Each pool is used the way its documentation shows (its own context manager where
it has one, else its checkout/return pair), with its defaults except its size, and starts full
(warm): a run measures the steady state, not the pool filling up.

Peers are imported only when they run, through ``importlib`` (none of them is a dependency of
millpond, and several ship no type information).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import threading
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import millpond
from millpond.drivers import SyncAdapter
from millpond.drivers.async_base import AsyncAdapter

__all__ = [
    "ASYNC_MODES",
    "MODE_KEYS",
    "SYNC_MODES",
    "AsyncSession",
    "Mode",
    "SyncSession",
    "Target",
    "installed",
]

POOL_OPEN_TIMEOUT = 30.0  # seconds a pool may take to open its connections
POOL_CLOSE_TIMEOUT = 5.0


@dataclass
class Target:
    """What the modes connect to: the URL, millpond's adapter for it, and the same target in
    the forms the peers take."""

    url: str
    driver: str  # the adapter's name: psycopg, asyncpg, sqlite3, ...
    sync_adapter: SyncAdapter | None = None
    async_adapter: AsyncAdapter | None = None

    @property
    def libpq_url(self) -> str:
        # libpq, psycopg2 and asyncpg all read postgresql:// URLs themselves (several hosts,
        # query parameters); only the driver suffix of the scheme is millpond's
        return "postgresql://" + self.url.partition("://")[2]

    @property
    def mysql_kwargs(self) -> dict[str, Any]:
        parts = urlsplit("mysql://" + self.url.partition("://")[2])
        kwargs: dict[str, Any] = {}
        if parts.username:
            kwargs["user"] = unquote(parts.username)
        if parts.password is not None:
            kwargs["password"] = unquote(parts.password)
        if parts.hostname:
            kwargs["host"] = parts.hostname
        if parts.port:
            kwargs["port"] = parts.port
        database = unquote(parts.path.lstrip("/"))
        if database:
            kwargs["database"] = database
        for key, value in parse_qsl(parts.query):
            kwargs[key] = _query_value(value)
        return kwargs


def _query_value(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return int(value) if value.isdigit() else value


@dataclass
class SyncSession:
    borrow: Callable[[], AbstractContextManager[Any]]
    opened: Callable[[], int]  # connections opened so far
    close: Callable[[], None]


@dataclass
class AsyncSession:
    borrow: Callable[[], AbstractAsyncContextManager[Any]]
    opened: Callable[[], int]
    close: Callable[[], Awaitable[None]]


class _Pair:
    """A checkout/return pair as a context manager, for pools that offer no context manager;
    a class with slots, not @contextmanager, whose generator would cost microseconds."""

    __slots__ = ("_acquire", "_conn", "_release")

    def __init__(self, acquire: Callable[[], Any], release: Callable[[Any], Any]) -> None:
        self._acquire = acquire
        self._release = release

    def __enter__(self) -> Any:
        self._conn = self._acquire()
        return self._conn

    def __exit__(self, *exc: object) -> None:
        self._release(self._conn)


def _pairs(acquire: Callable[[], Any], release: Callable[[Any], Any]) -> Callable[[], _Pair]:
    return lambda: _Pair(acquire, release)


class _AsyncPair:
    __slots__ = ("_acquire", "_conn", "_release")

    def __init__(
        self, acquire: Callable[[], Awaitable[Any]], release: Callable[[Any], Awaitable[Any]]
    ) -> None:
        self._acquire = acquire
        self._release = release

    async def __aenter__(self) -> Any:
        self._conn = await self._acquire()
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        await self._release(self._conn)


@dataclass(frozen=True)
class Mode:
    key: str
    label: str
    pooled: bool
    asyncio: bool
    library: str | None = None  # what must be importable for it to run
    install: str | None = None  # the extra that brings it
    database: str | None = None  # postgresql / mysql; None: any database
    drivers: frozenset[str] | None = None  # driver names it runs on; None: any of its kind
    scheme: str | None = None  # the URL scheme that selects its driver, for the skip message
    note: str | None = None  # said under the table when it ran
    open_sync: Callable[[Target, int], SyncSession] | None = None
    open_async: Callable[[Target, int], Awaitable[AsyncSession]] | None = None


def installed(library: str) -> bool:
    try:
        return importlib.util.find_spec(library) is not None
    except (ImportError, ValueError):  # a parent package missing, or an import blocked
        return False


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


# -- synchronous modes ---------------------------------------------------------------------------


def _sync_adapter(target: Target) -> SyncAdapter:
    assert target.sync_adapter is not None
    return target.sync_adapter


def _nopool(target: Target, size: int) -> SyncSession:
    adapter = _sync_adapter(target)
    opened = _Counter()

    def acquire() -> Any:
        conn = adapter.connect()
        opened.add()
        return conn

    return SyncSession(_pairs(acquire, adapter.close), lambda: opened.value, lambda: None)


def _millpond(target: Target, size: int) -> SyncSession:
    pool = millpond.Pool(target.url, min_size=size, max_size=size, name=f"bench-{size}", open=False)
    try:
        pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT)
    except BaseException:
        pool.close(timeout=1)
        raise
    return SyncSession(
        pool.connection,
        lambda: pool.stats().connects,
        lambda: pool.close(timeout=POOL_CLOSE_TIMEOUT),
    )


class _Creator:
    """A connect function for SQLAlchemy and DBUtils that counts, opening connections with
    millpond's adapter so that every mode gets the same connections. ``dbapi`` tells DBUtils
    the driver module (thread safety, which errors mean a lost connection)."""

    def __init__(self, adapter: SyncAdapter, counter: _Counter) -> None:
        self.adapter = adapter
        self.counter = counter
        self.dbapi = adapter.module

    def __call__(self) -> Any:
        conn = self.adapter.connect()
        self.counter.add()
        return conn


def _close(conn: Any) -> None:
    conn.close()


def _sqlalchemy(target: Target, size: int) -> SyncSession:
    sa_pool = importlib.import_module("sqlalchemy.pool")
    opened = _Counter()
    pool = sa_pool.QueuePool(
        _Creator(_sync_adapter(target), opened),
        pool_size=size,
        max_overflow=0,
        timeout=POOL_OPEN_TIMEOUT,
    )
    try:
        _warm(pool.connect, _close, size)
    except BaseException:
        pool.dispose()
        raise
    # its connection proxy is a context manager whose exit returns it
    return SyncSession(pool.connect, lambda: opened.value, pool.dispose)


def _warm(acquire: Callable[[], Any], release: Callable[[Any], None], size: int) -> None:
    """Open a lazy pool's connections before the run: borrow ``size`` at once, return them."""
    conns: list[Any] = []
    try:
        for _ in range(size):
            conns.append(acquire())
    finally:
        for conn in conns:
            release(conn)


def _dbutils(target: Target, size: int) -> SyncSession:
    pooled_db = importlib.import_module("dbutils.pooled_db")
    opened = _Counter()
    # blocking=True: wait for a connection, as the other pools do, instead of failing
    pool = pooled_db.PooledDB(
        _Creator(_sync_adapter(target), opened),
        mincached=size,
        maxcached=size,
        maxconnections=size,
        blocking=True,
    )
    return SyncSession(pool.connection, lambda: opened.value, pool.close)


def _psycopg_pool(target: Target, size: int) -> SyncSession:
    psycopg_pool = importlib.import_module("psycopg_pool")
    opened = _Counter()
    pool = psycopg_pool.ConnectionPool(
        target.libpq_url,
        min_size=size,
        max_size=size,
        open=False,
        configure=lambda conn: opened.add(),
        name=f"bench-{size}",
    )
    try:
        pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT)
    except BaseException:
        pool.close(timeout=1)
        raise
    # connection(), as its documentation shows: it commits (or rolls back) before the return,
    # where a bare putconn() of a connection inside a transaction logs a warning every time
    return SyncSession(
        pool.connection, lambda: opened.value, lambda: pool.close(timeout=POOL_CLOSE_TIMEOUT)
    )


def _psycopg2_pool(target: Target, size: int) -> SyncSession:
    importlib.import_module("psycopg2")
    pool_module = importlib.import_module("psycopg2.pool")
    extensions = importlib.import_module("psycopg2.extensions")
    opened = _Counter()

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        extensions.connection.__init__(self, *args, **kwargs)
        opened.add()

    # psycopg2.pool opens connections itself; a connection_factory is its documented hook
    counting = type("CountingConnection", (extensions.connection,), {"__init__": init})
    pool = pool_module.ThreadedConnectionPool(
        size, size, target.libpq_url, connection_factory=counting
    )
    return SyncSession(_pairs(pool.getconn, pool.putconn), lambda: opened.value, pool.closeall)


def _mysqlconnector_pool(target: Target, size: int) -> SyncSession:
    pooling = importlib.import_module("mysql.connector.pooling")
    opened = _Counter()

    def add_connection(self: Any, cnx: Any = None) -> None:
        if cnx is None:  # the pool opens a new connection (else one comes back)
            opened.add()
        pooling.MySQLConnectionPool.add_connection(self, cnx)

    counting = type(
        "CountingPool", (pooling.MySQLConnectionPool,), {"add_connection": add_connection}
    )
    pool = counting(pool_size=size, pool_name=f"millpond_bench_{size}", **target.mysql_kwargs)

    def close() -> None:
        # the pool has no public close: take every idle connection out and close it for real
        # (attributes other than close() reach the driver's connection)
        while True:
            try:
                conn = pool.get_connection()
            except Exception:
                return
            with contextlib.suppress(Exception):
                conn.disconnect()

    # a pooled connection is a context manager whose exit returns it
    return SyncSession(pool.get_connection, lambda: opened.value, close)


# -- asyncio modes -------------------------------------------------------------------------------


def _async_adapter(target: Target) -> AsyncAdapter:
    assert target.async_adapter is not None
    return target.async_adapter


async def _nopool_async(target: Target, size: int) -> AsyncSession:
    adapter = _async_adapter(target)
    opened = _Counter()

    async def acquire() -> Any:
        conn = await adapter.connect()
        opened.add()
        return conn

    async def close() -> None:
        return None

    return AsyncSession(lambda: _AsyncPair(acquire, adapter.close), lambda: opened.value, close)


async def _millpond_async(target: Target, size: int) -> AsyncSession:
    pool = millpond.AsyncPool(target.url, min_size=size, max_size=size, name=f"bench-{size}")
    try:
        await pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT)
    except BaseException:
        await pool.close(timeout=1)
        raise

    async def close() -> None:
        await pool.close(timeout=POOL_CLOSE_TIMEOUT)

    return AsyncSession(pool.connection, lambda: pool.stats().connects, close)


async def _psycopg_pool_async(target: Target, size: int) -> AsyncSession:
    psycopg_pool = importlib.import_module("psycopg_pool")
    opened = _Counter()

    async def configure(conn: Any) -> None:
        opened.add()

    pool = psycopg_pool.AsyncConnectionPool(
        target.libpq_url,
        min_size=size,
        max_size=size,
        open=False,
        configure=configure,
        name=f"bench-{size}",
    )
    try:
        await pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT)
    except BaseException:
        await pool.close(timeout=1)
        raise

    async def close() -> None:
        await pool.close(timeout=POOL_CLOSE_TIMEOUT)

    return AsyncSession(pool.connection, lambda: opened.value, close)


async def _asyncpg_pool(target: Target, size: int) -> AsyncSession:
    asyncpg = importlib.import_module("asyncpg")
    opened = _Counter()

    async def init(conn: Any) -> None:
        opened.add()

    pool = await asyncio.wait_for(
        asyncpg.create_pool(target.libpq_url, min_size=size, max_size=size, init=init),
        POOL_OPEN_TIMEOUT,
    )

    async def close() -> None:
        try:
            await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT)
        except TimeoutError:
            pool.terminate()

    return AsyncSession(pool.acquire, lambda: opened.value, close)


async def _aiomysql_pool(target: Target, size: int) -> AsyncSession:
    aiomysql = importlib.import_module("aiomysql")
    kwargs = target.mysql_kwargs
    if "database" in kwargs:
        kwargs["db"] = kwargs.pop("database")
    pool = await asyncio.wait_for(
        aiomysql.create_pool(minsize=size, maxsize=size, **kwargs), POOL_OPEN_TIMEOUT
    )
    # aiomysql has no hook for new connections: count the distinct ones lent (the set keeps
    # them referenced, so no two share an id), with the `size` it opened at the start
    lent: set[int] = set()
    keep: list[Any] = []

    async def acquire() -> Any:
        conn = await pool.acquire()
        if id(conn) not in lent:
            lent.add(id(conn))
            keep.append(conn)
        return conn

    async def release(conn: Any) -> None:
        await pool.release(conn)

    async def close() -> None:
        pool.close()
        try:
            await asyncio.wait_for(pool.wait_closed(), POOL_CLOSE_TIMEOUT)
        except TimeoutError:
            pool.terminate()

    return AsyncSession(lambda: _AsyncPair(acquire, release), lambda: max(size, len(lent)), close)


# -- the registry --------------------------------------------------------------------------------

_NO_WAIT = "does not wait: a checkout while every connection is lent fails (counted as errors)"

SYNC_MODES: Sequence[Mode] = (
    Mode("nopool", "no pool", pooled=False, asyncio=False, open_sync=_nopool),
    Mode("millpond", "millpond Pool", pooled=True, asyncio=False, open_sync=_millpond),
    Mode(
        "sqlalchemy",
        "SQLAlchemy QueuePool",
        pooled=True,
        asyncio=False,
        library="sqlalchemy",
        install="peers",
        open_sync=_sqlalchemy,
    ),
    Mode(
        "dbutils",
        "DBUtils PooledDB",
        pooled=True,
        asyncio=False,
        library="dbutils",
        install="peers",
        open_sync=_dbutils,
    ),
    Mode(
        "psycopg_pool",
        "psycopg_pool",
        pooled=True,
        asyncio=False,
        library="psycopg_pool",
        install="peers",
        database="postgresql",
        drivers=frozenset({"psycopg"}),
        scheme="postgresql+psycopg",
        open_sync=_psycopg_pool,
    ),
    Mode(
        "psycopg2",
        "psycopg2.pool",
        pooled=True,
        asyncio=False,
        library="psycopg2",
        install="psycopg2",
        database="postgresql",
        drivers=frozenset({"psycopg2"}),
        scheme="postgresql+psycopg2",
        note=_NO_WAIT,
        open_sync=_psycopg2_pool,
    ),
    Mode(
        "mysqlconnector",
        "mysql-connector pool",
        pooled=True,
        asyncio=False,
        library="mysql.connector",
        install="mysql",
        database="mysql",
        drivers=frozenset({"mysql-connector"}),
        scheme="mysql+mysqlconnector",
        note=_NO_WAIT,
        open_sync=_mysqlconnector_pool,
    ),
)

ASYNC_MODES: Sequence[Mode] = (
    Mode("nopool", "no pool", pooled=False, asyncio=True, open_async=_nopool_async),
    Mode("millpond", "millpond AsyncPool", pooled=True, asyncio=True, open_async=_millpond_async),
    Mode(
        "psycopg_pool",
        "psycopg_pool",
        pooled=True,
        asyncio=True,
        library="psycopg_pool",
        install="peers",
        database="postgresql",
        drivers=frozenset({"psycopg-async"}),
        scheme="postgresql+psycopg",
        open_async=_psycopg_pool_async,
    ),
    Mode(
        "asyncpg",
        "asyncpg pool",
        pooled=True,
        asyncio=True,
        library="asyncpg",
        install="asyncpg",
        database="postgresql",
        drivers=frozenset({"asyncpg"}),
        scheme="postgresql+asyncpg",
        open_async=_asyncpg_pool,
    ),
    Mode(
        "aiomysql",
        "aiomysql pool",
        pooled=True,
        asyncio=True,
        library="aiomysql",
        install="aiomysql",
        database="mysql",
        drivers=frozenset({"aiomysql"}),
        scheme="mysql+aiomysql",
        open_async=_aiomysql_pool,
    ),
)

#: every mode key, in the order they run
MODE_KEYS: tuple[str, ...] = tuple(dict.fromkeys(m.key for m in (*SYNC_MODES, *ASYNC_MODES)))
