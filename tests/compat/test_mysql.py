"""``millpond.compat.mysql`` against ``mysql.connector.pooling`` on the real MariaDB.

Each scenario runs with mysql-connector's pool and with the compat layer; the traces (values,
errors and their messages, sessions on the server) must be equal, except where a test names a
deliberate difference.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import mysql.connector
import mysql.connector.errors as errors
import mysql.connector.pooling as peer
import pytest

import millpond
from millpond.compat import mysql as compat

from .conftest import MariaServer
from .helpers import Trace, rows, same, scalar

pytestmark = pytest.mark.mysql


def both(scenario: Any, maria: MariaServer, **kw: Any) -> list[Any]:
    """The compat run\'s events, once equal to the peer run\'s."""
    return same(scenario(peer, maria, **kw), scenario(compat, maria, **kw))


def name() -> str:
    return "mpc_" + uuid.uuid4().hex[:12]


def forget(impl: Any, pool_name: str) -> None:
    """Empty and drop a pool of the connect() registry."""
    pool = impl._CONNECTION_POOLS.pop(pool_name, None)
    if pool is not None:
        pool._remove_connections()
        if impl is compat:
            pool.close()


# -- scenarios ---------------------------------------------------------------------------------


def validation(impl: Any, maria: MariaServer) -> Trace:
    t = Trace()
    t.call("pool_size=0", impl.MySQLConnectionPool, pool_size=0, pool_name="x")
    t.call("pool_size=33", impl.MySQLConnectionPool, pool_size=33, pool_name="x")
    t.call("illegal name", impl.MySQLConnectionPool, pool_name="a b")
    t.call("long name", impl.MySQLConnectionPool, pool_name="x" * 65)
    t.call("no name, nothing to make one of", impl.MySQLConnectionPool)
    t.call("unknown argument", impl.MySQLConnectionPool, pool_name="x", no_such_option=1)
    t.note("generated name", impl.generate_pool_name(host="h", port=1, user="u", database="d"))
    t.call("generate_pool_name from nothing", impl.generate_pool_name)
    p = impl.MySQLConnectionPool(pool_name="empty", pool_size=2)
    t.note("pool_name, pool_size, reset_session", (p.pool_name, p.pool_size, p.reset_session))
    t.call("get_connection without configuration", p.get_connection)
    t.call("add_connection without configuration", p.add_connection)
    return t


def lifecycle(impl: Any, maria: MariaServer) -> Trace:
    t, tag = Trace(), maria.tag()
    sessions = lambda: maria.count(tag)  # noqa: E731
    p = impl.MySQLConnectionPool(pool_name=name(), pool_size=2, **maria.kwargs(tag))
    t.count("the constructor opens pool_size", sessions, 2)
    a = p.get_connection()
    b = p.get_connection()
    t.note("what get_connection returns", (type(a).__name__, a.pool_name == p.pool_name))
    t.call("exhausted at once", p.get_connection)
    t.note("queue size", p._cnx_queue.qsize())
    t.note("lent connections work", (scalar(a, "SELECT 1"), scalar(b, "SELECT 2")))
    a.close()
    t.call("use after close", lambda: a.cursor())
    t.note("queue size after a return", p._cnx_queue.qsize())
    b.close()
    t.call("close() twice on a full pool", a.close)
    t.call("add_connection on a full pool", p.add_connection)
    t.count("still pool_size", sessions, 2)
    with p.get_connection() as c:
        t.note("with get_connection()", scalar(c, "SELECT 3"))
    t.note("returned by the with block", p._cnx_queue.qsize())
    t.call("config() on a pooled connection", c.config, user="x")
    t.note("removed", p._remove_connections())
    t.count("nothing left", sessions, 0)
    t.call("get_connection after that", p.get_connection)
    return t


def session_reset(impl: Any, maria: MariaServer, reset: bool) -> Trace:
    t, tag = Trace(), maria.tag()
    p = impl.MySQLConnectionPool(
        pool_name=name(), pool_size=1, pool_reset_session=reset, **maria.kwargs(tag)
    )
    c = p.get_connection()
    session = scalar(c, "SELECT CONNECTION_ID()")
    for sql in (
        "SET @x = 42",
        "SET SESSION sql_mode = 'ANSI'",
        "CREATE TEMPORARY TABLE tt (a int)",
    ):
        rows(c, sql)
    c.close()
    c = p.get_connection()
    t.note("the same session", scalar(c, "SELECT CONNECTION_ID()") == session)
    t.note("user variable", scalar(c, "SELECT @x"))
    t.note("session variable", "ANSI" in scalar(c, "SELECT @@SESSION.sql_mode"))
    t.call("temporary table", rows, c, "SELECT * FROM tt")
    c.close()
    p._remove_connections()
    return t


def dead_idle(impl: Any, maria: MariaServer) -> Trace:
    t, tag = Trace(), maria.tag()
    p = impl.MySQLConnectionPool(pool_name=name(), pool_size=1, **maria.kwargs(tag))
    c = p.get_connection()
    session = scalar(c, "SELECT CONNECTION_ID()")
    c.close()
    maria.kill(session, tag)
    c = p.get_connection()  # both check the connection first and reconnect it
    t.note("a new session", scalar(c, "SELECT CONNECTION_ID()") != session)
    c.close()
    t.count("one session", lambda: maria.count(tag), 1)
    p._remove_connections()
    return t


def registry(impl: Any, maria: MariaServer) -> Trace:
    t, tag = Trace(), maria.tag()
    kwargs = maria.kwargs(tag)
    pool_name = name()
    try:
        a = impl.connect(pool_name=pool_name, pool_size=2, **kwargs)
        t.note("a pooled connection", (type(a).__name__, a.pool_name == pool_name))
        b = impl.connect(pool_name=pool_name, **kwargs)
        t.call("exhausted", impl.connect, pool_name=pool_name, **kwargs)
        t.call("another size", impl.connect, pool_name=pool_name, pool_size=3, **kwargs)
        a.close()
        b.close()
        t.count("the named pool's sessions", lambda: maria.count(tag), 2)
        plain = impl.connect(**kwargs)
        t.note("no pooling argument: a plain connection", type(plain).__name__)
        plain.close()
        c = impl.connect(pool_size=1, **kwargs)
        generated = f"{kwargs['host']}_{kwargs['port']}_{tag}_{kwargs['database']}"
        t.note("a generated name", c.pool_name == generated)
        c.close()
        forget(impl, generated)
    finally:
        forget(impl, pool_name)
    t.count("all gone", lambda: maria.count(tag), 0)
    return t


def grown_by_hand(impl: Any, maria: MariaServer) -> Trace:
    t, tag = Trace(), maria.tag()
    sessions = lambda: maria.count(tag)  # noqa: E731
    p = impl.MySQLConnectionPool(pool_name=name(), pool_size=3)
    p.set_config(**maria.kwargs(tag))
    t.count("set_config opens nothing", sessions, 0)
    t.call("get_connection before add_connection", p.get_connection)
    p.add_connection()
    p.add_connection()
    t.count("add_connection opens one each", sessions, 2)
    a = p.get_connection()
    b = p.get_connection()
    t.call("exhausted", p.get_connection)
    p.add_connection()
    c = t.call("one more after add_connection", p.get_connection)
    t.count("three", sessions, 3)
    for x in (a, b, c):
        x.close()
    t.call("full", p.add_connection)
    t.note("removed", p._remove_connections())
    return t


def reconfigured(impl: Any, maria: MariaServer) -> Trace:
    t, first, second = Trace(), maria.tag(), maria.tag()
    p = impl.MySQLConnectionPool(pool_name=name(), pool_size=2, **maria.kwargs(first))
    a = p.get_connection()
    p.set_config(**maria.kwargs(second))
    a.close()
    for _ in range(2):
        c = p.get_connection()
        user = scalar(c, "SELECT CURRENT_USER()").split("@")[0]
        t.note("connected with the new configuration", user == second)
        c.close()
    c, d = p.get_connection(), p.get_connection()
    t.note(
        "both with the new configuration",
        {scalar(x, "SELECT CURRENT_USER()").split("@")[0] for x in (c, d)} == {second},
    )
    t.call("still pool_size", p.get_connection)
    c.close()
    d.close()
    p._remove_connections()
    if impl is compat:
        p.close()
    return t


# -- differential tests ------------------------------------------------------------------------


def test_limits_names_and_configuration_errors(maria: MariaServer) -> None:
    ours = both(validation, maria)
    assert (
        "pool_size=0",
        "raised",
        "builtins.AttributeError",
        "Pool size should be higher than 0 and lower or equal to 32",
    ) in ours


def test_exhaustion_close_double_close_add_connection(maria: MariaServer) -> None:
    ours = both(lifecycle, maria)
    assert (
        "exhausted at once",
        "raised",
        "mysql.connector.errors.PoolError",
        "Failed getting connection; pool exhausted",
    ) in ours
    assert (
        "close() twice on a full pool",
        "raised",
        "mysql.connector.errors.PoolError",
        "Failed adding connection; queue is full",
    ) in ours


@pytest.mark.parametrize("reset", [True, False], ids=["pool_reset_session", "no_reset"])
def test_pool_reset_session(maria: MariaServer, reset: bool) -> None:
    ours = both(session_reset, maria, reset=reset)
    assert ("user variable", None if reset else 42) in ours


def test_dead_idle_connection_is_reconnected(maria: MariaServer) -> None:
    ours = both(dead_idle, maria)
    assert ours == [("a new session", True), ("one session", "sessions", 1)]


def test_connect_with_pool_name_uses_the_registry(maria: MariaServer) -> None:
    ours = both(registry, maria)
    assert (
        "another size",
        "raised",
        "mysql.connector.errors.PoolError",
        "Size can not be changed for active pools.",
    ) in ours


def test_add_connection_grows_the_pool(maria: MariaServer) -> None:
    both(grown_by_hand, maria)


def test_set_config_on_a_live_pool(maria: MariaServer) -> None:
    both(reconfigured, maria)


def test_uncommitted_work_never_reaches_the_next_borrower(maria: MariaServer) -> None:
    """A deliberate difference: with pool_reset_session=False mysql-connector hands the next
    borrower the open transaction; millpond rolls it back."""

    def scenario(impl: Any) -> bool:
        tag = maria.tag()
        p = impl.MySQLConnectionPool(
            pool_name=name(), pool_size=1, pool_reset_session=False, **maria.kwargs(tag)
        )
        c = p.get_connection()
        c.start_transaction()
        c.close()
        c = p.get_connection()
        open_transaction = bool(c.in_transaction)
        c.close()
        p._remove_connections()
        return open_transaction

    assert scenario(peer) is True
    assert scenario(compat) is False


# -- the layer's own guarantees ------------------------------------------------------------------


def test_errors_are_mysql_connectors_and_millponds() -> None:
    assert issubclass(compat.PoolError, errors.PoolError)
    assert issubclass(compat.PoolError, millpond.PoolError)


def test_a_dropped_pooled_connection_comes_back(maria: MariaServer) -> None:
    tag = maria.tag()
    p = compat.MySQLConnectionPool(pool_name=name(), pool_size=1, **maria.kwargs(tag))
    try:
        c = p.get_connection()
        del c  # mysql-connector loses this connection's place for good
        d = p.get_connection()
        assert scalar(d, "SELECT 1") == 1
        d.close()
    finally:
        p.close()


def test_timeout_extension(maria: MariaServer) -> None:
    p = compat.MySQLConnectionPool(
        pool_name=name(), pool_size=1, timeout=0.2, **maria.kwargs(maria.tag())
    )
    try:
        a = p.get_connection()
        with pytest.raises(errors.PoolError, match="pool exhausted"):
            p.get_connection()
        threading.Timer(0.05, a.close).start()
        b = p.get_connection()
        assert scalar(b, "SELECT 1") == 1
        b.close()
    finally:
        p.close()


def test_unreachable_server(maria: MariaServer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kwargs = {**maria.kwargs(maria.tag()), "port": port}
    with pytest.raises(mysql.connector.Error) as theirs:
        peer.MySQLConnectionPool(pool_name=name(), pool_size=1, **kwargs)
    with pytest.raises(mysql.connector.Error) as ours:
        compat.MySQLConnectionPool(pool_name=name(), pool_size=1, **kwargs)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)
