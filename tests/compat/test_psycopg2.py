"""``millpond.compat.psycopg2`` against ``psycopg2.pool`` on the real PostgreSQL.

Each scenario runs once with psycopg2's pool and once with the compat layer, and the two
traces (values, errors with their messages, sessions on the server) must be equal; where
millpond deliberately differs (a dead idle connection is replaced, not lent) the test says so.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import psycopg2
import psycopg2.pool as peer
import pytest

import millpond
from millpond.compat import psycopg2 as compat

from .conftest import PgServer
from .helpers import Trace, rows, same, scalar, wait_until

pytestmark = pytest.mark.postgres


def both(scenario: Any, pg: PgServer, **kw: Any) -> list[Any]:
    """The compat run\'s events, once equal to the peer run\'s."""
    return same(scenario(peer, pg, **kw), scenario(compat, pg, **kw))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- scenarios ---------------------------------------------------------------------------------


def lifecycle(impl: Any, pg: PgServer) -> Trace:
    t, tag = Trace(), pg.tag()
    sessions = lambda: pg.count(tag)  # noqa: E731
    p = impl.SimpleConnectionPool(1, 2, **pg.kwargs(tag))
    t.count("constructor opens minconn", sessions, 1)
    a = p.getconn()
    b = p.getconn()
    t.count("getconn opens one more, synchronously", sessions, 2)
    t.note("two connections", a is not b and isinstance(b, psycopg2.extensions.connection))
    t.call("exhausted at once", p.getconn)
    t.note("lent connections work", (scalar(a, "SELECT 1"), scalar(b, "SELECT 2")))
    p.putconn(a)
    p.putconn(b)
    t.count("keeps minconn idle, closes the rest", sessions, 1)
    t.note("which one was closed", (a.closed, b.closed))
    c = p.getconn()
    t.note("the idle one is lent again", c is a)
    t.call("double return", p.putconn, b)
    foreign = psycopg2.connect(**pg.kwargs(tag))
    t.call("foreign connection", p.putconn, foreign)
    foreign.close()
    p.closeall()
    t.note("closeall closes lent connections too", c.closed)
    t.note("closed", p.closed)
    t.count("nothing left", sessions, 0)
    t.call("getconn after closeall", p.getconn)
    t.call("putconn after closeall", p.putconn, c)
    t.call("closeall twice", p.closeall)
    return t


def keys(impl: Any, pg: PgServer) -> Trace:
    t, tag = Trace(), pg.tag()
    p = impl.ThreadedConnectionPool(0, 3, **pg.kwargs(tag))
    a = p.getconn("a")
    t.note("same key, same connection", p.getconn("a") is a)
    b = p.getconn("b")
    n = p.getconn()
    t.note("an unkeyed getconn is another connection", n is not a and n is not b)
    t.call("exhausted", p.getconn, "c")
    t.note("a key in use is still served when exhausted", p.getconn("b") is b)
    t.call("putconn with a key", p.putconn, a, key="a")
    t.call("putconn with a key it did not lend", p.putconn, b, key="nope")
    t.call("putconn by connection", p.putconn, n)
    t.call("putconn b", p.putconn, b, key="b")
    t.count("minconn=0: every return closes", lambda: pg.count(tag), 0)
    t.note("a new key after all that", p.getconn("a") is not a)
    p.closeall()
    return t


def returns(impl: Any, pg: PgServer) -> Trace:
    t, tag = Trace(), pg.tag()
    sessions = lambda: pg.count(tag)  # noqa: E731
    p = impl.SimpleConnectionPool(2, 2, **pg.kwargs(tag))
    a = p.getconn()
    scalar(a, "SELECT 1")
    t.note("in a transaction when returned", a.get_transaction_status())
    p.putconn(a)
    a2 = p.getconn()
    t.note("the same connection, rolled back", (a2 is a, a2.get_transaction_status()))
    b = p.getconn()
    cur = b.cursor()
    t.call("a failed statement", cur.execute, "SELECT 1/0")
    t.note("returned in a failed transaction", b.get_transaction_status())
    p.putconn(b)
    b2 = p.getconn()
    t.note("usable again", (b2 is b, b2.get_transaction_status(), scalar(b2, "SELECT 3")))
    p.putconn(b2, close=True)
    t.note("close=True closes it", b2.closed)
    t.count("close=True", sessions, 1)
    p.putconn(a2)
    t.count("a2 kept idle", sessions, 1)
    c = p.getconn()
    d = p.getconn()
    t.note("one idle, one new", (c is a2 or d is a2, c is not d))
    t.count("two again", sessions, 2)
    c.close()
    p.putconn(c)
    t.count("a connection closed by its user is dropped", sessions, 1)
    p.putconn(d)
    p.closeall()
    return t


def unreachable(impl: Any, pg: PgServer, port: int) -> Trace:
    t = Trace()
    kwargs = {**pg.kwargs(pg.tag()), "port": port}
    t.call("constructor, server down", impl.SimpleConnectionPool, 1, 2, **kwargs)
    p = impl.SimpleConnectionPool(0, 2, **kwargs)
    t.call("getconn, server down", p.getconn)
    t.call("getconn again", p.getconn)
    p.closeall()
    return t


def refused_while_lent(impl: Any, pg: PgServer, role: str) -> Trace:
    t, tag = Trace(), pg.tag()
    p = impl.SimpleConnectionPool(0, 3, **{**pg.kwargs(tag), "user": role})
    a = p.getconn()
    start = time.monotonic()
    t.call("the server refuses a second session", p.getconn)
    # millpond's engine fails a waiter on a connect error only when nothing else could serve
    # it; the layer must fail this caller at once, as psycopg2's own connect does
    t.note("at once", time.monotonic() - start < 1.0)
    p.putconn(a)
    t.count("closed on return (minconn=0)", lambda: pg.count(tag), 0)
    # after a failed connect millpond waits a short backoff (<= 50 ms after one failure)
    # before it connects again; past it, the next getconn connects as psycopg2's would
    time.sleep(0.15)
    b = t.call("the server accepts again", p.getconn)
    if b is not None:
        p.putconn(b)
    p.closeall()
    return t


def dead_idle(impl: Any, pg: PgServer) -> Trace:
    t, tag = Trace(), pg.tag()
    p = impl.SimpleConnectionPool(1, 1, **pg.kwargs(tag))
    a = p.getconn()
    pid = scalar(a, "SELECT pg_backend_pid()")
    p.putconn(a)
    returned = time.monotonic()
    pg.kill(pid)
    # idle longer than millpond's ping_window (0.5 s): its checkout validates it
    time.sleep(max(0.0, 0.6 - (time.monotonic() - returned)))
    c = p.getconn()
    t.call("a query on the connection lent after the kill", scalar, c, "SELECT 1", message=False)
    p.putconn(c)
    p.closeall()
    return t


# -- differential tests ------------------------------------------------------------------------


def test_lifecycle_exhaustion_double_return_closeall(pg: PgServer) -> None:
    ours = both(lifecycle, pg)
    assert (
        "exhausted at once",
        "raised",
        "psycopg2.pool.PoolError",
        "connection pool exhausted",
    ) in ours


def test_keys(pg: PgServer) -> None:
    ours = both(keys, pg)
    assert ("putconn with a key it did not lend", "raised", "builtins.KeyError", "'nope'") in ours


def test_rollback_on_return_and_close_true(pg: PgServer) -> None:
    both(returns, pg)


def test_unreachable_server_raises_psycopg2s_error(pg: PgServer) -> None:
    ours = both(unreachable, pg, port=closed_port())
    assert ours[0][2] == "psycopg2.OperationalError"


def test_connect_refused_while_another_is_lent_fails_at_once(pg: PgServer) -> None:
    role = pg.tag()
    pg.admin.cursor().execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
    try:
        ours = both(refused_while_lent, pg, role=role)
    finally:
        pg.admin.cursor().execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        wait_until(
            lambda: (
                not rows(pg.admin, "SELECT 1 FROM pg_stat_activity WHERE usename = %s", (role,))
            ),
            f"sessions of {role} gone",
        )
        pg.admin.cursor().execute(f"DROP ROLE IF EXISTS {role}")
    assert ours[0][2] == "psycopg2.OperationalError" and "too many connections" in ours[0][3]


def test_dead_idle_connection_is_replaced_not_lent(pg: PgServer) -> None:
    """The one deliberate difference: psycopg2 lends the dead connection, millpond pings an
    idle connection on checkout and lends a fresh one."""
    theirs, ours = dead_idle(peer, pg).events, dead_idle(compat, pg).events
    assert theirs == [
        (
            "a query on the connection lent after the kill",
            "raised",
            "psycopg2.OperationalError",
            None,
        )
    ]
    assert ours == [("a query on the connection lent after the kill", "ok")]


def test_autocommit_is_restored_on_return(pg: PgServer) -> None:
    """A deliberate difference: psycopg2 passes a borrower's autocommit switch on to the next
    borrower; millpond restores the mode the connection was opened with."""

    def scenario(impl: Any) -> tuple[bool, bool]:
        p = impl.SimpleConnectionPool(1, 1, **pg.kwargs(pg.tag()))
        conn = p.getconn()
        conn.autocommit = True
        p.putconn(conn)
        again = p.getconn()
        seen = (again is conn, again.autocommit)
        p.putconn(again)
        p.closeall()
        return seen

    assert scenario(peer) == (True, True)
    assert scenario(compat) == (True, False)


# -- the layer's own guarantees ------------------------------------------------------------------


def test_errors_are_psycopg2s_and_millponds() -> None:
    assert issubclass(compat.PoolError, peer.PoolError)
    assert issubclass(compat.PoolError, psycopg2.Error)
    assert issubclass(compat.PoolError, millpond.PoolError)
    assert compat.AbstractConnectionPool.__name__ == "AbstractConnectionPool"


def test_timeout_extension_waits_for_a_return(pg: PgServer) -> None:
    p = compat.ThreadedConnectionPool(1, 1, timeout=0.3, **pg.kwargs(pg.tag()))
    try:
        a = p.getconn()
        start = time.monotonic()
        with pytest.raises(peer.PoolError, match=r"^connection pool exhausted$") as info:
            p.getconn()
        assert time.monotonic() - start >= 0.3
        assert isinstance(info.value.__cause__, millpond.PoolTimeout)
        threading.Timer(0.05, p.putconn, (a,)).start()
        assert p.getconn() is a  # the waiter got the returned connection
    finally:
        p.closeall()


def test_threads_share_a_threaded_pool(pg: PgServer) -> None:
    tag = pg.tag()
    p = compat.ThreadedConnectionPool(1, 3, timeout=10, **pg.kwargs(tag))
    errors: list[BaseException] = []
    peak = [0]

    def work() -> None:
        try:
            for _ in range(15):
                conn = p.getconn()
                try:
                    assert scalar(conn, "SELECT 1") == 1
                    peak[0] = max(peak[0], pg.count(tag))
                finally:
                    p.putconn(conn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    stats = p.stats()
    p.closeall()
    assert not errors
    assert peak[0] <= 3
    assert stats.in_use == 0 and stats.size <= 3


def test_concurrent_getconn_never_exceeds_maxconn(pg: PgServer) -> None:
    """Without timeout=, callers beyond maxconn fail at once and nobody waits."""
    tag = pg.tag()
    p = compat.ThreadedConnectionPool(0, 2, **pg.kwargs(tag))
    barrier = threading.Barrier(5)
    outcome: list[str] = []
    lock = threading.Lock()
    held: list[Any] = []

    def grab() -> None:
        barrier.wait()
        try:
            conn = p.getconn()
        except peer.PoolError as exc:
            with lock:
                outcome.append(str(exc))
            return
        with lock:
            outcome.append("ok")
            held.append(conn)

    threads = [threading.Thread(target=grab) for _ in range(5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    try:
        assert sorted(outcome) == ["connection pool exhausted"] * 3 + ["ok"] * 2
        assert pg.count(tag) == 2
    finally:
        p.closeall()


def test_pool_options_are_checked() -> None:
    with pytest.raises(millpond.ConfigError, match="max_size"):
        compat.SimpleConnectionPool(0, 1, pool_options={"max_size": 3}, host="127.0.0.1")


def test_pool_options_timeout_none_is_the_peers_behaviour(pg: PgServer) -> None:
    """``pool_options={"timeout": None}`` reads as "no timeout extension" (raise at once when
    exhausted), not a ConfigError from deep inside the engine."""
    p = compat.ThreadedConnectionPool(
        0, 1, pool_options={"timeout": None}, **pg.kwargs(pg.tag())
    )
    try:
        conn = p.getconn()
        with pytest.raises(compat.PoolError, match="exhausted"):
            p.getconn()
        p.putconn(conn)
    finally:
        p.closeall()
