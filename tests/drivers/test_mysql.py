"""PyMySQLAdapter, MySQLConnectorAdapter and MySQLdbAdapter against the real MariaDB server."""

from __future__ import annotations

import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from millpond.drivers.base import SyncAdapter, TxStatus
from millpond.drivers.url import resolve
from millpond.errors import ConfigError

from .conftest import MYSQL_DRIVERS, mysql_id, mysql_kill, run, scalar

pytestmark = pytest.mark.mysql

Opened = Callable[[SyncAdapter], Any]


@pytest.fixture
def conn(mysql_adapter: SyncAdapter, opened: Opened) -> Any:
    return opened(mysql_adapter)


@pytest.fixture
def table(mysql_admin: Any) -> Iterator[str]:
    """An InnoDB scratch table holding one row (1). Ask for it before ``conn``, so that the
    connection is closed (and its locks released) before the table is dropped."""
    name = "mp_" + uuid.uuid4().hex[:12]
    run(mysql_admin, f"CREATE TABLE {name} (x int PRIMARY KEY) ENGINE=InnoDB")
    run(mysql_admin, f"INSERT INTO {name} VALUES (1)")
    yield name
    run(mysql_admin, "SET SESSION lock_wait_timeout = 5")
    run(mysql_admin, f"DROP TABLE {name}")


def count_rows(admin: Any, table: str) -> int:
    return int(scalar(admin, f"SELECT count(*) FROM {table}"))


def in_transaction(conn: Any) -> bool:
    """Whether the server has a transaction open for ``conn``. Asked of the session itself:
    information_schema.innodb_trx is a cache refreshed at most every 100 ms. (The query
    begins no transaction; with Connector/Python it does refresh ``in_transaction``, so
    check the adapter's status before calling this.)"""
    return bool(scalar(conn, "SELECT @@in_transaction"))


@pytest.mark.parametrize("autocommit", [False, True])
def test_ping(mysql_adapter: SyncAdapter, conn: Any, autocommit: bool) -> None:
    mysql_adapter.set_autocommit(conn, autocommit)
    before = mysql_adapter.status(conn)
    mysql_adapter.ping(conn)
    assert mysql_adapter.status(conn) is before
    assert mysql_adapter.get_autocommit(conn) is autocommit
    assert scalar(conn, "SELECT @@in_transaction") == 0


def test_ping_a_killed_connection(mysql_adapter: SyncAdapter, conn: Any, mysql_admin: Any) -> None:
    assert not mysql_adapter.is_closed(conn)
    mysql_kill(mysql_admin, conn)
    with pytest.raises(mysql_adapter.module.Error) as info:
        mysql_adapter.ping(conn)
    assert mysql_adapter.is_disconnect(info.value, conn)
    assert mysql_adapter.is_disconnect(info.value)  # the error alone says so too
    with pytest.raises(Exception) as again:  # noqa: PT011 - PyMySQL and Connector differ
        run(conn, "SELECT 1")
    assert mysql_adapter.is_disconnect(again.value)
    mysql_adapter.close(conn)
    assert mysql_adapter.is_closed(conn)
    assert mysql_adapter.status(conn) is TxStatus.BROKEN


def test_pymysql_knows_a_lost_connection_is_broken(
    mysql_url: str, opened: Opened, mysql_admin: Any
) -> None:
    adapter = resolve(mysql_url)  # mysql:// is PyMySQL
    conn = opened(adapter)
    mysql_kill(mysql_admin, conn)
    with pytest.raises(adapter.module.OperationalError):
        adapter.ping(conn)
    # PyMySQL drops its socket on a network error, so the state is known without I/O
    assert adapter.is_closed(conn)
    assert adapter.status(conn) is TxStatus.BROKEN


def test_errors_that_are_not_disconnects(mysql_adapter: SyncAdapter, conn: Any) -> None:
    module = mysql_adapter.module
    with pytest.raises(module.ProgrammingError) as syntax:
        run(conn, "SELEC 1")
    assert not mysql_adapter.is_disconnect(syntax.value, conn)
    assert not mysql_adapter.is_disconnect(syntax.value)
    # a server error on a healthy session: the statement ran out of time
    with pytest.raises(module.DatabaseError) as interrupted:
        run(conn, "SET STATEMENT max_statement_time=0.001 FOR SELECT SLEEP(1)")
    assert not mysql_adapter.is_disconnect(interrupted.value, conn)
    assert not mysql_adapter.is_disconnect(interrupted.value)
    mysql_adapter.ping(conn)


def test_status_in_autocommit_mode(
    mysql_adapter: SyncAdapter, table: str, conn: Any, mysql_admin: Any
) -> None:
    mysql_adapter.set_autocommit(conn, True)
    assert mysql_adapter.status(conn) is TxStatus.IDLE
    mysql_adapter.begin(conn)
    run(conn, f"SELECT * FROM {table}")
    assert mysql_adapter.status(conn) is TxStatus.INTRANS
    mysql_adapter.commit(conn)
    assert mysql_adapter.status(conn) is TxStatus.IDLE
    mysql_adapter.begin(conn)
    run(conn, f"INSERT INTO {table} VALUES (2)")
    mysql_adapter.rollback(conn)
    assert mysql_adapter.status(conn) is TxStatus.IDLE
    mysql_adapter.begin(conn)
    with pytest.raises(mysql_adapter.module.ProgrammingError):
        run(conn, "SELEC 1")
    # MySQL has no failed-transaction state: the transaction is still open
    assert mysql_adapter.status(conn) is TxStatus.INTRANS
    assert in_transaction(conn)
    mysql_adapter.rollback(conn)
    assert mysql_adapter.status(conn) is TxStatus.IDLE
    mysql_adapter.close(conn)
    assert mysql_adapter.status(conn) is TxStatus.BROKEN


def test_status_outside_autocommit_is_never_falsely_idle(
    mysql_adapter: SyncAdapter, table: str, conn: Any, mysql_admin: Any
) -> None:
    """The drivers' flags miss transactions begun by a result set (PyMySQL) or by a failed
    statement (both); "idle" there would let locks and snapshots outlive the borrower."""
    assert mysql_adapter.get_autocommit(conn) is False
    run(conn, f"SELECT * FROM {table}")
    assert mysql_adapter.status(conn) is not TxStatus.IDLE
    assert in_transaction(conn)
    mysql_adapter.rollback(conn)
    with pytest.raises(mysql_adapter.module.IntegrityError):
        run(conn, f"INSERT INTO {table} VALUES (1)")  # duplicate key, first statement
    assert mysql_adapter.status(conn) is not TxStatus.IDLE
    assert in_transaction(conn)  # ...holding a shared lock on row 1
    mysql_adapter.rollback(conn)
    assert not in_transaction(conn)


def test_full_reset(mysql_adapter: SyncAdapter, conn: Any) -> None:
    assert mysql_adapter.supports_full_reset
    default_wait_timeout = scalar(conn, "SELECT @@global.wait_timeout")
    charset = scalar(conn, "SELECT @@character_set_client")
    thread = mysql_id(conn)
    run(conn, "SET @x = 42")
    run(conn, "SET SESSION wait_timeout = 77")
    run(conn, "CREATE TEMPORARY TABLE scratch (y int)")
    run(conn, "SELECT GET_LOCK('millpond_lock', 0)")
    run(conn, "SET NAMES latin1")

    mysql_adapter.full_reset(conn)

    assert mysql_id(conn) == thread  # same session, not a reconnect
    assert mysql_adapter.status(conn) is not TxStatus.INTRANS
    row = run(
        conn,
        "SELECT @x, @@session.wait_timeout, @@character_set_client,"
        " IS_USED_LOCK('millpond_lock') IS NULL",
    )[0]
    assert row == (None, default_wait_timeout, charset, 1)
    with pytest.raises(mysql_adapter.module.ProgrammingError):
        run(conn, "SELECT * FROM scratch")


@pytest.mark.parametrize("autocommit", [False, True])
def test_full_reset_keeps_autocommit(
    mysql_adapter: SyncAdapter, conn: Any, autocommit: bool
) -> None:
    mysql_adapter.set_autocommit(conn, autocommit)
    run(conn, "SET @x = 1")
    mysql_adapter.full_reset(conn)
    assert mysql_adapter.get_autocommit(conn) is autocommit
    assert scalar(conn, "SELECT @@autocommit") == int(autocommit)
    assert scalar(conn, "SELECT @x") is None


def test_full_reset_rolls_back(
    mysql_adapter: SyncAdapter, table: str, conn: Any, mysql_admin: Any
) -> None:
    run(conn, f"INSERT INTO {table} VALUES (2)")
    mysql_adapter.full_reset(conn)
    assert not in_transaction(conn)
    assert count_rows(mysql_admin, table) == 1


def test_autocommit_round_trip(
    mysql_adapter: SyncAdapter, table: str, conn: Any, mysql_admin: Any
) -> None:
    assert mysql_adapter.get_autocommit(conn) is False
    mysql_adapter.set_autocommit(conn, True)
    assert mysql_adapter.get_autocommit(conn) is True
    assert scalar(conn, "SELECT @@autocommit") == 1
    run(conn, f"INSERT INTO {table} VALUES (2)")
    assert count_rows(mysql_admin, table) == 2
    mysql_adapter.set_autocommit(conn, False)
    assert mysql_adapter.get_autocommit(conn) is False
    run(conn, f"INSERT INTO {table} VALUES (3)")
    assert count_rows(mysql_admin, table) == 2
    mysql_adapter.rollback(conn)


def test_begin_in_autocommit_mode(
    mysql_adapter: SyncAdapter, table: str, conn: Any, mysql_admin: Any
) -> None:
    mysql_adapter.set_autocommit(conn, True)
    mysql_adapter.begin(conn)
    assert mysql_adapter.status(conn) is TxStatus.INTRANS
    run(conn, f"INSERT INTO {table} VALUES (2)")
    assert count_rows(mysql_admin, table) == 1
    mysql_adapter.commit(conn)
    assert count_rows(mysql_admin, table) == 2
    assert mysql_adapter.get_autocommit(conn) is True


def test_begin_outside_autocommit_does_not_commit_open_work(
    mysql_adapter: SyncAdapter, table: str, conn: Any, mysql_admin: Any
) -> None:
    run(conn, f"INSERT INTO {table} VALUES (2)")
    mysql_adapter.begin(conn)  # an explicit BEGIN here would commit the insert
    assert count_rows(mysql_admin, table) == 1
    mysql_adapter.rollback(conn)
    assert count_rows(mysql_admin, table) == 1


# -- PyMySQL's connect path ---------------------------------------------------------------------


def test_pymysql_builds_its_default_tls_context_once(
    mysql_url: str, opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []
    original = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(args or kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    adapter = resolve(mysql_url)
    conns = [opened(adapter) for _ in range(5)]
    assert len(built) <= 1  # once per process; PyMySQL alone builds one per connection
    assert len({id(c.ctx) for c in conns}) == 1
    assert all(c.ssl and not c._ssl_required for c in conns)  # still "preferred" TLS


def test_pymysql_ssl_options_get_their_own_context(mysql_url: str) -> None:
    adapter = resolve(mysql_url, {"ssl_verify_cert": True, "defer_connect": True})
    shared = resolve(mysql_url, {"defer_connect": True}).connect()
    own = adapter.connect()  # defer_connect: built, not connected (this server has no TLS)
    assert own._ssl_required
    assert own.ctx is not shared.ctx


def test_mysqlconnector_refuses_its_own_pool(mysql_url: str) -> None:
    with pytest.raises(ConfigError, match="pool_name, pool_size"):
        resolve(
            mysql_url.replace("mysql://", "mysql+mysqlconnector://"),
            {"pool_size": 3, "pool_name": "x"},
        )


@pytest.mark.parametrize("driver", list(MYSQL_DRIVERS))
def test_full_reset_replays_the_connection_setup(
    mysql_url: str, opened: Opened, driver: str
) -> None:
    """COM_RESET_CONNECTION returns the session to the server's defaults; what the connect
    options asked for (collation, sql_mode, init_command) must be set up again."""
    pytest.importorskip(MYSQL_DRIVERS[driver])
    adapter = resolve(
        mysql_url.replace("mysql://", f"mysql+{driver}://"),
        {
            "charset": "utf8mb4",
            "collation": "utf8mb4_unicode_ci",
            "sql_mode": "ANSI_QUOTES",
            "init_command": "SET @from_init = 7",
        },
    )
    conn = opened(adapter)
    fresh = run(conn, "SELECT @@collation_connection, @@sql_mode, @from_init")[0]
    assert fresh == ("utf8mb4_unicode_ci", "ANSI_QUOTES", 7)
    run(conn, "SET NAMES latin1")
    run(conn, "SET sql_mode = ''")
    run(conn, "SET @from_init = NULL")
    adapter.full_reset(conn)
    assert run(conn, "SELECT @@collation_connection, @@sql_mode, @from_init")[0] == fresh


CEXT_SCRIPT = r"""
import sys, time
try:
    import _mysql_connector  # before anything loads the system libssl (see the test's doc)
    import mysql.connector
except ImportError as exc:
    print("SKIP", exc)
    raise SystemExit(0)
if not mysql.connector.HAVE_CEXT:
    print("SKIP C extension unavailable")
    raise SystemExit(0)
import pymysql
from millpond.drivers.base import TxStatus
from millpond.drivers.url import resolve

url = sys.argv[1].replace("mysql://", "mysql+mysqlconnector://", 1)
adapter = resolve(url, {"use_pure": False})
conn = adapter.connect()
assert type(conn).__name__ == "CMySQLConnection", type(conn)
adapter.ping(conn)
cur = conn.cursor()
cur.execute("SELECT 1"); cur.fetchall()
assert adapter.status(conn) is not TxStatus.IDLE  # autocommit off: cannot be sure
adapter.rollback(conn)
adapter.set_autocommit(conn, True)
assert adapter.get_autocommit(conn) is True
assert adapter.status(conn) is TxStatus.IDLE
adapter.begin(conn)
assert adapter.status(conn) is TxStatus.INTRANS
adapter.commit(conn)
assert adapter.status(conn) is TxStatus.IDLE
cur.execute("SET @x = 1")
adapter.full_reset(conn)
cur = conn.cursor(); cur.execute("SELECT @x, @@autocommit")
assert cur.fetchall() == [(None, 1)]
assert adapter.get_autocommit(conn) is True

admin = pymysql.connect(host=conn.server_host, port=conn.server_port, user=conn.user,
                        autocommit=True)
victim = conn.connection_id
admin.cursor().execute(f"KILL {victim:d}")
while admin.cursor().execute("SELECT 1 FROM information_schema.processlist WHERE id=%s", (victim,)):
    time.sleep(0.005)
try:
    adapter.ping(conn)
except Exception as exc:
    assert adapter.is_disconnect(exc, conn) and adapter.is_disconnect(exc), repr(exc)
else:
    raise AssertionError("ping on a killed connection passed")
try:
    adapter.rollback(conn)
except Exception as exc:  # the C extension's own MySQLInterfaceError escapes here
    assert adapter.is_disconnect(exc), repr(exc)
else:
    raise AssertionError("rollback on a killed connection passed")
adapter.close(conn)
assert adapter.is_closed(conn)
assert adapter.status(conn) is TxStatus.BROKEN
print("OK")
"""


def test_mysqlconnector_c_extension(mysql_url: str) -> None:
    """The C extension's connection class has its own ping, status and error types.

    It runs in a fresh interpreter because here the extension loads only if it is imported
    before Python's ssl module: its bundled libssl needs OPENSSL_3.2 symbols, and once the
    system's older libssl is loaded (mysql.connector itself imports ssl first) the extension
    fails to load and Connector/Python silently uses the pure implementation."""
    pytest.importorskip("mysql.connector")
    out = subprocess.run(
        [sys.executable, "-c", CEXT_SCRIPT, mysql_url], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("SKIP"):
        pytest.skip(out.stdout.strip())
    assert out.stdout.strip() == "OK"


def test_interrupt_ends_a_blocked_call(mysql_adapter: SyncAdapter, conn: Any) -> None:
    """What ping_timeout relies on: from another thread, a call stuck on the socket fails
    now, as a disconnect, and the connection is then known to be unusable."""
    import threading
    import time

    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            run(conn, "SELECT SLEEP(30)")
        except BaseException as exc:  # recorded for the assertion
            errors.append(exc)

    worker = threading.Thread(target=blocked)
    started = time.monotonic()
    worker.start()
    time.sleep(0.2)  # let the query reach the server
    assert mysql_adapter.interrupt(conn)
    worker.join(timeout=20)
    assert not worker.is_alive()
    assert time.monotonic() - started < 20  # not the 30 s of the query
    assert errors
    assert mysql_adapter.is_disconnect(errors[0], conn)
    mysql_adapter.close(conn)
