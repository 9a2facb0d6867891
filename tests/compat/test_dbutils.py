"""``millpond.compat.dbutils`` against DBUtils, over sqlite3 and over psycopg2 (real PostgreSQL).

Each scenario runs with DBUtils' ``PooledDB``/``PersistentDB`` and with the compat layer; the
traces (values, errors and their messages, sessions on the server) must be equal, except where
a test names a deliberate difference.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import types
from pathlib import Path
from typing import Any

import dbutils.persistent_db as peer_persistent
import dbutils.pooled_db as peer_pooled
import psycopg2
import pytest

import millpond
from millpond.compat import dbutils as compat

from .conftest import PgServer
from .helpers import Trace, rows, same, scalar

PEERS = (peer_pooled, peer_persistent)


def persistent(impl: Any) -> Any:
    return compat.PersistentDB if impl is compat else peer_persistent.PersistentDB


def pattern(values: list[Any]) -> list[int]:
    """Values renamed in order of first appearance: [7, 7, 9, 7] -> [0, 0, 1, 0]."""
    seen: dict[Any, int] = {}
    return [seen.setdefault(v, len(seen)) for v in values]


def pid(db: Any) -> int:
    return int(scalar(db, "SELECT pg_backend_pid()"))


# -- sqlite3 -------------------------------------------------------------------------------------


def sqlite_basics(impl: Any, path: Path) -> Trace:
    t = Trace()
    p = impl.PooledDB(sqlite3, 1, 2, 0, 2, database=str(path))
    db = p.connection()
    t.note("the proxy", type(db).__name__)
    cur = db.cursor()
    t.note("the cursor", type(cur).__name__)
    cur.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT, v TEXT)")
    cur.execute("INSERT INTO kv VALUES ('a', '1')")
    db.commit()
    cur.execute("SELECT k, v FROM kv")
    t.note("rows", cur.fetchall())
    t.note("dbapi, threadsafety", (db.dbapi() is sqlite3, db.threadsafety()))
    t.call("a driver attribute through the proxy", lambda: db.execute)
    db2 = p.connection()
    t.call("maxconnections reached", p.connection)
    db.close()
    t.call("use after close", lambda: db.cursor())
    t.call("close twice", db.close)
    del db2  # DBUtils returns a dropped proxy's connection
    db3, db4 = p.connection(), p.dedicated_connection()
    t.note("two again after del", (rows(db3, "SELECT 1"), rows(db4, "SELECT 2")))
    db3.close()
    db4.close()
    with p.connection() as db5:
        t.note("with connection()", rows(db5, "SELECT count(*) FROM kv"))
    t.call("use after the with block", lambda: db5.cursor())
    p.close()
    db6 = p.connection()
    t.note("usable after close()", rows(db6, "SELECT v FROM kv"))
    db6.close()
    p.close()
    return t


def sqlite_setsession(impl: Any, path: Path) -> Trace:
    t = Trace()
    p = impl.PooledDB(
        sqlite3, maxconnections=1, setsession=["PRAGMA foreign_keys = ON"], database=str(path)
    )
    for i in range(2):
        db = p.connection()
        t.note(f"checkout {i}: foreign_keys", scalar(db, "PRAGMA foreign_keys"))
        db.close()
    p.close()
    return t


def sqlite_cursor_failover(impl: Any, path: Path) -> Trace:
    t = Trace()
    p = impl.PooledDB(sqlite3, maxconnections=1, database=str(path))
    db = p.connection()
    cur = db.cursor()
    cur.close()
    # a closed driver cursor raises ProgrammingError, which is not among the failures
    t.call("execute on a closed cursor", cur.execute, "SELECT 1")
    t.call("a failing statement", db.cursor().execute, "SELECT * FROM no_such_table")
    with db.cursor() as c:
        c.execute("SELECT 1")
        t.note("cursor as a context manager", c.fetchall())
    t.call("the closed cursor's dbapi_cursor", lambda: c.dbapi_cursor)
    db.close()
    p.close()
    return t


@pytest.mark.parametrize(
    "scenario",
    [sqlite_basics, sqlite_setsession, sqlite_cursor_failover],
    ids=["basics", "setsession", "cursors"],
)
def test_sqlite(scenario: Any, tmp_path: Path) -> None:
    same(
        scenario(peer_pooled, tmp_path / "peer.sqlite"),
        scenario(compat, tmp_path / "compat.sqlite"),
    )


def test_sqlite_reset_false_leaves_no_transaction_behind(tmp_path: Path) -> None:
    """A deliberate difference: with reset=False DBUtils rolls back only after begin(), so
    uncommitted work reaches the next borrower; millpond rolls back whatever is open."""

    def scenario(impl: Any, path: Path) -> bool:
        p = impl.PooledDB(sqlite3, maxconnections=1, reset=False, database=str(path))
        db = p.connection()
        rows(db, "CREATE TABLE t (a)")
        db.commit()
        rows(db, "INSERT INTO t VALUES (1)")
        db.close()
        db = p.connection()
        dirty = bool(db.dbapi_connection.in_transaction)
        db.close()
        p.close()
        return dirty

    assert scenario(peer_pooled, tmp_path / "peer.sqlite") is True
    assert scenario(compat, tmp_path / "compat.sqlite") is False


def test_not_thread_safe_module_is_refused() -> None:
    module = types.SimpleNamespace(connect=lambda: None, threadsafety=0)
    for impl, expected in (
        (peer_pooled, peer_pooled.NotSupportedError),
        (compat, peer_pooled.NotSupportedError),
    ):
        with pytest.raises(expected, match=r"^Database module is not thread-safe\.$"):
            impl.PooledDB(module)
    with pytest.raises(peer_persistent.NotSupportedError):
        compat.PersistentDB(module)


def test_errors_are_dbutils_and_millponds() -> None:
    pairs = [
        (compat.PooledDBError, peer_pooled.PooledDBError),
        (compat.InvalidConnectionError, peer_pooled.InvalidConnectionError),
        (compat.TooManyConnectionsError, peer_pooled.TooManyConnectionsError),
        (compat.NotSupportedError, peer_pooled.NotSupportedError),
        (compat.NotSupportedError, peer_persistent.NotSupportedError),
        (compat.PersistentDBError, peer_persistent.PersistentDBError),
    ]
    for ours, theirs in pairs:
        assert issubclass(ours, theirs) and issubclass(ours, millpond.PoolError)
    assert compat.TooManyConnections is compat.TooManyConnectionsError


def test_bad_arguments_raise_dbutils_type_errors(tmp_path: Path) -> None:
    db = str(tmp_path / "x.sqlite")
    for kwargs, message in (
        ({"maxusage": "x"}, "'maxusage' must be an integer value."),
        ({"failures": 3.5}, None),
        ({"ping": (1, 2, 3)}, None),
        ({"ping": (1, 5)}, None),
        ({"isfatal": 1}, "'isfatal' must be a callable."),
    ):
        with pytest.raises(TypeError) as theirs:
            peer_pooled.PooledDB(sqlite3, 1, database=db, **kwargs).connection()
        with pytest.raises(TypeError) as ours:
            compat.PooledDB(sqlite3, 1, database=db, **kwargs)
        assert str(ours.value) == str(theirs.value)
        if message is not None:
            assert str(ours.value) == message


# -- psycopg2 ------------------------------------------------------------------------------------


def pg_limits(impl: Any, pg: PgServer) -> Trace:
    t, tag = Trace(), pg.tag()
    sessions = lambda: pg.count(tag)  # noqa: E731
    p = impl.PooledDB(psycopg2, mincached=2, maxcached=2, maxconnections=4, **pg.kwargs(tag))
    t.count("mincached at start", sessions, 2)
    lent = [p.connection() for _ in range(4)]
    t.count("maxconnections", sessions, 4)
    t.call("one more", p.connection)
    for db in lent:
        db.close()
    t.count("maxcached kept, the rest closed", sessions, 2)
    again = [p.connection() for _ in range(2)]
    t.count("the cached ones are lent again", sessions, 2)
    for db in again:
        db.close()
    p.close()
    t.count("close() closes the idle ones", sessions, 0)
    return t


def pg_maxusage(impl: Any, pg: PgServer) -> Trace:
    t, tag = Trace(), pg.tag()
    p = impl.PooledDB(psycopg2, maxconnections=1, maxusage=3, **pg.kwargs(tag))
    db = p.connection()
    cur = db.cursor()
    seen = []
    for _ in range(5):
        cur.execute("SELECT pg_backend_pid()")
        seen.append(cur.fetchone()[0])
    db.close()
    db = p.connection()  # the count goes on across checkouts
    cur = db.cursor()
    for _ in range(3):
        cur.execute("SELECT pg_backend_pid()")
        seen.append(cur.fetchone()[0])
    t.note("sessions used, in order", pattern(seen))
    t.count("one session at a time", lambda: pg.count(tag), 1)
    db.close()
    p.close()
    return t


def pg_blocking(impl: Any, pg: PgServer) -> Trace:
    t, tag = Trace(), pg.tag()
    p = impl.PooledDB(psycopg2, maxconnections=1, blocking=True, **pg.kwargs(tag))
    held = p.connection()
    first = pid(held)
    threading.Timer(0.1, held.close).start()
    start = time.monotonic()
    db = p.connection()  # waits for the return
    t.note("waited for the return", time.monotonic() - start >= 0.05)
    t.note("got the returned connection", pid(db) == first)
    db.close()
    p.close()
    return t


def pg_shared(impl: Any, pg: PgServer) -> Trace:
    t, tag = Trace(), pg.tag()
    p = impl.PooledDB(psycopg2, maxshared=2, maxconnections=2, **pg.kwargs(tag))
    shares = [p.connection() for _ in range(4)]
    t.note("proxies", {type(s).__name__ for s in shares})
    t.note("how they share", pattern([s.dbapi_connection for s in shares]))
    t.count("two sessions", lambda: pg.count(tag), 2)
    shares[0].begin()  # a connection in a transaction is not shared any more
    fifth = p.connection()
    t.note(
        "the fifth avoids the one in a transaction",
        fifth.dbapi_connection is not shares[0].dbapi_connection,
    )
    t.call("a dedicated one when all are shared", p.dedicated_connection)
    t.note("a shared one works", scalar(fifth, "SELECT 5"))
    for s in [*shares, fifth]:
        s.close()
    t.call("use after close", lambda: fifth.cursor())
    d1, d2 = p.dedicated_connection(), p.dedicated_connection()
    t.note("dedicated once nothing is shared", type(d1).__name__)
    d1.close()
    d2.close()
    t.count("cached", lambda: pg.count(tag), 2)
    p.close()
    return t


def pg_failover(impl: Any, pg: PgServer) -> Trace:
    t, tag = Trace(), pg.tag()
    p = impl.PooledDB(psycopg2, maxconnections=1, **pg.kwargs(tag))
    db = p.connection()
    cur = db.cursor()
    before = pid(db)
    pg.kill(before)
    t.call("execute after the session was killed", cur.execute, "SELECT pg_backend_pid()")
    t.note("on a new session", cur.fetchone()[0] != before)
    db.begin()
    pg.kill(pid(db))
    t.call(
        "inside a transaction the error reaches the application",
        cur.execute,
        "SELECT 1",
        message=False,
    )
    t.call("the next statement runs on a new session", cur.execute, "SELECT 2")
    t.note("result", cur.fetchall())
    db.close()
    # killed while idle in the pool: found at checkout (millpond's ping) or at the first
    # statement (DBUtils' failover); either way the statement succeeds
    idle = pid(p.connection())  # the proxy is dropped at once: DBUtils returns it
    returned = time.monotonic()
    pg.kill(idle)
    time.sleep(max(0.0, 0.6 - (time.monotonic() - returned)))
    db = p.connection()
    t.call("a statement after an idle kill", scalar, db, "SELECT 3")
    db.close()
    t.count("one session", lambda: pg.count(tag), 1)
    p.close()
    return t


def pg_persistent(impl: Any, pg: PgServer) -> Trace:
    t, tag = Trace(), pg.tag()
    sessions = lambda: pg.count(tag)  # noqa: E731
    factory = persistent(impl)
    pdb = factory(psycopg2, **pg.kwargs(tag))
    a = pdb.connection()
    t.note("the steady connection itself", type(a).__name__)
    t.note("the same in the same thread", pdb.connection() is a)
    other: list[Any] = []

    def in_thread() -> None:
        c = pdb.connection()
        other.append((c is a, pid(c) != pid(a)))

    th = threading.Thread(target=in_thread)
    th.start()
    th.join()
    t.note("another thread has its own", other)
    # kept while the thread-local data lives (the finished Thread object holds it)
    t.count("one session per thread", sessions, 2)
    a.close()  # ignored: closeable=False
    t.note("close() is ignored", scalar(a, "SELECT 1"))
    closeable = factory(psycopg2, closeable=True, **pg.kwargs(tag))
    c = closeable.connection()
    first = pid(c)
    c.close()
    t.count("closeable=True closes it", sessions, 2)
    t.note("and the next use reconnects", pid(closeable.connection()) != first)
    t.count("three sessions", sessions, 3)
    return t


def pg_setsession(impl: Any, pg: PgServer) -> list[str]:
    tag = pg.tag()
    p = impl.PooledDB(
        psycopg2,
        maxconnections=1,
        setsession=["SET statement_timeout = 12345"],
        **pg.kwargs(tag),
    )
    seen = []
    for _ in range(2):
        db = p.connection()
        seen.append(scalar(db, "SHOW statement_timeout"))
        db.close()
    p.close()
    return seen


@pytest.mark.postgres
@pytest.mark.parametrize(
    "scenario",
    [pg_limits, pg_maxusage, pg_blocking, pg_shared, pg_failover, pg_persistent],
    ids=["limits", "maxusage", "blocking", "maxshared", "failover", "persistent"],
)
def test_psycopg2(scenario: Any, pg: PgServer) -> None:
    same(scenario(peer_pooled, pg), scenario(compat, pg))


@pytest.mark.postgres
def test_setsession_survives_the_reset(pg: PgServer) -> None:
    """A deliberate difference: DBUtils runs setsession without committing, so with psycopg2
    the first return's rollback undoes a SET; millpond commits what setsession opened."""
    assert pg_setsession(peer_pooled, pg) == ["12345ms", "0"]
    assert pg_setsession(compat, pg) == ["12345ms", "12345ms"]


@pytest.mark.postgres
def test_blocking_with_timeout_extension(pg: PgServer) -> None:
    p = compat.PooledDB(
        psycopg2,
        maxconnections=1,
        blocking=True,
        pool_options={"timeout": 0.2},
        **pg.kwargs(pg.tag()),
    )
    held = p.connection()
    start = time.monotonic()
    with pytest.raises(peer_pooled.TooManyConnectionsError):
        p.connection()
    assert time.monotonic() - start >= 0.2
    held.close()
    p.connection().close()
    p.close()


@pytest.mark.postgres
def test_cursor_refuses_use_after_its_connection_went_back(pg: PgServer) -> None:
    """A deliberate difference: DBUtils lets an old cursor run on a connection that may now be
    someone else's."""
    p = compat.PooledDB(psycopg2, maxconnections=1, **pg.kwargs(pg.tag()))
    db = p.connection()
    cur = db.cursor()
    db.close()
    with pytest.raises(compat.InvalidCursorError):
        cur.execute("SELECT 1")
    p.close()
