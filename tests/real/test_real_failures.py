"""``millpond.Pool`` on real servers when things go wrong: sessions killed by the server,
connections closed by the user, wrong use of the API, and a server that cannot be reached."""

from __future__ import annotations

import gc
import importlib
import threading
import time
from typing import Any

import pytest

import millpond

from .helpers import (
    ALL_DRIVERS,
    SERVER_DRIVERS,
    Backend,
    driver_params,
    query,
    scalar,
    wait_until,
)

every_driver = pytest.mark.parametrize("db", driver_params(*ALL_DRIVERS), indirect=True)
server_drivers = pytest.mark.parametrize("db", driver_params(*SERVER_DRIVERS), indirect=True)

SECRET = "s3cret-pw"


# -- sessions killed by the server ------------------------------------------------------------


@server_drivers
def test_backend_killed_while_idle_is_never_lent(db: Backend, make_pool: Any) -> None:
    """With ``pre_ping`` and ``ping_window=0`` every checkout validates: a session the server
    ended while it sat idle is discarded, and the borrower gets a working one instead."""
    pool = make_pool(min_size=1, max_size=1, pre_ping=True, ping_window=0)
    with pool.connection() as conn:
        dead = conn
        dead_id = db.backend_id(conn)
    db.kill(dead_id)
    before = pool.stats()
    assert (before.ping_failures, before.closed_by_reason.get("ping_failed", 0)) == (0, 0)

    with pool.connection(timeout=10) as conn:
        assert conn is not dead
        assert scalar(conn, "SELECT 1") == 1
        new_id = db.backend_id(conn)
        assert new_id != dead_id
        # a killed backend is listed until it has exited, a moment later on a loaded machine
        wait_until(lambda: db.server_ids() == {new_id}, "the server lists just the new one")

    s = pool.stats()
    assert s.ping_failures == 1
    assert s.closed_by_reason.get("ping_failed", 0) == 1
    assert (s.size, s.idle, s.in_use, s.connects) == (1, 1, 0, 2)


@server_drivers
def test_backend_killed_while_idle_after_the_ping_window(db: Backend, make_pool: Any) -> None:
    """The default kind of setting: a connection returned longer than ``ping_window`` ago is
    pinged before it is lent."""
    window = 0.2
    pool = make_pool(min_size=1, max_size=1, pre_ping=True, ping_window=window)
    with pool.connection() as conn:
        dead_id = db.backend_id(conn)
    db.kill(dead_id)
    # wait past the window on the same clock the pool uses (a precondition, not an assertion)
    returned_at = time.monotonic()
    while time.monotonic() - returned_at < window * 1.5:
        time.sleep(window / 4)

    with pool.connection(timeout=10) as conn:
        assert scalar(conn, "SELECT 1") == 1
        assert db.backend_id(conn) != dead_id
    s = pool.stats()
    assert s.ping_failures == 1
    assert s.closed_by_reason.get("ping_failed", 0) == 1


@server_drivers
def test_killed_backend_lent_without_ping_is_discarded_on_return(
    db: Backend, make_pool: Any
) -> None:
    """Without ``pre_ping`` the dead session is lent; the disconnect the borrower hits makes the
    pool drop it on return instead of lending it again."""
    pool = make_pool(min_size=1, max_size=1, pre_ping=False)
    with pool.connection() as conn:
        dead_id = db.backend_id(conn)
    db.kill(dead_id)

    driver_error = importlib.import_module(db.driver.module).Error
    with pytest.raises(driver_error), pool.connection() as conn:
        query(conn, "SELECT 1")
        if db.driver.kind == "mysql":  # the first read may only notice the closed socket
            query(conn, "SELECT 1")

    s = pool.stats()
    assert s.in_use == 0
    assert s.closed_by_reason.get("broken", 0) + s.closed_by_reason.get("reset_failed", 0) == 1
    with pool.connection(timeout=10) as conn:
        assert scalar(conn, "SELECT 1") == 1
        assert db.backend_id(conn) != dead_id
    assert pool.stats().size == 1


# -- connections closed by their borrower -----------------------------------------------------


@every_driver
def test_connection_closed_by_user_is_replaced(db: Backend, make_pool: Any) -> None:
    pool = make_pool(min_size=2, max_size=2)
    a = pool.getconn(timeout=5)
    b = pool.getconn(timeout=5)
    a.close()
    pool.putconn(a)
    pool.putconn(b)
    s = pool.stats()
    assert s.in_use == 0
    assert s.size <= 2

    # no slot lost: the pool still lends max_size connections, all of them working
    c1 = pool.getconn(timeout=10)
    c2 = pool.getconn(timeout=10)
    try:
        assert c1 is not a and c2 is not a
        assert c1 is not c2
        assert scalar(c1, "SELECT 1") == 1
        assert scalar(c2, "SELECT 1") == 1
        if db.driver.has_server:
            # the user's close() is the client's goodbye; the server lists the session until
            # its backend has exited, a moment later on a loaded machine
            mine = {db.backend_id(c1), db.backend_id(c2)}
            wait_until(lambda: db.server_ids() == mine, "the server lists just the two lent")
    finally:
        pool.putconn(c1)
        pool.putconn(c2)
    s = pool.stats()
    assert (s.size, s.idle, s.in_use) == (2, 2, 0)
    assert s.closed_total == 1


@every_driver
def test_connection_closed_inside_a_with_block_is_replaced(db: Backend, make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn:
        closed = conn
        conn.close()
    s = pool.stats()
    assert (s.in_use, s.closed_total) == (0, 1)
    with pool.connection(timeout=10) as conn:
        assert conn is not closed
        assert scalar(conn, "SELECT 1") == 1
    assert pool.stats().size == 1


# -- wrong use ---------------------------------------------------------------------------------


@every_driver
def test_returning_twice_raises_and_the_pool_stays_whole(db: Backend, make_pool: Any) -> None:
    pool = make_pool(min_size=2, max_size=2)
    conn = pool.getconn(timeout=5)
    pool.putconn(conn)
    before = pool.stats()
    with pytest.raises(millpond.ForeignConnection):
        pool.putconn(conn)
    with pytest.raises(millpond.ForeignConnection):
        pool.putconn(conn, discard=True)
    after = pool.stats()
    assert (after.size, after.idle, after.in_use) == (before.size, before.idle, before.in_use)
    assert after.closed_total == before.closed_total

    c1 = pool.getconn(timeout=5)
    c2 = pool.getconn(timeout=5)
    try:
        assert c1 is not c2
        assert scalar(c1, "SELECT 1") == 1 and scalar(c2, "SELECT 1") == 1
        with pytest.raises(millpond.PoolTimeout):  # exactly two: nothing was duplicated
            pool.getconn(timeout=0)
    finally:
        pool.putconn(c1)
        pool.putconn(c2)
    assert pool.stats().size == 2


@every_driver
def test_returning_to_the_wrong_pool_raises(db: Backend, make_pool: Any) -> None:
    a = make_pool(min_size=1, max_size=1, name="a")
    b = make_pool(min_size=1, max_size=1, name="b")
    conn = a.getconn(timeout=5)
    with pytest.raises(millpond.ForeignConnection):
        b.putconn(conn)
    sb = b.stats()
    assert (sb.size, sb.idle, sb.in_use, sb.closed_total) == (1, 1, 0, 0)
    assert a.stats().in_use == 1
    assert scalar(conn, "SELECT 1") == 1  # untouched by b
    a.putconn(conn)

    with a.connection(timeout=5) as ca, b.connection(timeout=5) as cb:
        assert ca is conn
        assert cb is not conn
        assert scalar(ca, "SELECT 1") == 1 and scalar(cb, "SELECT 1") == 1
    assert (a.stats().idle, b.stats().idle) == (1, 1)


@every_driver
def test_a_closed_pool_lends_nothing(db: Backend, make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=2)
    with pool.connection() as conn:
        assert scalar(conn, "SELECT 1") == 1
    pool.close(timeout=5)
    with pytest.raises(millpond.PoolClosed):
        pool.getconn()
    with pytest.raises(millpond.PoolClosed):
        pool.getconn(timeout=0)
    with pytest.raises(millpond.PoolClosed), pool.connection():
        pass
    with pytest.raises(millpond.PoolClosed), pool.transaction():
        pass
    with pytest.raises(millpond.PoolClosed):
        pool.open()
    s = pool.stats()
    assert s.closed and (s.size, s.idle, s.in_use) == (0, 0, 0)
    if db.driver.has_server:
        wait_until(lambda: db.server_ids() == set(), "the sessions to end after close()")


@every_driver
def test_a_pool_not_yet_opened_lends_nothing(db: Backend, make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1, wait=False)  # open=False, never opened
    with pytest.raises(millpond.PoolClosed, match="open"):
        pool.getconn(timeout=1)
    if db.driver.has_server:
        assert db.server_ids() == set()  # no I/O before open()
    pool.open(wait=True, timeout=10)
    with pool.connection() as conn:
        assert scalar(conn, "SELECT 1") == 1


@every_driver
def test_borrower_waiting_when_the_pool_closes_gets_pool_closed(
    db: Backend, make_pool: Any
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn(timeout=5)
    out: dict[str, BaseException] = {}

    def wait_for_one() -> None:
        try:
            pool.getconn(timeout=30)
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=wait_for_one, daemon=True)
    t.start()
    wait_until(lambda: pool.stats().waiting == 1, "the thread to queue")
    closer = threading.Thread(target=pool.close, kwargs={"timeout": 10}, daemon=True)
    closer.start()
    t.join(10)
    assert not t.is_alive()
    assert isinstance(out.get("error"), millpond.PoolClosed)
    pool.putconn(held)  # returned after close: closed, not kept
    closer.join(10)
    assert not closer.is_alive()
    s = pool.stats()
    assert (s.size, s.in_use, s.waiting) == (0, 0, 0)
    if db.driver.has_server:
        wait_until(lambda: db.server_ids() == set(), "the sessions to end after close()")


# -- the server cannot be reached ---------------------------------------------------------------


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _assert_redacted(err: BaseException, pool: millpond.Pool) -> None:
    assert isinstance(err, millpond.ConnectError), type(err)
    cause = err.__cause__
    assert cause is not None, "the driver's error is chained as __cause__"
    for e in _chain(err):
        for text in (str(e), repr(e), *(str(a) for a in e.args)):
            assert SECRET not in text, (type(e), text)
    assert SECRET not in repr(pool)
    assert SECRET not in str(pool)
    assert SECRET not in str(pool.stats())


@server_drivers
def test_unreachable_server_gives_connect_error_on_open(db: Backend, make_pool: Any) -> None:
    url = db.url(password=SECRET, port=_closed_port())
    assert SECRET in url
    pool = make_pool(url=url, min_size=1, max_size=2, wait=False)
    assert SECRET not in repr(pool)
    with pytest.raises(millpond.ConnectError) as info:
        pool.open(wait=True, timeout=5)
    # a ConnectError, not the driver's own error and not a PoolTimeout: the pool is broken,
    # not busy, and it says so without sitting out the timeout
    assert not isinstance(info.value, millpond.PoolTimeout)
    _assert_redacted(info.value, pool)
    driver_error = importlib.import_module(db.driver.module).Error
    assert isinstance(info.value.__cause__, driver_error), type(info.value.__cause__)
    s = pool.stats()
    assert s.connect_errors >= 1 and s.size == 0
    assert s.last_connect_error is not None and SECRET not in s.last_connect_error


@server_drivers
def test_unreachable_server_gives_connect_error_on_getconn(db: Backend, make_pool: Any) -> None:
    url = db.url(password=SECRET, port=_closed_port())
    pool = make_pool(url=url, min_size=1, max_size=2, open=True, wait=False)
    for _ in range(3):  # the first call meets the first failure, the others the backoff
        with pytest.raises(millpond.ConnectError) as info:
            pool.getconn(timeout=5)
        assert not isinstance(info.value, millpond.PoolTimeout)
        _assert_redacted(info.value, pool)
    with pytest.raises(millpond.ConnectError) as info2, pool.connection(timeout=5):
        pass
    _assert_redacted(info2.value, pool)
    s = pool.stats()
    assert (s.size, s.in_use, s.waiting) == (0, 0, 0)


@pytest.mark.parametrize("db", driver_params(*SERVER_DRIVERS[2:]), indirect=True)
def test_wrong_password_gives_redacted_connect_error(db: Backend, make_pool: Any) -> None:
    """MariaDB checks passwords (the PostgreSQL test server trusts everyone): a refused login
    is a ConnectError that does not repeat the password."""
    url = db.url(password=SECRET)  # the test user has an empty password
    pool = make_pool(url=url, min_size=1, max_size=1, wait=False)
    with pytest.raises(millpond.ConnectError) as info:
        pool.open(wait=True, timeout=5)
    _assert_redacted(info.value, pool)
    with pytest.raises(millpond.ConnectError) as info:
        pool.getconn(timeout=5)
    _assert_redacted(info.value, pool)


# -- connections dropped without being returned ------------------------------------------------


@every_driver
def test_connection_dropped_by_its_borrower_is_recovered(db: Backend, make_pool: Any) -> None:
    """A borrower that loses its connection without returning it (garbage-collected) does not
    cost the pool its slot."""
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn(timeout=5)
    lost_id = db.backend_id(conn)
    db.in_transaction(conn)
    del conn
    gc.collect()
    wait_until(lambda: pool.stats().in_use == 0, "the pool to notice the collected connection")
    s = pool.stats()
    assert s.lost == 1
    assert s.closed_by_reason.get("garbage_collected", 0) == 1
    with pool.connection(timeout=10) as conn:
        assert scalar(conn, "SELECT 1") == 1
        if db.driver.has_server:
            assert db.backend_id(conn) != lost_id
    if db.driver.has_server:
        wait_until(lambda: lost_id not in (db.server_ids() or set()), "the lost session to end")
    s = pool.stats()
    assert (s.size, s.in_use) == (1, 0)
