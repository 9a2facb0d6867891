"""The MySQL drivers inside a real Pool on MariaDB: what one borrower leaves in the session
never reaches the next one."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import millpond

from .conftest import MYSQL_DRIVERS, run, scalar

pytestmark = pytest.mark.mysql


def _pool(mysql_url: str, driver: str, **options: Any) -> millpond.Pool:
    pytest.importorskip(MYSQL_DRIVERS[driver])
    url = mysql_url.replace("mysql://", f"mysql+{driver}://", 1)
    return millpond.Pool(url, min_size=1, max_size=1, timeout=10, **options)


def _unbuffered_cursor(pool: millpond.Pool, conn: Any, driver: str) -> Any:
    if driver == "mysqlconnector":
        return conn.cursor()  # Connector/Python's cursors are unbuffered by default
    return conn.cursor(pool._adapter.module.cursors.SSCursor)


@pytest.mark.parametrize("autocommit", [True, False])
@pytest.mark.parametrize("driver", list(MYSQL_DRIVERS))
def test_a_result_left_unread_does_not_reach_the_next_borrower(
    mysql_url: str, driver: str, autocommit: bool
) -> None:
    kept = []  # the borrower keeps its cursor: nothing frees the result behind the pool
    with _pool(mysql_url, driver, connect_kwargs={"autocommit": autocommit}) as pool:
        with pool.connection() as conn:
            cur = _unbuffered_cursor(pool, conn, driver)
            cur.execute("SELECT * FROM information_schema.COLLATIONS")
            cur.fetchone()
            kept.append(cur)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PyMySQL would warn the next borrower
            for _ in range(3):
                with pool.connection() as conn:
                    assert scalar(conn, "SELECT 7") == 7
        stats = pool.stats()
    assert stats.connects == 1, stats  # read on return: no connection had to be replaced


@pytest.fixture
def locked_table(mysql_admin: Any) -> Iterator[str]:
    name = "drivers_" + uuid.uuid4().hex[:10]
    run(mysql_admin, f"CREATE TABLE {name} (x int) ENGINE=InnoDB")
    yield name
    run(mysql_admin, "SET SESSION lock_wait_timeout = 5")
    run(mysql_admin, f"DROP TABLE IF EXISTS {name}")


@pytest.mark.parametrize("driver", list(MYSQL_DRIVERS))
def test_full_reset_releases_table_locks_and_session_state(
    mysql_url: str, mysql_admin: Any, locked_table: str, driver: str
) -> None:
    """LOCK TABLES, GET_LOCK, session variables, temp tables and prepared statements
    outlive reset="rollback"; reset="full" clears them and keeps the session."""
    with _pool(mysql_url, driver, reset="full") as pool:
        with pool.connection() as conn:
            thread = scalar(conn, "SELECT CONNECTION_ID()")
            run(conn, f"LOCK TABLES {locked_table} WRITE")
            run(conn, "SELECT GET_LOCK('drivers_lock', 0)")
            run(conn, "SET SESSION wait_timeout = 77, @v = 1")
            run(conn, "CREATE TEMPORARY TABLE drivers_tmp (y int)")
            run(conn, "PREPARE drivers_stmt FROM 'SELECT 1'")
        # another session can write the table at once: the lock is gone
        run(mysql_admin, "SET SESSION lock_wait_timeout = 2")
        run(mysql_admin, f"INSERT INTO {locked_table} VALUES (1)")
        assert scalar(mysql_admin, "SELECT IS_USED_LOCK('drivers_lock')") is None
        with pool.connection() as conn:
            assert scalar(conn, "SELECT CONNECTION_ID()") == thread  # reset, not reconnected
            assert run(conn, "SELECT @@session.wait_timeout = @@global.wait_timeout, @v")[0] == (
                1,
                None,
            )
            with pytest.raises(pool._adapter.module.Error):
                run(conn, "SELECT * FROM drivers_tmp")
            with pytest.raises(pool._adapter.module.Error):
                run(conn, "EXECUTE drivers_stmt")


@pytest.mark.parametrize("driver", list(MYSQL_DRIVERS))
def test_rollback_reset_leaves_table_locks_behind(
    mysql_url: str, mysql_admin: Any, locked_table: str, driver: str
) -> None:
    """What docs/security.md says: the default reset is a ROLLBACK, and LOCK TABLES survives it."""
    with _pool(mysql_url, driver) as pool:
        with pool.connection() as conn:
            run(conn, f"LOCK TABLES {locked_table} WRITE")
        run(mysql_admin, "SET SESSION lock_wait_timeout = 1")
        with pytest.raises(Exception, match="Lock wait timeout"):
            run(mysql_admin, f"INSERT INTO {locked_table} VALUES (1)")
        with pool.connection() as conn:
            run(conn, "UNLOCK TABLES")
