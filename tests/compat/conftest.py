"""Fixtures for the compat layers' differential tests: the real servers seen from outside.

``pg`` and ``maria`` hand out fresh session tags (so a run's sessions can be counted on the
server and told apart from everyone else's), connection arguments carrying the tag, and an
admin connection to count and kill sessions. Servers come from ``tests/conftest.py``: they
skip when unreachable, and fail under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from .helpers import rows, wait_until


class PgServer:
    """PostgreSQL: sessions tagged by ``application_name``."""

    def __init__(self, url: str) -> None:
        import psycopg2

        parts = urlsplit(url)
        self.params: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 5432,
            "user": unquote(parts.username or "postgres"),
            "dbname": parts.path.lstrip("/") or "test",
        }
        if parts.password:
            self.params["password"] = unquote(parts.password)
        self.prefix = "mpc_" + uuid.uuid4().hex[:8]
        self._seq = itertools.count(1)
        self.admin = psycopg2.connect(**self.params, application_name="mpc_admin")
        self.admin.autocommit = True

    def tag(self) -> str:
        return f"{self.prefix}_{next(self._seq)}"

    def kwargs(self, tag: str) -> dict[str, Any]:
        """Connection arguments of a session tagged ``tag``."""
        return {**self.params, "application_name": tag}

    def count(self, tag: str) -> int:
        return int(
            rows(
                self.admin,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (tag,),
            )[0][0]
        )

    def pids(self, tag: str) -> set[int]:
        found = rows(
            self.admin, "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (tag,)
        )
        return {int(r[0]) for r in found}

    def kill(self, pid: int) -> None:
        """End a session from the server side; return once the server has let it go."""
        rows(self.admin, "SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(lambda: pid not in self.all_pids(), f"backend {pid} gone")

    def all_pids(self) -> set[int]:
        return {int(r[0]) for r in rows(self.admin, "SELECT pid FROM pg_stat_activity")}

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            rows(
                self.admin,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE %s",
                (self.prefix + "%",),
            )
        with contextlib.suppress(Exception):
            self.admin.close()


class MariaServer:
    """MariaDB: sessions tagged by a throw-away user (performance_schema, and with it
    connection attributes, is off on the test server)."""

    def __init__(self, url: str) -> None:
        import pymysql

        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 3306
        self.user = unquote(parts.username or "root")
        self.password = unquote(parts.password or "")
        self.database = parts.path.lstrip("/") or "test"
        self.prefix = "mpc" + uuid.uuid4().hex[:8]
        self._seq = itertools.count(1)
        self.users: list[str] = []
        self.admin = pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            autocommit=True,
        )

    def tag(self) -> str:
        """A new user, allowed on the test database, whose sessions count as this run's."""
        user = f"{self.prefix}_{next(self._seq)}"
        db = self.database.replace("`", "``")
        # the server's own accounts are defined for 127.0.0.1 and localhost: an account for
        # exactly the host we come from wins over '%' in the anonymous-user check too
        for host in ("%", self.host):
            rows(self.admin, f"CREATE USER '{user}'@'{host}' IDENTIFIED BY ''")
            rows(self.admin, f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{user}'@'{host}'")
        self.users.append(user)
        return user

    def kwargs(self, tag: str) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": tag,
            "password": "",
            "database": self.database,
        }

    def ids(self, tag: str) -> set[int]:
        found = rows(
            self.admin,
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND COMMAND <> 'Killed'",
            (tag,),
        )
        return {int(r[0]) for r in found}

    def count(self, tag: str) -> int:
        return len(self.ids(tag))

    def kill(self, session: int, tag: str) -> None:
        rows(self.admin, f"KILL {int(session)}")
        wait_until(lambda: session not in self.ids(tag), f"session {session} gone")

    def cleanup(self) -> None:
        for user in self.users:
            for session in self.ids(user):
                with contextlib.suppress(Exception):
                    rows(self.admin, f"KILL {session}")
            for host in ("%", self.host):
                with contextlib.suppress(Exception):
                    rows(self.admin, f"DROP USER IF EXISTS '{user}'@'{host}'")
        with contextlib.suppress(Exception):
            self.admin.close()


@pytest.fixture
def pg(pg_url: str) -> Iterator[PgServer]:
    server = PgServer(pg_url)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def maria(mysql_url: str) -> Iterator[MariaServer]:
    server = MariaServer(mysql_url)
    try:
        yield server
    finally:
        server.cleanup()
