"""Issue 11 item 11: a backend killed right after a return (failover, pg_terminate_backend,
idle_session_timeout) is not lent inside ``ping_window``: its socket shows end-of-file, the
checkout sees it with a zero-timeout poll and pings (and replaces) it. Real servers."""

from __future__ import annotations

import time
from typing import Any

import pytest

import millpond

from .conftest import mysql_id, mysql_kill, pg_kill, scalar

PG_SCHEMES = ["postgresql+psycopg", "postgresql+psycopg2"]
MYSQL_SCHEMES = ["mysql+pymysql", "mysql+mysqlconnector", "mysql+mysqldb"]


def _with_scheme(url: str, scheme: str) -> str:
    return scheme + url[url.index("://") :]


def _wait_eof(pool: millpond.Pool, conn: Any) -> None:
    """Until the killed session's socket shows the hang-up (milliseconds, generous bound)."""
    deadline = time.monotonic() + 10
    while pool._adapter.socket_alive(conn):
        assert time.monotonic() < deadline, "the killed session's socket never showed EOF"
        time.sleep(0.005)
    # a kill on a local server can complete within the PEEK_AFTER moment after the return
    # (sub-millisecond on MariaDB); the check starts after it
    time.sleep(0.01)


def _kill_idle_and_borrow(pool: millpond.Pool, ident: Any, kill: Any) -> None:
    conn = pool.getconn()
    before = ident(conn)
    pool.putconn(conn)
    kill(conn)
    _wait_eof(pool, conn)
    again = pool.getconn()  # well inside ping_window (30 s)
    try:
        assert scalar(again, "SELECT 1") == 1  # works on the first try
        assert ident(again) != before  # a new session, not the dead one
    finally:
        pool.putconn(again)


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", PG_SCHEMES)
def test_postgres_backend_killed_inside_ping_window(pg_url: str, scheme: str) -> None:
    pytest.importorskip(scheme.split("+")[1])
    import psycopg

    pool = millpond.Pool(_with_scheme(pg_url, scheme), min_size=0, max_size=1, ping_window=30)
    with psycopg.connect(pg_url, autocommit=True) as admin, pool:
        _kill_idle_and_borrow(
            pool,
            lambda c: scalar(c, "SELECT pg_backend_pid()"),
            lambda c: pg_kill(admin, c),
        )


@pytest.mark.mysql
@pytest.mark.parametrize("scheme", MYSQL_SCHEMES)
def test_mariadb_session_killed_inside_ping_window(mysql_url: str, scheme: str) -> None:
    module = {"mysql+pymysql": "pymysql", "mysql+mysqlconnector": "mysql.connector"}
    pytest.importorskip(module.get(scheme, "MySQLdb"))
    import pymysql

    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    pool = millpond.Pool(_with_scheme(mysql_url, scheme), min_size=0, max_size=1, ping_window=30)
    try:
        with pool:
            _kill_idle_and_borrow(pool, mysql_id, lambda c: mysql_kill(admin, c))
    finally:
        admin.close()


def test_a_hot_loop_skips_the_socket_check(sqlite_path: Any) -> None:
    """A connection returned less than a moment ago is lent without even the poll."""
    pool = millpond.Pool(f"sqlite:///{sqlite_path}", min_size=0, max_size=1, ping_window=30)
    calls: list[Any] = []
    with pool:
        pool._socket_alive = lambda c: calls.append(c) or True
        conn = pool.getconn()
        pool.putconn(conn)
        pool.putconn(pool.getconn())  # returned microseconds ago: no poll
        assert calls == []
        time.sleep(0.01)
        pool.putconn(pool.getconn())  # idle beyond PEEK_AFTER: polled once
        assert len(calls) == 1
