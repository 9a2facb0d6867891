"""``millpond.Pool`` on real servers: connections really open, and what a borrower leaves behind
(uncommitted work, failed transactions, autocommit) never reaches the next one."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import pytest

from .helpers import (
    ALL_DRIVERS,
    FAILING_SQL,
    SERVER_DRIVERS,
    Backend,
    Boom,
    driver_params,
    query,
    scalar,
    wait_until,
)

every_driver = pytest.mark.parametrize("db", driver_params(*ALL_DRIVERS), indirect=True)
server_drivers = pytest.mark.parametrize("db", driver_params(*SERVER_DRIVERS), indirect=True)


@server_drivers
def test_min_size_connections_are_open_on_the_server(db: Backend, make_pool: Any) -> None:
    assert db.server_ids() == set()
    pool = make_pool(min_size=3, max_size=5)  # open(wait=True, timeout=10)
    s = pool.stats()
    assert (s.size, s.idle, s.in_use, s.opening, s.connects) == (3, 3, 0, 0, 3)
    on_server = db.server_ids()
    assert on_server is not None
    assert len(on_server) == 3, on_server

    # the three idle connections are the three sessions the server has: borrowing them all
    # opens nothing new, and each one answers with one of those backend ids
    conns = [pool.getconn(timeout=5) for _ in range(3)]
    try:
        for c in conns:
            db.assert_from_driver(c)
        lent_ids = {db.backend_id(c) for c in conns}
        assert lent_ids == on_server
        assert pool.stats().connects == 3
        assert db.server_ids() == on_server
    finally:
        for c in conns:
            pool.putconn(c)

    # closing the pool really closes them
    pool.close(timeout=5)
    wait_until(lambda: db.server_ids() == set(), "the pool's sessions to end after close()")


@every_driver
def test_uncommitted_work_is_rolled_back_on_return(db: Backend, make_pool: Any) -> None:
    table = db.make_table()
    pool = make_pool(min_size=1, max_size=1)

    with pool.connection() as conn:
        db.assert_from_driver(conn)
        first = conn
        first_id = db.backend_id(conn)
        query(conn, f"INSERT INTO {table} (v) VALUES (1)")
        assert db.in_transaction(conn)
        assert scalar(conn, f"SELECT COUNT(*) FROM {table}") == 1  # visible to itself only
    resets = pool.stats().resets
    assert resets >= 1

    with pool.connection() as conn:
        assert conn is first  # max_size=1: the very same connection
        assert not db.in_transaction(conn)  # (asked before any statement of ours)
        assert db.backend_id(conn) == first_id
        assert scalar(conn, f"SELECT COUNT(*) FROM {table}") == 0
    assert db.count(table) == 0  # and nobody else ever sees the row


@every_driver
def test_transaction_commits_on_success(db: Backend, make_pool: Any) -> None:
    table = db.make_table()
    pool = make_pool(min_size=1, max_size=1)
    with pool.transaction() as conn:
        query(conn, f"INSERT INTO {table} (v) VALUES (1)")
        query(conn, f"INSERT INTO {table} (v) VALUES (2)")
    assert db.count(table) == 2
    with pool.connection() as conn:
        assert not db.in_transaction(conn)


@every_driver
def test_transaction_rolls_back_on_exception(db: Backend, make_pool: Any) -> None:
    table = db.make_table()
    pool = make_pool(min_size=1, max_size=1)
    with pytest.raises(Boom), pool.transaction() as conn:
        query(conn, f"INSERT INTO {table} (v) VALUES (1)")
        raise Boom
    assert db.count(table) == 0
    with pool.transaction() as conn:  # the pool and the connection are fine afterwards
        assert not db.in_transaction(conn)
        query(conn, f"INSERT INTO {table} (v) VALUES (2)")
    assert db.count(table, "v = 2") == 1
    assert db.count(table, "v = 1") == 0


@every_driver
def test_transaction_on_an_autocommit_connection(db: Backend, make_pool: Any) -> None:
    """``transaction()`` on a connection in autocommit mode begins explicitly: a failure rolls
    back every statement of the block, success commits them."""
    table = db.make_table()
    pool = make_pool(min_size=1, max_size=1, configure=lambda c: db.set_autocommit(c, True))
    with pool.connection() as conn:
        assert db.get_autocommit(conn)

    with pytest.raises(Boom), pool.transaction() as conn:
        query(conn, f"INSERT INTO {table} (v) VALUES (1)")
        query(conn, f"INSERT INTO {table} (v) VALUES (1)")
        raise Boom
    assert db.count(table) == 0

    with pool.transaction() as conn:
        query(conn, f"INSERT INTO {table} (v) VALUES (2)")
    assert db.count(table, "v = 2") == 1

    with pool.connection() as conn:
        assert db.get_autocommit(conn)  # still the pool's setting
        assert not db.in_transaction(conn)


@every_driver
def test_exception_in_block_propagates_and_pool_stays_usable(db: Backend, make_pool: Any) -> None:
    table = db.make_table()
    pool = make_pool(min_size=1, max_size=1)
    with pytest.raises(Boom, match="app failure"), pool.connection() as conn:
        first = conn
        query(conn, f"INSERT INTO {table} (v) VALUES (1)")
        raise Boom("app failure")

    s = pool.stats()
    assert (s.size, s.idle, s.in_use, s.waiting) == (1, 1, 0, 0)
    assert s.closed_total == 0  # an application error is no reason to drop the connection
    with pool.connection(timeout=5) as conn:
        assert conn is first
        assert not db.in_transaction(conn)
        assert scalar(conn, f"SELECT COUNT(*) FROM {table}") == 0
        assert scalar(conn, "SELECT 1") == 1
    assert db.count(table) == 0


@every_driver
@pytest.mark.parametrize("escape", ["caught", "propagated"])
def test_failed_statement_comes_back_clean(db: Backend, make_pool: Any, escape: str) -> None:
    """A connection returned inside a failed transaction (on PostgreSQL: aborted, every further
    statement refused) is lent clean next time, and the work before the failure is gone."""
    table = db.make_table()
    pool = make_pool(min_size=1, max_size=1)
    driver_error = db_error_types(db)

    outer = pytest.raises(driver_error) if escape == "propagated" else contextlib.nullcontext()
    with outer, pool.connection() as conn:
        first = conn
        query(conn, f"INSERT INTO {table} (v) VALUES (1)")
        with pytest.raises(driver_error):
            query(conn, FAILING_SQL)
        if db.driver.kind == "postgres":
            assert db.in_failed_transaction(conn)
            with pytest.raises(driver_error):  # aborted: refuses everything
                query(conn, "SELECT 1")
        if escape == "propagated":
            query(conn, FAILING_SQL)

    with pool.connection(timeout=5) as conn:
        assert conn is first
        assert not db.in_transaction(conn)
        assert not db.in_failed_transaction(conn)
        assert scalar(conn, "SELECT 1") == 1
        assert scalar(conn, f"SELECT COUNT(*) FROM {table}") == 0
    assert db.count(table) == 0
    assert pool.stats().closed_total == 0


@every_driver
def test_autocommit_changed_by_a_borrower_is_restored(db: Backend, make_pool: Any) -> None:
    table = db.make_table()
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn:
        first = conn
        assert not db.get_autocommit(conn)
        db.set_autocommit(conn, True)
    with pool.connection() as conn:
        assert conn is first
        assert not db.get_autocommit(conn)
        query(conn, f"INSERT INTO {table} (v) VALUES (1)")
    assert db.count(table) == 0  # the insert was not autocommitted, and rolled back on return


# -- helpers -------------------------------------------------------------------------------


def db_error_types(db: Backend) -> type[BaseException]:
    """The driver's DB-API ``Error`` base class."""
    return importlib.import_module(db.driver.module).Error  # type: ignore[no-any-return]
