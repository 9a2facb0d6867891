"""Fork safety, which the peers lack: a child process forgets what its parent lent and opens its
own connections, without touching the parent's sockets."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest

from millpond.compat import dbutils, mysql
from millpond.compat import psycopg2 as pg_compat

from .conftest import MariaServer, PgServer
from .helpers import scalar

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_child(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child; its exit status (0: it passed)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            body()
            code = 0
        except BaseException as exc:
            print(f"child failed: {exc!r}", file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.postgres
def test_psycopg2_pool_in_a_child(pg: PgServer) -> None:
    p = pg_compat.ThreadedConnectionPool(1, 1, **pg.kwargs(pg.tag()))
    try:
        lent = p.getconn()
        parent = scalar(lent, "SELECT pg_backend_pid()")

        def child() -> None:
            conn = p.getconn()  # the parent's connection is not lent here: not exhausted
            assert scalar(conn, "SELECT pg_backend_pid()") != parent
            p.putconn(conn)

        assert in_child(child) == 0
        assert scalar(lent, "SELECT pg_backend_pid()") == parent  # the parent's still works
        p.putconn(lent)
    finally:
        p.closeall()


@pytest.mark.mysql
def test_mysql_pool_in_a_child(maria: MariaServer) -> None:
    p = mysql.MySQLConnectionPool(pool_name="forked", pool_size=1, **maria.kwargs(maria.tag()))
    try:
        lent = p.get_connection()
        parent = scalar(lent, "SELECT CONNECTION_ID()")

        def child() -> None:
            lent.close()  # the parent's: dropped, not returned
            conn = p.get_connection()
            assert scalar(conn, "SELECT CONNECTION_ID()") != parent
            conn.close()

        assert in_child(child) == 0
        assert scalar(lent, "SELECT CONNECTION_ID()") == parent
        lent.close()
    finally:
        p.close()


@pytest.mark.postgres
def test_pooled_db_in_a_child(pg: PgServer) -> None:
    p = dbutils.PooledDB(psycopg2, maxconnections=1, **pg.kwargs(pg.tag()))
    try:
        lent: Any = p.connection()
        parent = scalar(lent, "SELECT pg_backend_pid()")

        def child() -> None:
            db = p.connection()
            assert scalar(db, "SELECT pg_backend_pid()") != parent
            db.close()
            lent.close()  # a proxy lent before the fork: nothing to give back here

        assert in_child(child) == 0
        assert scalar(lent, "SELECT pg_backend_pid()") == parent
        lent.close()
    finally:
        p.close()
