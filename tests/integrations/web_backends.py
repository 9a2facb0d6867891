"""The databases the Flask and FastAPI tests run on, and a scratch table per test.

Each backend gives a URL for the pool, a SQL dialect (placeholder, backend-id query) and an
admin connection opened outside every pool, which checks what the server itself holds.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MYSQL_URL, PG_URL, require_server


@dataclass(frozen=True)
class Backend:
    name: str
    url: str
    async_url: str
    placeholder: str
    backend_id_sql: str | None  # None: the server has no sessions (SQLite)
    admin: Callable[[], Any]
    table: str

    def sql(self, text: str) -> str:
        """``text`` with ``?`` placeholders in this driver's style."""
        return text.replace("?", self.placeholder)

    def rows(self) -> list[tuple[Any, ...]]:
        """The scratch table's rows, read by the admin connection (committed data only)."""
        with contextlib.closing(self.admin()) as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT v FROM {self.table} ORDER BY v")
            rows = [tuple(r) for r in cur.fetchall()]
            conn.rollback()
            return rows


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=False)


def _mysql_admin() -> Any:
    import pymysql

    parts = MYSQL_URL.split("://", 1)[1]
    host_port = parts.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    return pymysql.connect(host=host, port=int(port or 3306), user="root", database="test")


@contextlib.contextmanager
def make_backend(name: str, tmp_path: Path) -> Iterator[Backend]:
    """The backend called ``name`` with a fresh scratch table, dropped afterwards."""
    table = f"web_{uuid.uuid4().hex[:10]}"
    if name == "postgresql":
        pytest.importorskip("psycopg")
        require_server(PG_URL, 5432, "PostgreSQL")
        rest = PG_URL.split("://", 1)[1]
        backend = Backend(
            name,
            PG_URL,
            f"postgresql+asyncpg://{rest}",
            "%s",
            "SELECT pg_backend_pid()",
            _pg_admin,
            table,
        )
    elif name == "mariadb":
        pytest.importorskip("pymysql")
        require_server(MYSQL_URL, 3306, "MariaDB")
        rest = MYSQL_URL.split("://", 1)[1]
        backend = Backend(
            name,
            f"mysql://{rest}",
            f"mysql+aiomysql://{rest}",
            "%s",
            "SELECT CONNECTION_ID()",
            _mysql_admin,
            table,
        )
    else:
        import sqlite3

        path = tmp_path / "web.sqlite"
        backend = Backend(
            name,
            f"sqlite:///{path}",
            f"sqlite+aiosqlite:///{path}",
            "?",
            None,
            lambda: sqlite3.connect(path),
            table,
        )
    with contextlib.closing(backend.admin()) as conn:
        conn.cursor().execute(f"CREATE TABLE {table} (v INTEGER PRIMARY KEY)")
        conn.commit()
    try:
        yield backend
    finally:
        with contextlib.closing(backend.admin()) as conn:
            conn.cursor().execute(f"DROP TABLE IF EXISTS {table}")
            conn.commit()


BACKENDS = ["postgresql", "mariadb", "sqlite"]
