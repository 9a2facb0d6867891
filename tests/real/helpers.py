"""Helpers for the real-server tests of ``millpond.Pool`` (fixtures are in conftest.py).

The servers come from the fixtures of ``tests/conftest.py`` (``pg_url``, ``mysql_url``,
``sqlite_path``: they skip when a server is unreachable and fail under ``CI=true``). This file
adds one :class:`Backend` per driver: the pool's URL, a tag that picks out the pool's own sessions
on the server, and an independent admin connection to look at the server from outside the pool.

* PostgreSQL sessions are tagged with ``application_name`` (passed in ``connect_kwargs``).
* MariaDB sessions are tagged by a throw-away user created per test (``performance_schema``, and
  with it connection attributes, is off on the test server), so the process list can be filtered
  on ``USER``.
* SQLite has no server: ``server_ids`` is None and the scenarios that need one do not apply.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest

# -- drivers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Driver:
    id: str
    kind: str  # "postgres" | "mysql" | "sqlite"
    scheme: str
    module: str  # the driver's import name: lent connections must come from it

    @property
    def has_server(self) -> bool:
        return self.kind != "sqlite"


PSYCOPG = Driver("psycopg", "postgres", "postgresql", "psycopg")
PSYCOPG2 = Driver("psycopg2", "postgres", "postgresql+psycopg2", "psycopg2")
PYMYSQL = Driver("pymysql", "mysql", "mysql", "pymysql")
MYSQLCONNECTOR = Driver("mysqlconnector", "mysql", "mysql+mysqlconnector", "mysql.connector")
SQLITE = Driver("sqlite3", "sqlite", "sqlite", "sqlite3")

ALL_DRIVERS = (PSYCOPG, PSYCOPG2, PYMYSQL, MYSQLCONNECTOR, SQLITE)
SERVER_DRIVERS = tuple(d for d in ALL_DRIVERS if d.has_server)
_MARKS = {"postgres": (pytest.mark.postgres,), "mysql": (pytest.mark.mysql,), "sqlite": ()}


def driver_params(*drivers: Driver) -> list[Any]:
    """``pytest.param``s for ``@pytest.mark.parametrize("db", ..., indirect=True)``."""
    return [pytest.param(d, id=d.id, marks=_MARKS[d.kind]) for d in drivers]


class Boom(Exception):
    """An application error raised inside a ``with`` block."""


#: a statement that fails on every backend (MariaDB returns NULL for 1/0, so not that)
FAILING_SQL = "SELECT * FROM mp_no_such_table_anywhere"


def wait_until(cond: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Wait for the server or a background thread to reach a state (a bound, not a timing
    assertion)."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {limit}s: {what}")
        time.sleep(0.005)


def query(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    """Run one statement on a raw DB-API connection; return its rows (empty if none)."""
    cur = conn.cursor()
    try:
        cur.execute(sql)
        rows = cur.fetchall() if cur.description is not None else []
        return [tuple(r) for r in rows]
    finally:
        cur.close()


def scalar(conn: Any, sql: str) -> Any:
    rows = query(conn, sql)
    assert len(rows) == 1, rows
    return rows[0][0]


# -- one backend per test --------------------------------------------------------------------


class Backend:
    """What a test needs to know about one driver on one server."""

    def __init__(self, driver: Driver, base_url: str, tag: str) -> None:
        self.driver = driver
        self.tag = tag
        self.tables: list[str] = []
        self._admin: Any = None
        self._admin_kind = driver.kind
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port
        self.user = unquote(parts.username or "")
        self.password = unquote(parts.password or "")
        self.database = parts.path.lstrip("/")
        self.path = base_url[len("sqlite:///") :] if driver.kind == "sqlite" else ""

    # URLs -----------------------------------------------------------------------------------

    def url(
        self, *, user: str | None = None, password: str | None = None, port: int | None = None
    ) -> str:
        d = self.driver
        if d.kind == "sqlite":
            return f"sqlite:///{self.path}"
        user = self.pool_user if user is None else user
        password = self.password if password is None else password
        netloc = quote(user, safe="")
        if password:
            netloc += ":" + quote(password, safe="")
        netloc += f"@{self.host}:{port or self.port}"
        return f"{d.scheme}://{netloc}/{self.database}"

    @property
    def pool_user(self) -> str:
        return self.tag if self.driver.kind == "mysql" else self.user

    @property
    def connect_kwargs(self) -> dict[str, Any] | None:
        if self.driver.kind == "postgres":
            return {"application_name": self.tag}
        return None

    # the admin connection: the server seen from outside the pool ------------------------------

    def admin(self) -> Any:
        if self._admin is None:
            self._admin = self.connect_independent(autocommit=True)
        return self._admin

    def connect_independent(self, autocommit: bool = True) -> Any:
        kind = self.driver.kind
        if kind == "postgres":
            import psycopg

            return psycopg.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password or None,
                dbname=self.database,
                autocommit=autocommit,
                connect_timeout=5,
            )
        if kind == "mysql":
            import pymysql

            return pymysql.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password,
                database=self.database,
                autocommit=autocommit,
                connect_timeout=5,
            )
        return sqlite3.connect(self.path, isolation_level=None if autocommit else "", timeout=10)

    def admin_query(self, sql: str) -> list[tuple[Any, ...]]:
        return query(self.admin(), sql)

    def admin_scalar(self, sql: str) -> Any:
        return scalar(self.admin(), sql)

    def setup(self) -> None:
        if self.driver.kind == "mysql":
            db = self.database.replace("`", "``")
            self.admin_query(f"CREATE USER '{self.tag}'@'%' IDENTIFIED BY ''")
            self.admin_query(f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{self.tag}'@'%'")
            # the server's own users are defined for 127.0.0.1 and localhost: an account for
            # exactly the host we come from wins over '%' for the anonymous-user check too
            self.admin_query(f"CREATE USER '{self.tag}'@'{self.host}' IDENTIFIED BY ''")
            self.admin_query(f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{self.tag}'@'{self.host}'")

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

    # the pool's sessions on the server -------------------------------------------------------

    def server_ids(self, conn: Any = None) -> set[int] | None:
        """Backend ids of this test's pool sessions open on the server now (None: no server).
        ``conn``: an independent connection to ask on (default: the admin connection)."""
        kind = self.driver.kind
        if kind == "postgres":
            sql = f"SELECT pid FROM pg_stat_activity WHERE application_name = '{self.tag}'"
        elif kind == "mysql":
            sql = (
                f"SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{self.tag}' "
                "AND COMMAND <> 'Killed'"
            )
        else:
            return None
        rows = query(conn if conn is not None else self.admin(), sql)
        return {int(r[0]) for r in rows}

    def backend_id(self, conn: Any) -> int:
        """The server's id of a session, asked through the session itself."""
        kind = self.driver.kind
        if kind == "postgres":
            return int(scalar(conn, "SELECT pg_backend_pid()"))
        if kind == "mysql":
            return int(scalar(conn, "SELECT CONNECTION_ID()"))
        return id(conn)

    def kill(self, backend_id: int) -> None:
        """End a session from the server side and wait until the server has let it go."""
        kind = self.driver.kind
        if kind == "postgres":
            assert self.admin_scalar(f"SELECT pg_terminate_backend({int(backend_id)})") is True
        elif kind == "mysql":
            self.admin_query(f"KILL {int(backend_id)}")
        else:
            raise AssertionError("sqlite has no server")
        wait_until(
            lambda: backend_id not in (self.server_ids() or set()), f"backend {backend_id} gone"
        )

    # session state, asked of a connection the pool lent ------------------------------------

    def in_transaction(self, conn: Any) -> bool:
        d = self.driver
        if d is PSYCOPG:
            import psycopg

            return conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        if d is PSYCOPG2:
            import psycopg2.extensions as ext

            return conn.get_transaction_status() != ext.TRANSACTION_STATUS_IDLE
        if d.kind == "mysql":
            # asked of the server itself, so it does not depend on the client's bookkeeping
            return bool(int(scalar(conn, "SELECT @@in_transaction")))
        return bool(conn.in_transaction)

    def in_failed_transaction(self, conn: Any) -> bool:
        d = self.driver
        if d is PSYCOPG:
            import psycopg

            return conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        if d is PSYCOPG2:
            import psycopg2.extensions as ext

            return conn.get_transaction_status() == ext.TRANSACTION_STATUS_INERROR
        return False  # MariaDB and SQLite keep the transaction going after a failed statement

    def get_autocommit(self, conn: Any) -> bool:
        d = self.driver
        if d is PYMYSQL:
            return bool(conn.get_autocommit())
        if d is SQLITE:
            return conn.isolation_level is None
        return bool(conn.autocommit)

    def set_autocommit(self, conn: Any, value: bool) -> None:
        d = self.driver
        if d is PYMYSQL:
            conn.autocommit(value)
        elif d is SQLITE:
            conn.isolation_level = None if value else ""
        else:
            conn.autocommit = value

    def assert_from_driver(self, conn: Any) -> None:
        """The pool lends the driver's own connection (an adapter may subclass the driver's
        class, e.g. to make it weakly referenceable, but there is no proxy in between)."""
        d = self.driver
        if d is PSYCOPG:
            import psycopg

            base: type = psycopg.Connection
        elif d is PSYCOPG2:
            import psycopg2.extensions

            base = psycopg2.extensions.connection
        elif d is PYMYSQL:
            import pymysql.connections

            base = pymysql.connections.Connection
        elif d is MYSQLCONNECTOR:
            from mysql.connector.abstracts import MySQLConnectionAbstract

            base = MySQLConnectionAbstract
        else:
            base = sqlite3.Connection
        assert isinstance(conn, base), (type(conn).__mro__, base)

    # tables ----------------------------------------------------------------------------------

    def make_table(self) -> str:
        name = "mp_" + uuid.uuid4().hex[:16]
        engine = " ENGINE=InnoDB" if self.driver.kind == "mysql" else ""
        self.admin_query(f"CREATE TABLE {name} (v INTEGER NOT NULL){engine}")
        self.tables.append(name)
        return name

    def count(self, table: str, where: str = "1=1") -> int:
        """Rows committed in ``table``, seen from a connection of its own."""
        return int(self.admin_scalar(f"SELECT COUNT(*) FROM {table} WHERE {where}"))
