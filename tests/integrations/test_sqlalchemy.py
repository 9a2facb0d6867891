"""MillpondPool against SQLAlchemy's QueuePool, AsyncMillpondPool against AsyncAdaptedQueuePool.

Each differential test runs one scenario script against an engine built with the peer's pool
class and against one built with ours, on real PostgreSQL (psycopg 3 and psycopg2), MariaDB
(PyMySQL) and SQLite, and compares what the script observed: values, exception types and
message shapes, the order of pool events, and the number of server sessions the pool holds.
Sessions are counted from outside: each engine notes the backend id of every connection it
opens (a ``connect`` listener), and an admin connection counts which of those are alive.

Where millpond differs on purpose (listed in the docstring of
``millpond.integrations.sqlalchemy``) a test says so and checks each side on its own.

The servers come from ``tests/conftest.py``: unreachable means skipped, or failed under CI=true.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import Engine, String, event, func, select  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker  # noqa: E402
from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool, QueuePool  # noqa: E402

import millpond  # noqa: E402
from millpond.integrations.sqlalchemy import AsyncMillpondPool, MillpondPool  # noqa: E402

EVENTS = (
    "first_connect",
    "connect",
    "checkout",
    "checkin",
    "reset",
    "invalidate",
    "soft_invalidate",
    "close",
    "detach",
    "close_detached",
)
TIMEOUT_SHAPE = re.compile(
    r"^(\w+) limit of size (\d+) overflow (-?\d+) reached, connection timed out, "
    r"timeout (\d+\.\d\d)"
)


class Boom(Exception):
    pass


def wait_until(cond: Callable[[], bool], what: str, limit: float = 5.0) -> None:
    """A bound on background work (closes, kills), not a timing assertion."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {limit}s: {what}")
        time.sleep(0.005)


# -- backends --------------------------------------------------------------------------------


class Db:
    """One backend: the SQLAlchemy URL, and (with a server) an admin connection to count and
    kill the sessions of the engines built here."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url
        self.admin: Any = None
        self.id_sql = {
            "postgres": "SELECT pg_backend_pid()",
            "mysql": "SELECT CONNECTION_ID()",
        }.get(kind)
        self._ids: dict[int, list[int]] = {}
        self.engines: list[Any] = []
        if kind == "postgres":
            import psycopg

            self.admin = psycopg.connect(_plain(url), autocommit=True)
        elif kind == "mysql":
            import pymysql

            u = sa.make_url(url)
            self.admin = pymysql.connect(
                host=u.host,
                port=u.port or 3306,
                user=u.username,
                password=u.password or "",
                database=u.database,
                autocommit=True,
            )

    @property
    def has_server(self) -> bool:
        return self.admin is not None

    def engine(self, poolclass: type[Pool], **kw: Any) -> Engine:
        kw.setdefault("pool_timeout", 5)
        engine = sa.create_engine(self.url, poolclass=poolclass, **kw)
        self._track(engine)
        self.engines.append(engine)
        return engine

    def _track(self, engine: Any) -> None:
        ids = self._ids.setdefault(id(engine), [])
        sql = self.id_sql
        if sql is None:
            return

        @event.listens_for(engine, "connect")
        def note_session(dbapi_conn: Any, record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(sql)
            ids.append(cur.fetchone()[0])
            cur.close()
            dbapi_conn.rollback()

    def sessions(self, engine: Any, settled: int | None = None) -> int | None:
        """How many sessions the engine opened are still alive on the server. With
        ``settled``, wait (boundedly) for that count first: a backend outlives the client's
        close by a few milliseconds, whichever pool closed it."""
        if not self.has_server:
            return None
        deadline = time.monotonic() + 5.0
        count = self._count(engine)
        while settled is not None and count != settled and time.monotonic() < deadline:
            time.sleep(0.01)
            count = self._count(engine)
        return count

    def _count(self, engine: Any) -> int:
        ids = list(self._ids[id(engine)])
        if not ids:
            return 0
        if self.kind == "postgres":
            row = self.admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (ids,)
            ).fetchone()
        else:
            with self.admin.cursor() as cur:
                marks = ",".join(["%s"] * len(ids))
                cur.execute(
                    f"SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID IN ({marks})",
                    ids,
                )
                row = cur.fetchone()
        return int(row[0])

    def kill(self, session: int) -> None:
        if self.kind == "postgres":
            self.admin.execute("SELECT pg_terminate_backend(%s)", (session,))
        else:
            with self.admin.cursor() as cur:
                cur.execute("KILL %s", (session,))

    def close(self) -> None:
        for engine in self.engines:
            engine.dispose()
        if self.admin is not None:
            self.admin.close()


def _plain(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


BACKENDS = [
    pytest.param(("postgres", "postgresql+psycopg"), id="psycopg", marks=pytest.mark.postgres),
    pytest.param(("postgres", "postgresql+psycopg2"), id="psycopg2", marks=pytest.mark.postgres),
    pytest.param(("mysql", "mysql+pymysql"), id="pymysql", marks=pytest.mark.mysql),
    pytest.param(("sqlite", "sqlite"), id="sqlite"),
]
SERVER_BACKENDS = BACKENDS[:3]


@pytest.fixture
def db(request: pytest.FixtureRequest) -> Iterator[Db]:
    kind, driver = request.param
    if kind == "postgres":
        base = sa.make_url(request.getfixturevalue("pg_url"))
        url = base.set(drivername=driver).render_as_string(hide_password=False)
    elif kind == "mysql":
        base = sa.make_url(request.getfixturevalue("mysql_url"))
        url = base.set(drivername=driver).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{request.getfixturevalue('sqlite_path')}"
    backend = Db(kind, url)
    try:
        yield backend
    finally:
        backend.close()


def gauges(pool: Any) -> tuple[int, int, int, int, str]:
    return pool.size(), pool.checkedin(), pool.overflow(), pool.checkedout(), pool.status()


def quiesce(engine: Any) -> None:
    """Wait for millpond's background closes (QueuePool closes in the returning thread)."""
    pool = engine.pool
    if isinstance(pool, MillpondPool):
        assert pool._mp_records.settle(lambda: pool.stats().size, 5.0)


def record_events(pool: Any) -> list[str]:
    seen: list[str] = []
    for name in EVENTS:
        event.listen(pool, name, lambda *args, name=name: seen.append(name))
    return seen


def sqlalchemy_type(exc: BaseException) -> type[BaseException]:
    """The most derived SQLAlchemy class of ``exc``: millpond's errors subclass SQLAlchemy's
    (``PoolTimeoutError`` is a ``sqlalchemy.exc.TimeoutError``) and compare as those."""
    return next(c for c in type(exc).__mro__ if c.__module__.startswith("sqlalchemy"))


def timeout_shape(exc: BaseException) -> tuple[Any, ...]:
    """The parts of QueuePool's timeout message, with the pool's class name left out."""
    m = TIMEOUT_SHAPE.match(str(exc))
    assert m is not None, str(exc)
    return sqlalchemy_type(exc), getattr(exc, "code", None), m.group(2), m.group(3), m.group(4)


def differential(script: Callable[[type[Pool]], Any], ours: type[Pool] = MillpondPool) -> Any:
    peer = script(QueuePool)
    mine = script(ours)
    assert mine == peer
    return mine


# -- sizing, waiting, timeouts ---------------------------------------------------------------


@pytest.mark.parametrize("db", BACKENDS, indirect=True)
def test_exhaustion_timeout_and_overflow(db: Db) -> None:
    def script(cls: type[Pool]) -> dict[str, Any]:
        engine = db.engine(cls, pool_size=2, max_overflow=1, pool_timeout=0.2)
        pool = engine.pool
        seen: dict[str, Any] = {"start": gauges(pool)}
        held = []
        for n in range(3):
            held.append(engine.connect())
            seen[f"out{n + 1}"] = gauges(pool)
        seen["sessions_all_out"] = db.sessions(engine)
        started = time.monotonic()
        with pytest.raises(sa.exc.TimeoutError) as info:
            engine.connect()
        seen["waited_for_timeout"] = 0.2 <= time.monotonic() - started < 3.0
        seen["error"] = timeout_shape(info.value)
        seen["after_timeout"] = gauges(pool)
        for conn in held:
            conn.close()
        quiesce(engine)
        seen["all_back"] = gauges(pool)
        seen["sessions_all_back"] = db.sessions(engine, settled=2)
        return seen

    seen = differential(script)
    assert seen["out3"][:4] == (2, 0, 1, 3)
    assert seen["all_back"][:4] == (2, 2, 0, 0)
    assert seen["error"][1:] == ("3o7r", "2", "1", "0.20")
    if db.has_server:
        assert (seen["sessions_all_out"], seen["sessions_all_back"]) == (3, 2)


def test_timeout_message_names_the_class_and_adds_diagnostics(tmp_path: Any) -> None:
    engine = sa.create_engine(
        f"sqlite:///{tmp_path / 'x.sqlite'}",
        poolclass=MillpondPool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0,
    )
    try:
        with engine.connect(), pytest.raises(sa.exc.TimeoutError) as info:
            engine.connect()
        text = str(info.value)
        assert text.startswith("MillpondPool limit of size 1 overflow 0 reached")
        assert "in_use=1" in text
        assert isinstance(info.value.__cause__, millpond.PoolTimeout)
    finally:
        engine.dispose()


def test_checkout_errors_are_sqlalchemys_and_millponds(tmp_path: Any) -> None:
    """Code written for QueuePool catches ``sqlalchemy.exc.TimeoutError``; code written for
    millpond catches ``millpond.PoolTimeout`` (a builtin ``TimeoutError``): both work."""
    from millpond.integrations.sqlalchemy import PoolTimeoutError, TooManyWaitersError

    def engine_for(timeout: float) -> Engine:
        return sa.create_engine(
            f"sqlite:///{tmp_path / 'x.sqlite'}",
            poolclass=MillpondPool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=timeout,
            max_waiting=1,
        )

    engine = engine_for(0.05)
    try:
        with engine.connect():
            for caught in (sa.exc.TimeoutError, millpond.PoolTimeout, TimeoutError):
                with pytest.raises(caught) as info:
                    engine.connect()
                assert type(info.value) is PoolTimeoutError
                assert info.value.code == "3o7r"
                assert isinstance(info.value.__cause__, millpond.PoolTimeout)
    finally:
        engine.dispose()

    engine = engine_for(10)
    try:
        served: list[Any] = []

        def wait_in_line() -> None:
            with engine.connect() as conn:
                served.append(conn.exec_driver_sql("SELECT 1").scalar())

        waiter = threading.Thread(target=wait_in_line)
        with engine.connect():
            waiter.start()
            wait_until(lambda: engine.pool.stats().waiting == 1, "a caller queued")
            # max_waiting=1 and one caller queued: the next ones are shed at once
            for caught in (sa.exc.TimeoutError, millpond.TooManyWaiters):
                with pytest.raises(caught) as shed:
                    engine.connect()
                assert type(shed.value) is TooManyWaitersError
                assert "too many callers waiting" in str(shed.value)
        waiter.join(10)
        assert served == [1] and engine.pool.stats().shed == 2
    finally:
        engine.dispose()


def test_pool_timeout_none_waits_for_a_return() -> None:
    """QueuePool waits forever with ``pool_timeout=None``; millpond used to refuse it."""
    import sqlite3

    def script(cls: type[Pool]) -> tuple[Any, ...]:
        engine = sa.create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(":memory:", check_same_thread=False),
            poolclass=cls,
            pool_size=1,
            max_overflow=0,
            pool_timeout=None,
        )
        try:
            held = engine.connect()
            got: list[Any] = []

            def borrow() -> None:
                with engine.connect() as conn:
                    got.append(conn.exec_driver_sql("SELECT 1").scalar())

            waiter = threading.Thread(target=borrow)
            waiter.start()
            # longer than any default bound millpond has (ping, connect backoff): still waiting
            waiter.join(1.5)
            still_waiting = waiter.is_alive() and not got
            held.close()
            waiter.join(10)
            return engine.pool.timeout(), still_waiting, got
        finally:
            engine.dispose()

    assert differential(script) == (None, True, [1])


def test_pool_timeout_bounds_the_wait_for_a_return_not_the_connect(tmp_path: Any) -> None:
    """QueuePool connects in the caller with no bound but the driver's, whatever pool_timeout
    says (0 included: never queue, but do connect)."""
    import sqlite3

    path = str(tmp_path / "slow.sqlite")

    def slow_connect() -> Any:
        time.sleep(0.2)
        return sqlite3.connect(path, check_same_thread=False)

    def script(cls: type[Pool]) -> list[Any]:
        seen = []
        for timeout in (0, 0.05):
            engine = sa.create_engine(
                "sqlite://",
                creator=slow_connect,
                poolclass=cls,
                pool_size=1,
                max_overflow=0,
                pool_timeout=timeout,
            )
            try:
                with engine.connect() as conn:
                    seen.append(conn.exec_driver_sql("SELECT 1").scalar())
                    with pytest.raises(sa.exc.TimeoutError):  # at the limit: no waiting
                        engine.connect()
                seen.append(gauges(engine.pool)[:4])
            finally:
                engine.dispose()
        return seen

    assert differential(script) == [1, (1, 1, 0, 0), 1, (1, 1, 0, 0)]


@pytest.mark.parametrize("db", [BACKENDS[0], BACKENDS[3]], indirect=True)
def test_overflow_surplus_closes_at_first_return(db: Db) -> None:
    """A documented difference: QueuePool keeps returned connections until pool_size are idle
    and then closes a later one; millpond closes the surplus at the first return."""

    def script(cls: type[Pool]) -> tuple[Any, ...]:
        sessions_one_back = 3 if cls is QueuePool else 2
        engine = db.engine(cls, pool_size=1, max_overflow=2)
        held = [engine.connect() for _ in range(3)]
        held.pop().close()
        quiesce(engine)
        one_back = gauges(engine.pool)[:4], db.sessions(engine, settled=sessions_one_back)
        for conn in held:
            conn.close()
        quiesce(engine)
        return one_back, (gauges(engine.pool)[:4], db.sessions(engine, settled=1))

    peer, mine = script(QueuePool), script(MillpondPool)
    server = db.has_server
    assert peer[0] == ((1, 1, 2, 2), 3 if server else None)
    assert mine[0] == ((1, 0, 1, 2), 2 if server else None)
    assert peer[1] == mine[1] == ((1, 1, 0, 0), 1 if server else None)


@pytest.mark.parametrize("db", [BACKENDS[0], BACKENDS[3]], indirect=True)
def test_a_waiter_is_served_by_a_return(db: Db) -> None:
    def script(cls: type[Pool]) -> tuple[Any, ...]:
        engine = db.engine(cls, pool_size=1, max_overflow=0, pool_timeout=10)
        held = engine.connect()
        got: list[Any] = []

        def wait() -> None:
            with engine.connect() as conn:
                got.append(conn.exec_driver_sql("SELECT 1").scalar())

        t = threading.Thread(target=wait)
        started = time.monotonic()
        t.start()
        time.sleep(0.05)  # let it block; what is checked is that a return serves it
        held.close()
        t.join(10)
        return got, time.monotonic() - started < 5, gauges(engine.pool)[:4]

    assert differential(script) == ([1], True, (1, 1, 0, 0))


@pytest.mark.parametrize("db", [BACKENDS[3]], indirect=True)
def test_waiters_are_served_in_arrival_order(db: Db) -> None:
    engine = db.engine(MillpondPool, pool_size=1, max_overflow=0, pool_timeout=10)
    held = engine.connect()
    order: list[int] = []
    threads = []
    for n in range(4):

        def wait(n: int = n) -> None:
            with engine.connect():
                order.append(n)
                time.sleep(0.01)

        t = threading.Thread(target=wait)
        t.start()
        threads.append(t)
        wait_until(lambda n=n: engine.pool.stats().waiting == n + 1, f"waiter {n} queued")
    held.close()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3]


@pytest.mark.parametrize("db", [BACKENDS[3]], indirect=True)
def test_unbounded_sizes(db: Db) -> None:
    """pool_size=0 (no limit at all) and max_overflow=-1 (no limit on overflow)."""

    def script(cls: type[Pool]) -> list[Any]:
        seen = []
        for size, overflow in ((0, 10), (1, -1)):
            engine = db.engine(cls, pool_size=size, max_overflow=overflow, pool_timeout=0.1)
            held = [engine.connect() for _ in range(12)]
            seen.append(gauges(engine.pool))
            for conn in held:
                conn.close()
            quiesce(engine)
            seen.append(gauges(engine.pool))
        return seen

    differential(script)


@pytest.mark.parametrize("db", [BACKENDS[0], BACKENDS[3]], indirect=True)
def test_connect_failure_raises_the_engines_error(db: Db) -> None:
    url = sa.make_url(db.url)
    # a directory that does not exist; a port nothing listens on
    url = url.set(database="/nonexistent-dir/mp.sqlite") if db.kind == "sqlite" else url.set(port=1)

    def script(cls: type[Pool]) -> list[Any]:
        engine = sa.create_engine(url, poolclass=cls, pool_timeout=5)
        try:
            seen = []
            for _ in range(2):  # the second one falls in millpond's backoff
                with pytest.raises(sa.exc.DBAPIError) as info:
                    engine.connect()
                seen.append((type(info.value), type(info.value.orig).__name__))
            seen.append(gauges(engine.pool)[:4])
            return seen
        finally:
            engine.dispose()

    seen = differential(script)
    assert seen[0][0] is sa.exc.OperationalError


# -- lifetimes, pre-ping, invalidation -------------------------------------------------------


@pytest.mark.parametrize("db", BACKENDS, indirect=True)
def test_recycle(db: Db) -> None:
    def script(cls: type[Pool]) -> tuple[Any, ...]:
        engine = db.engine(cls, pool_size=1, max_overflow=0, pool_recycle=0.5)
        with engine.connect() as conn:
            first = conn.connection.dbapi_connection
        with engine.connect() as conn:
            reused = conn.connection.dbapi_connection is first
        time.sleep(0.6)
        with engine.connect() as conn:
            recycled = conn.connection.dbapi_connection is not first
            conn.exec_driver_sql("SELECT 1")
        quiesce(engine)
        return reused, recycled, gauges(engine.pool)[:4], db.sessions(engine, settled=1)

    assert differential(script)[:2] == (True, True)


@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre_ping", "no_pre_ping"])
@pytest.mark.parametrize("db", SERVER_BACKENDS, indirect=True)
def test_backend_kill(db: Db, pre_ping: bool) -> None:
    """With pre-ping the next checkout notices and reconnects; without, the first statement
    fails as a disconnect, the connection is invalidated and replaced."""
    assert db.id_sql is not None

    def script(cls: type[Pool]) -> dict[str, Any]:
        engine = db.engine(cls, pool_size=1, max_overflow=0, pool_pre_ping=pre_ping)
        with engine.connect() as conn:
            victim = conn.exec_driver_sql(db.id_sql).scalar()
            conn.connection.record_info["slot"] = "kept"
        db.kill(victim)
        wait_until(lambda: db.sessions(engine) == 0, "the killed session is gone")
        events = record_events(engine.pool)
        seen: dict[str, Any] = {}
        if not pre_ping:
            with pytest.raises(sa.exc.DBAPIError) as info, engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            seen["error"] = type(info.value), info.value.connection_invalidated
        with engine.connect() as conn:
            seen["new_session"] = conn.exec_driver_sql(db.id_sql).scalar() != victim
            seen["record_info"] = conn.connection.record_info.get("slot")
        quiesce(engine)
        seen["events"] = events
        seen["gauges"] = gauges(engine.pool)[:4]
        seen["sessions"] = db.sessions(engine, settled=1)
        return seen

    seen = differential(script)
    assert seen["new_session"] and seen["sessions"] == 1
    assert seen["record_info"] == "kept"
    if not pre_ping:
        assert seen["error"] == (sa.exc.OperationalError, True)
    assert "invalidate" in seen["events"]


@pytest.mark.parametrize("db", BACKENDS, indirect=True)
def test_events_fire_in_queuepool_order(db: Db) -> None:
    def script(cls: type[Pool]) -> tuple[Any, ...]:
        engine = db.engine(cls, pool_size=1, max_overflow=0)
        events = record_events(engine.pool)
        with engine.connect() as conn:  # first_connect, connect, checkout, reset, checkin
            conn.exec_driver_sql("SELECT 1")
            conn.connection.record_info["slot"] = 1
        with engine.connect() as conn:  # invalidate, close, checkin
            conn.invalidate()
        with engine.connect() as conn:  # a new connection for the same slot
            conn.connection.invalidate(soft=True)
            after_invalidate = conn.connection.record_info.get("slot")
        with engine.connect():  # the soft-invalidated one reconnects at checkout
            pass
        conn = engine.connect()  # detach, then the detached connection closes itself
        conn.connection.detach()
        conn.close()
        with engine.connect() as conn:
            after_detach = conn.connection.record_info.get("slot")
        engine.dispose()
        return events, after_invalidate, after_detach, db.sessions(engine, settled=0)

    events, *rest = differential(script)
    assert events[:5] == ["first_connect", "connect", "checkout", "reset", "checkin"]
    assert rest == [1, 1, 0 if db.has_server else None]


# -- dispose, recreate, garbage --------------------------------------------------------------


@pytest.mark.parametrize("db", BACKENDS, indirect=True)
def test_dispose_and_recreate(db: Db) -> None:
    def script(cls: type[Pool]) -> dict[str, Any]:
        engine = db.engine(
            cls,
            pool_size=3,
            max_overflow=2,
            pool_timeout=7,
            pool_pre_ping=True,
            pool_recycle=3600,
        )
        events = record_events(engine.pool)
        a, b = engine.connect(), engine.connect()
        a.close()
        b.close()
        old = engine.pool
        seen: dict[str, Any] = {"before": db.sessions(engine)}
        engine.dispose()
        seen["closed_by_dispose"] = events.count("close")  # done, not just begun
        seen["after"] = db.sessions(engine, settled=0)
        seen["old_status"] = old.status()
        new = engine.pool
        seen["new_pool"] = (
            type(new) is cls,
            new is not old,
            new.size(),
            new.timeout(),
            new._pre_ping,
            new.status(),
        )
        with engine.connect() as conn:  # listeners carried over to the new pool
            conn.exec_driver_sql("SELECT 1")
        seen["events"] = events
        seen["recreated"] = type(new.recreate()) is cls
        return seen

    seen = differential(script)
    assert seen["closed_by_dispose"] == 2
    if db.has_server:
        assert (seen["before"], seen["after"]) == (2, 0)
    assert seen["new_pool"][:5] == (True, True, 3, 7, True)
    assert seen["events"][-3:] == ["checkout", "reset", "checkin"]


@pytest.mark.parametrize("db", [BACKENDS[0], BACKENDS[3]], indirect=True)
def test_dispose_with_a_connection_checked_out(db: Db) -> None:
    """A documented difference: QueuePool forgets the checked-out connection (it goes back to
    the old pool and stays open); millpond counts it until it comes back, then closes it."""

    def script(cls: type[Pool]) -> tuple[Any, ...]:
        engine = db.engine(cls, pool_size=2, max_overflow=0)
        out = engine.connect()
        engine.connect().close()
        old = engine.pool
        engine.dispose()
        during = gauges(old)[:4]
        out.close()
        if isinstance(old, MillpondPool):
            assert old._mp_records.settle(lambda: old.stats().size, 5.0)
        return during, gauges(old)[:4], db.sessions(engine, settled=1 if cls is QueuePool else 0)

    peer, mine = script(QueuePool), script(MillpondPool)
    # QueuePool's count of checked-out connections goes negative once the forgotten one is back
    assert peer[:2] == ((2, 0, -2, 0), (2, 1, -2, -1))
    assert mine[:2] == ((2, 0, -1, 1), (2, 0, -2, 0))
    if db.has_server:
        assert (peer[2], mine[2]) == (1, 0)


@pytest.mark.parametrize("db", [BACKENDS[0], BACKENDS[3]], indirect=True)
def test_a_connection_collected_in_a_cycle_comes_back(db: Db) -> None:
    """Returns from the garbage collector must not take millpond's lock in place."""

    def script(cls: type[Pool]) -> tuple[Any, ...]:
        engine = db.engine(cls, pool_size=1, max_overflow=0, pool_timeout=5)
        conn = engine.connect()
        conn.exec_driver_sql("SELECT 1")
        cycle: list[Any] = [conn]
        cycle.append(cycle)
        del conn, cycle
        gc.collect()
        wait_until(lambda: engine.pool.checkedout() == 0, "the collected connection is back")
        with engine.connect() as again:
            again.exec_driver_sql("SELECT 1")
        return gauges(engine.pool)[:4]

    assert differential(script) == (1, 1, 0, 0)


# the pool's threads are alive at fork() on purpose: that is the case under test (Python 3.12+
# warns about it)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("db", [BACKENDS[0]], indirect=True)
def test_a_forked_child_opens_its_own_connections(db: Db) -> None:
    """A gain: QueuePool would hand the child the parent's connection (one socket, two
    processes) unless the child calls engine.dispose(close=False) first."""
    assert db.id_sql is not None
    engine = db.engine(MillpondPool, pool_size=2, max_overflow=0)
    with engine.connect() as conn:
        parent_session = conn.exec_driver_sql(db.id_sql).scalar()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which reports by exit code
        code = 3
        try:
            with engine.connect() as conn:
                own = conn.exec_driver_sql(db.id_sql).scalar() != parent_session
            dropped = engine.connect()  # the garbage collector's returns work in the child
            cycle: list[Any] = [dropped]
            cycle.append(cycle)
            del dropped, cycle
            gc.collect()
            deadline = time.monotonic() + 5
            while engine.pool.checkedout() and time.monotonic() < deadline:
                time.sleep(0.005)
            code = 0 if own and engine.pool.checkedout() == 0 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with engine.connect() as conn:  # the parent's connection was not touched
        assert conn.exec_driver_sql(db.id_sql).scalar() == parent_session


# -- ORM and Core ----------------------------------------------------------------------------


@pytest.mark.parametrize("db", BACKENDS, indirect=True)
def test_orm_session(db: Db) -> None:
    def script(cls: type[Pool]) -> dict[str, Any]:
        engine = db.engine(cls, pool_size=2, max_overflow=0)
        table = f"mp_sa_items_{uuid.uuid4().hex[:10]}"

        class Base(DeclarativeBase):
            pass

        class Item(Base):
            __tablename__ = table
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str] = mapped_column(String(50))

        Base.metadata.create_all(engine)
        seen: dict[str, Any] = {}
        try:
            make_session = sessionmaker(engine)
            with make_session() as s:
                s.add_all([Item(name="a"), Item(name="b")])
                s.commit()
            with make_session() as s:
                s.add(Item(name="c"))
                s.flush()
                seen["inside"] = s.scalar(select(func.count()).select_from(Item))
                s.rollback()
            with make_session.begin() as s:
                s.add(Item(name="d"))
            with pytest.raises(Boom), make_session.begin() as s:
                s.add(Item(name="e"))
                s.flush()
                raise Boom
            with make_session() as s:
                seen["names"] = sorted(s.scalars(select(Item.name)))
                seen["during"] = engine.pool.checkedout()
            seen["after"] = gauges(engine.pool)[:4]
        finally:
            Base.metadata.drop_all(engine)
        return seen

    assert differential(script) == {
        "inside": 3,
        "names": ["a", "b", "d"],
        "during": 1,
        "after": (2, 1, -1, 0),
    }


@pytest.mark.parametrize("db", BACKENDS, indirect=True)
def test_core(db: Db) -> None:
    def script(cls: type[Pool]) -> dict[str, Any]:
        engine = db.engine(cls, pool_size=2, max_overflow=0)
        md = sa.MetaData()
        t = sa.Table(
            f"mp_sa_core_{uuid.uuid4().hex[:10]}",
            md,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("v", sa.String(20)),
        )
        md.create_all(engine)
        seen: dict[str, Any] = {}
        try:
            with engine.begin() as conn:
                conn.execute(t.insert(), [{"id": 1, "v": "x"}, {"id": 2, "v": "y"}])
            with engine.connect() as conn:
                trans = conn.begin()
                conn.execute(t.insert(), {"id": 3, "v": "z"})
                trans.rollback()
                seen["rows"] = conn.execute(select(t.c.v).order_by(t.c.id)).scalars().all()
                seen["param"] = conn.execute(
                    sa.text(f"SELECT v FROM {t.name} WHERE id = :i"), {"i": 2}
                ).scalar()
            with engine.connect() as conn:  # uncommitted work is rolled back on return
                conn.execute(t.insert(), {"id": 4, "v": "w"})
            raw = engine.raw_connection()  # the DBAPI-level path
            cur = raw.cursor()
            cur.execute(f"SELECT count(*) FROM {t.name}")
            seen["raw_count"] = cur.fetchone()[0]
            cur.close()
            raw.close()
            seen["after"] = gauges(engine.pool)[:4]
        finally:
            md.drop_all(engine)
        return seen

    assert differential(script) == {
        "rows": ["x", "y"],
        "param": "y",
        "raw_count": 2,
        "after": (2, 1, -1, 0),
    }


# -- millpond's extensions, and engine plumbing ----------------------------------------------


@pytest.mark.parametrize("db", [BACKENDS[3]], indirect=True)
def test_extensions_pass_through_create_engine(db: Db, caplog: pytest.LogCaptureFixture) -> None:
    engine = db.engine(
        MillpondPool,
        pool_size=2,
        max_overflow=0,
        min_size=1,
        max_uses=2,
        leak_timeout=0.05,
        max_idle=60,
        keepalive=30,
        max_waiting=3,
    )
    pool = engine.pool
    st = pool.stats()
    assert (st.min_size, st.max_size, st.max_overflow) == (1, 2, 0)
    raws = []
    for _ in range(3):
        with engine.connect() as conn:
            raws.append(conn.connection.dbapi_connection)
    assert raws[0] is raws[1] and raws[2] is not raws[0]  # max_uses=2
    assert pool.stats().closed_by_reason.get("max_uses") == 1
    with caplog.at_level(logging.WARNING, logger="millpond"), engine.connect():
        time.sleep(0.1)
        pool._mp._maintain()  # the housekeeper's pass, run now rather than waited for
    assert pool.stats().leaks == 1
    assert any("leak_timeout" in r.getMessage() for r in caplog.records)
    clone = pool.recreate()
    assert clone.stats().max_overflow == 0 and clone._mp_extras == pool._mp_extras


def test_pool_classes_refuse_the_wrong_kind_of_engine() -> None:
    pytest.importorskip("asyncpg")
    from sqlalchemy.ext.asyncio import create_async_engine

    with pytest.raises(sa.exc.ArgumentError):
        create_async_engine("postgresql+asyncpg://u@127.0.0.1/db", poolclass=MillpondPool)
    with pytest.raises(sa.exc.ArgumentError):
        sa.create_engine("postgresql+psycopg://u@127.0.0.1/db", poolclass=AsyncMillpondPool)
    with pytest.raises(millpond.ConfigError):
        sa.create_engine("sqlite://", poolclass=MillpondPool, pool_timeout=-1)


@pytest.mark.parametrize(
    ("kw", "named"),
    [
        ({"pool_timeout": -1}, "pool_timeout=-1"),
        ({"pool_timeout": "30"}, "pool_timeout='30'"),
        ({"pool_size": -1}, "pool_size=-1"),
        ({"pool_size": 2.5}, "pool_size=2.5"),
        ({"max_overflow": "x"}, "max_overflow='x'"),
        ({"pool_recycle": "1h"}, "pool_recycle='1h'"),
        ({"max_idle": -1}, "max_idle=-1"),
    ],
)
def test_bad_arguments_raise_sqlalchemys_argument_error(kw: dict[str, Any], named: str) -> None:
    """Named as create_engine spells them, and catchable as either library's error."""
    from millpond.integrations.sqlalchemy import PoolArgumentError

    with pytest.raises(sa.exc.ArgumentError) as info:
        sa.create_engine("sqlite://", poolclass=MillpondPool, **kw)
    assert type(info.value) is PoolArgumentError
    assert isinstance(info.value, millpond.ConfigError)
    assert str(info.value).startswith(named), str(info.value)


# -- the async twin, on asyncpg --------------------------------------------------------------


@pytest.fixture
def adb(pg_url: str) -> Iterator[Db]:
    pytest.importorskip("asyncpg")
    pytest.importorskip("greenlet")
    url = sa.make_url(pg_url).set(drivername="postgresql+asyncpg")
    backend = Db("postgres", url.render_as_string(hide_password=False))
    try:
        yield backend
    finally:
        backend.admin.close()


def async_engine(db: Db, cls: type[Pool], **kw: Any) -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine

    kw.setdefault("pool_timeout", 5)
    engine = create_async_engine(db.url, poolclass=cls, **kw)
    db._track(engine.sync_engine)
    return engine


def async_sessions(db: Db, engine: Any, settled: int | None = None) -> int | None:
    return db.sessions(engine.sync_engine, settled)


async def aquiesce(engine: Any) -> None:
    pool = engine.pool
    if isinstance(pool, AsyncMillpondPool):
        deadline = time.monotonic() + 5
        while pool._mp_records.unsettled(pool.stats().size):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)


def async_differential(script: Callable[[type[Pool]], Any]) -> Any:
    peer = asyncio.run(script(AsyncAdaptedQueuePool))
    mine = asyncio.run(script(AsyncMillpondPool))
    assert mine == peer
    return mine


@pytest.mark.postgres
def test_async_exhaustion_timeout_and_status(adb: Db) -> None:
    async def script(cls: type[Pool]) -> dict[str, Any]:
        engine = async_engine(adb, cls, pool_size=2, max_overflow=1, pool_timeout=0.2)
        try:
            pool = engine.pool
            seen: dict[str, Any] = {"start": gauges(pool)}
            held = []
            for n in range(3):
                held.append(await engine.connect())
                seen[f"out{n + 1}"] = gauges(pool)
            seen["sessions_all_out"] = async_sessions(adb, engine)
            with pytest.raises(sa.exc.TimeoutError) as info:
                await engine.connect()
            seen["error"] = timeout_shape(info.value)
            for conn in held:
                await conn.close()
            await aquiesce(engine)
            seen["all_back"] = gauges(pool)
            seen["sessions_all_back"] = async_sessions(adb, engine, settled=2)
            return seen
        finally:
            await engine.dispose()

    seen = async_differential(script)
    assert seen["out3"][:4] == (2, 0, 1, 3) and seen["all_back"][:4] == (2, 2, 0, 0)
    assert (seen["sessions_all_out"], seen["sessions_all_back"]) == (3, 2)


@pytest.mark.postgres
def test_async_events_pre_ping_and_invalidation(adb: Db) -> None:
    async def script(cls: type[Pool]) -> dict[str, Any]:
        engine = async_engine(adb, cls, pool_size=1, max_overflow=0, pool_pre_ping=True)
        events = record_events(engine.sync_engine.pool)
        seen: dict[str, Any] = {}
        async with engine.connect() as conn:
            victim = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
        adb.kill(victim)
        wait_until(lambda: async_sessions(adb, engine) == 0, "the killed session is gone")
        async with engine.connect() as conn:  # the pre-ping notices and reconnects
            seen["reconnected"] = (await conn.exec_driver_sql("SELECT 1")).scalar()
        async with engine.connect() as conn:
            await conn.invalidate()
        async with engine.connect() as conn:
            seen["replaced"] = (await conn.exec_driver_sql("SELECT 1")).scalar()
        await engine.dispose()
        seen["events"] = events
        seen["sessions"] = async_sessions(adb, engine, settled=0)
        return seen

    seen = async_differential(script)
    assert seen["sessions"] == 0 and "invalidate" in seen["events"]


@pytest.mark.postgres
def test_async_orm(adb: Db) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    async def script(cls: type[Pool]) -> dict[str, Any]:
        engine = async_engine(adb, cls, pool_size=2, max_overflow=0)
        table = f"mp_sa_aitems_{uuid.uuid4().hex[:10]}"

        class Base(DeclarativeBase):
            pass

        class Item(Base):
            __tablename__ = table
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str] = mapped_column(String(50))

        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        seen: dict[str, Any] = {}
        try:
            make_session = async_sessionmaker(engine)
            async with make_session() as s:
                s.add_all([Item(name="a"), Item(name="b")])
                await s.commit()
            async with make_session() as s:
                s.add(Item(name="c"))
                await s.flush()
                seen["inside"] = await s.scalar(select(func.count()).select_from(Item))
                await s.rollback()
            async with make_session() as s:
                seen["names"] = sorted(await s.scalars(select(Item.name)))
            seen["after"] = gauges(engine.pool)[:4]
        finally:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
            await engine.dispose()
        return seen

    assert async_differential(script) == {
        "inside": 3,
        "names": ["a", "b"],
        "after": (2, 1, -1, 0),
    }


@pytest.mark.postgres
def test_async_waiters_and_cancellation(adb: Db) -> None:
    async def script(cls: type[Pool]) -> tuple[Any, ...]:
        engine = async_engine(adb, cls, pool_size=1, max_overflow=0, pool_timeout=10)
        try:
            held = await engine.connect()

            async def use() -> Any:
                async with engine.connect() as conn:
                    return (await conn.exec_driver_sql("SELECT 1")).scalar()

            doomed = asyncio.ensure_future(use())
            served = asyncio.ensure_future(use())
            await asyncio.sleep(0.05)
            doomed.cancel()
            await held.close()
            result = await asyncio.wait_for(served, 10)
            with pytest.raises(asyncio.CancelledError):
                await doomed
            await aquiesce(engine)
            return result, gauges(engine.pool)[:4], await use()
        finally:
            await engine.dispose()

    assert async_differential(script) == (1, (1, 1, 0, 0), 1)


@pytest.mark.postgres
def test_async_pool_timeout_none_waits_for_a_return(adb: Db) -> None:
    async def script(cls: type[Pool]) -> tuple[Any, ...]:
        engine = async_engine(adb, cls, pool_size=1, max_overflow=0, pool_timeout=None)
        try:
            held = await engine.connect()

            async def use() -> Any:
                async with engine.connect() as conn:
                    return (await conn.exec_driver_sql("SELECT 1")).scalar()

            waiter = asyncio.ensure_future(use())
            await asyncio.sleep(1.5)
            still_waiting = not waiter.done()
            await held.close()
            return engine.pool.timeout(), still_waiting, await asyncio.wait_for(waiter, 10)
        finally:
            await engine.dispose()

    assert async_differential(script) == (None, True, 1)


@pytest.mark.postgres
def test_async_engine_is_bound_to_one_loop_until_disposed(adb: Db) -> None:
    engine = async_engine(adb, AsyncMillpondPool, pool_size=1, max_overflow=0)

    async def use() -> Any:
        async with engine.connect() as conn:
            return (await conn.exec_driver_sql("SELECT 1")).scalar()

    async def use_then_dispose() -> Any:
        value = await use()
        await engine.dispose()
        return value

    assert asyncio.run(use()) == 1
    with pytest.raises(millpond.WrongEventLoop, match=r"engine\.dispose"):
        asyncio.run(use())
    asyncio.run(engine.dispose())  # from a fresh loop: the old connections are dropped
    assert asyncio.run(use_then_dispose()) == 1
    assert asyncio.run(use_then_dispose()) == 1

    def collected() -> bool:
        gc.collect()  # what closes the sockets of connections left on a closed loop
        return async_sessions(adb, engine) == 0

    wait_until(collected, "sessions of the dropped pool closed")
