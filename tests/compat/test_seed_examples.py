"""The seed document's section-3 examples, run as written with only the import line changed.

Each example runs twice, once as written (psycopg2.pool, mysql.connector.pooling, DBUtils) and
once with its import line pointing at the compat layer, and prints the same thing. The only
other edits are the placeholder connection values (``your_password``, ``testdb``, the host),
which point at the test servers; the tables the examples read are created here, in a schema or
database of their own.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import MariaServer, PgServer
from .helpers import rows

# -- the examples, verbatim (section 3.1, 3.2 and 3.4; 3.3 is SQLAlchemy's) ----------------------

SEED_PSYCOPG2 = """\
import psycopg2
from psycopg2 import pool

# 建立一個最小 2、最大 10 的連線池
pg_pool = pool.SimpleConnectionPool(
    minconn=2,
    maxconn=10,
    user="postgres",
    password="your_password",
    host="127.0.0.1",
    port="5432",
    database="testdb"
)

def query_user(user_id: int):
    # 從池中取得連線
    conn = pg_pool.getconn()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM users WHERE id = %s;", (user_id,))
            result = cur.fetchone()
            return result
    finally:
        # 使用完畢一定要把連線歸還
        pg_pool.putconn(conn)

# 測試
if __name__ == "__main__":
    print(query_user(1))
"""

SEED_MYSQL = """\
import mysql.connector
from mysql.connector import pooling

# 建立連線池,設定 pool_name 與 pool_size
cnxpool = pooling.MySQLConnectionPool(
    pool_name="mypool",
    pool_size=5,
    host="localhost",
    user="root",
    password="your_password",
    database="testdb"
)

def insert_log(message: str):
    # 直接呼叫 get_connection() 取得連線
    cnx = cnxpool.get_connection()
    try:
        cursor = cnx.cursor()
        cursor.execute(
            "INSERT INTO logs (msg, created_at) VALUES (%s, NOW())",
            (message,)
        )
        cnx.commit()
    finally:
        # close() 會自動把連線歸還給 pool
        cnx.close()

if __name__ == "__main__":
    insert_log("連線池測試訊息")
"""

SEED_DBUTILS = """\
from dbutils.pooled_db import PooledDB
import sqlite3   # 以 SQLite 為例(實際上 SQLite 本身不支援多連線)

# SQLite 只做示範,實務上多用於 PostgreSQL/MySQL
pool = PooledDB(
    creator=sqlite3,          # 任何符合 DB‑API 2.0 的模組
    maxconnections=5,
    timeout=20,
    database="example.db"
)

def fetch_settings():
    conn = pool.connection()
    try:
        cur = conn.cursor()
        cur.execute("SELECT key, value FROM settings")
        return dict(cur.fetchall())
    finally:
        conn.close()   # 歸還給 pool

if __name__ == "__main__":
    print(fetch_settings())
"""


IMPORTS = {
    "psycopg2": ("from psycopg2 import pool", "from millpond.compat import psycopg2 as pool"),
    "mysql": (
        "from mysql.connector import pooling",
        "from millpond.compat import mysql as pooling",
    ),
    "dbutils": (
        "from dbutils.pooled_db import PooledDB",
        "from millpond.compat.dbutils import PooledDB",
    ),
}


def edited(source: str, which: str, compat: bool, values: dict[str, str]) -> str:
    """The example with the import line changed (``compat``) and placeholders filled in."""
    old, new = IMPORTS[which]
    assert source.count(old) == 1
    if compat:
        source = source.replace(old, new)
    for placeholder, value in values.items():
        assert placeholder in source, placeholder
        source = source.replace(placeholder, value)
    return source


def run(source: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, dict[str, Any]]:
    """Run an example as a script; what it printed, and its globals (to close its pool)."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, "<seed example>", "exec"), namespace)
    return capsys.readouterr().out, namespace


@pytest.mark.postgres
def test_psycopg2_simple_connection_pool(
    pg: PgServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = "mpc_seed_" + uuid.uuid4().hex[:8]
    cur = pg.admin.cursor()
    cur.execute(f"CREATE SCHEMA {schema}")
    cur.execute(f"CREATE TABLE {schema}.users (id int PRIMARY KEY, name text)")
    cur.execute(f"INSERT INTO {schema}.users VALUES (1, 'alice'), (2, 'bob')")
    # libpq reads PGOPTIONS: the example's unqualified "users" is this schema's
    monkeypatch.setenv("PGOPTIONS", f"-c search_path={schema}")
    params = pg.params
    values = {
        'user="postgres"': f'user="{params["user"]}"',
        'password="your_password"': f'password="{params.get("password", "")}"',
        'host="127.0.0.1"': f'host="{params["host"]}"',
        'port="5432"': f'port="{params["port"]}"',
        'database="testdb"': f'database="{params["dbname"]}"',
    }
    try:
        printed = []
        for compat in (False, True):
            out, ns = run(edited(SEED_PSYCOPG2, "psycopg2", compat, values), capsys)
            printed.append(out)
            ns["pg_pool"].closeall()
        assert printed[0] == printed[1] == "(1, 'alice')\n"
    finally:
        cur.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.mysql
def test_mysql_connector_pooling(maria: MariaServer, capsys: pytest.CaptureFixture[str]) -> None:
    database = "mpc_seed_" + uuid.uuid4().hex[:8]
    rows(maria.admin, f"CREATE DATABASE {database}")
    rows(maria.admin, f"CREATE TABLE {database}.logs (msg VARCHAR(255), created_at DATETIME)")
    values = {
        'host="localhost"': f'host="{maria.host}", port={maria.port}',
        'user="root"': f'user="{maria.user}"',
        'password="your_password"': f'password="{maria.password}"',
        'database="testdb"': f'database="{database}"',
    }
    try:
        for n, compat in enumerate((False, True), start=1):
            out, ns = run(edited(SEED_MYSQL, "mysql", compat, values), capsys)
            assert out == ""
            logged = rows(maria.admin, f"SELECT msg, created_at IS NOT NULL FROM {database}.logs")
            assert logged == [("連線池測試訊息", 1)] * n
            ns["cnxpool"]._remove_connections()
            if compat:
                ns["cnxpool"].close()
    finally:
        rows(maria.admin, f"DROP DATABASE {database}")


def test_dbutils_pooled_db(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the example opens "example.db" where it runs
    with sqlite3.connect("example.db") as conn:
        conn.execute("CREATE TABLE settings (key TEXT, value TEXT)")
        conn.executemany("INSERT INTO settings VALUES (?, ?)", [("theme", "dark"), ("lang", "zh")])
    conn.close()
    printed = []
    for compat in (False, True):
        out, ns = run(edited(SEED_DBUTILS, "dbutils", compat, {}), capsys)
        printed.append(out)
        ns["pool"].close()
    assert printed[0] == printed[1] == "{'theme': 'dark', 'lang': 'zh'}\n"
