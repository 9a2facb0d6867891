"""The server's connection limits, checked when a pool opens: a real PostgreSQL role with
``CONNECTION LIMIT 3`` and a real MariaDB user with ``MAX_USER_CONNECTIONS 3``, through every
sync and async driver. A pool too large for them logs exactly one WARNING naming the pool,
the limit, where it comes from and the headroom, and never the password; a failing check
never breaks the pool. The servers come from ``tests/conftest.py`` (skipped when unreachable,
failed under CI=true); a missing driver fails under CI=true too."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

import millpond
from millpond.drivers.base import TxStatus
from millpond.drivers.limits import Limit, ServerLimits, pg_limits, tightest
from millpond.drivers.psycopg import PsycopgAdapter
from millpond.testing import FakeDisconnect, FakeDriver, FakeError

PASSWORD = "lim-Secret-42"


def require_module(name: str) -> Any:
    """Import ``name``, or skip without it, except under CI=true (then the test fails)."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(name)
    return pytest.importorskip(name)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "millpond" and r.levelno >= logging.WARNING
    ]


def with_user(url: str, scheme: str, user: str) -> str:
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return f"{scheme}://{user}:{PASSWORD}@{host}{parts.path}"


# -- the servers' limited accounts ----------------------------------------------------------


@pytest.fixture
def pg_role(pg_url: str) -> Iterator[str]:
    """A login role allowed 3 sessions; dropped after the test whatever happened."""
    psycopg = require_module("psycopg")
    name = f"mp_lim_{secrets.token_hex(4)}"
    admin = psycopg.connect(pg_url, autocommit=True)
    try:
        admin.execute(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT 3 PASSWORD '{PASSWORD}'")
        yield name
    finally:
        admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s",
            (name,),
        )
        admin.execute(f"DROP ROLE IF EXISTS {name}")
        admin.close()


@pytest.fixture
def mysql_user(mysql_url: str) -> Iterator[str]:
    """A MariaDB account allowed 3 sessions, with every right on ``test``; dropped after."""
    pymysql = require_module("pymysql")
    url = urlsplit(mysql_url)
    name = f"mp_lim_{secrets.token_hex(4)}"
    admin = pymysql.connect(
        host=url.hostname, port=url.port or 3306, user=url.username,
        password=url.password or "", autocommit=True,
    )  # fmt: skip
    cur = admin.cursor()
    try:
        cur.execute(
            f"CREATE USER '{name}'@'%' IDENTIFIED BY '{PASSWORD}' WITH MAX_USER_CONNECTIONS 3"
        )
        cur.execute(f"GRANT ALL ON {url.path.lstrip('/')}.* TO '{name}'@'%'")
        yield name
    finally:
        cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")
        admin.close()


def _sync_pg(pg_url: str, role: str, driver: str) -> str:
    require_module(driver)
    return with_user(pg_url, f"postgresql+{driver}", role)


MYSQL_MODULES = {"pymysql": "pymysql", "mysqlconnector": "mysql.connector", "mysqldb": "MySQLdb"}


def _sync_mysql(mysql_url: str, user: str, driver: str) -> str:
    require_module(MYSQL_MODULES[driver])
    return with_user(mysql_url, f"mysql+{driver}", user)


# -- sync pools -----------------------------------------------------------------------------


def _open_sync(url: str, max_size: int, caplog: pytest.LogCaptureFixture, **kw: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="millpond")
    with millpond.Pool(url, max_size=max_size, name=f"lim-{max_size}", open=False, **kw) as pool:
        pool.open(wait=True, timeout=10)
        assert pool.stats().checkouts == 0  # the check is no borrower's use
        with pool.connection() as conn:
            assert pool._adapter.status(conn) in (TxStatus.IDLE, TxStatus.UNKNOWN)


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_pg_role_limit_warns_once(
    pg_url: str, pg_role: str, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    _open_sync(_sync_pg(pg_url, pg_role, driver), 5, caplog)
    [warning] = warnings_of(caplog)
    assert "'lim-5'" in warning
    assert f"rolconnlimit 3 of role '{pg_role}'" in warning
    assert "pg_roles" in warning
    assert "headroom for this pool is 3 connection(s)" in warning
    assert "max_size + max_overflow = 5" in warning
    assert PASSWORD not in caplog.text


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_pg_pool_that_fits_is_quiet(
    pg_url: str, pg_role: str, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    _open_sync(_sync_pg(pg_url, pg_role, driver), 2, caplog)
    assert warnings_of(caplog) == []


@pytest.mark.postgres
def test_pg_other_sessions_take_headroom(
    pg_url: str, pg_role: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One session of the role outside the pool: max_size=3 no longer fits, headroom 2;
    overflow counts as part of the pool's size."""
    psycopg = require_module("psycopg")
    url = with_user(pg_url, "postgresql+psycopg", pg_role)
    with psycopg.connect(url.replace("+psycopg", "")):
        _open_sync(url, 2, caplog, max_overflow=1)
    [warning] = warnings_of(caplog)
    assert "max_size + max_overflow = 3" in warning
    assert "1 other session(s)" in warning
    assert "headroom for this pool is 2 connection(s)" in warning


@pytest.mark.postgres
def test_pg_check_off_or_behind_a_pooler(
    pg_url: str, pg_role: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = _sync_pg(pg_url, pg_role, "psycopg")
    _open_sync(url, 5, caplog, check_server_limits=False)
    _open_sync(url, 5, caplog, server_pooler="pgbouncer-transaction")
    assert warnings_of(caplog) == []
    assert "max_client_conn" in caplog.text  # it says what it cannot know


@pytest.mark.postgres
def test_pg_check_keeps_configure_and_autocommit(
    pg_url: str, pg_role: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The check runs after configure and leaves neither a transaction nor a changed
    autocommit behind: what configure set is still there for the borrower."""
    url = _sync_pg(pg_url, pg_role, "psycopg")

    def configure(conn: Any) -> None:
        conn.execute("SET application_name = 'mp-lim-configured'")

    caplog.set_level(logging.DEBUG, logger="millpond")
    with millpond.Pool(url, max_size=5, configure=configure, open=False) as pool:
        pool.open(wait=True, timeout=10)
        with pool.connection() as conn:
            assert conn.info.transaction_status == 0  # idle
            assert conn.autocommit is False
            name = conn.execute("SHOW application_name").fetchone()
            assert name == ("mp-lim-configured",)
        assert pool.stats().connects == 1
    assert len(warnings_of(caplog)) == 1


class _BadQuery(PsycopgAdapter):
    """A real psycopg adapter whose check fails on the server, inside a transaction."""

    def server_limits(self, conn: Any) -> ServerLimits:
        conn.execute("SELECT no_such_column_mp_lim")
        raise AssertionError("unreachable")


@pytest.mark.postgres
def test_pg_failing_check_leaves_a_clean_connection(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    require_module("psycopg")
    caplog.set_level(logging.DEBUG, logger="millpond")
    adapter = _BadQuery.from_kwargs({"conninfo": pg_url}, description="pg")
    with millpond.Pool(adapter, max_size=500, open=False) as pool:
        pool.open(wait=True, timeout=10)
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        stats = pool.stats()
        assert (stats.connects, stats.connect_errors) == (1, 0)
    assert warnings_of(caplog) == []
    assert "could not read the server's connection limits" in caplog.text


@pytest.mark.mysql
@pytest.mark.parametrize("driver", list(MYSQL_MODULES))
def test_mysql_user_limit_warns_once(
    mysql_url: str, mysql_user: str, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    _open_sync(_sync_mysql(mysql_url, mysql_user, driver), 5, caplog)
    [warning] = warnings_of(caplog)
    assert "'lim-5'" in warning
    assert f"MAX_USER_CONNECTIONS 3 of account '{mysql_user}@%'" in warning
    assert "headroom for this pool is 3 connection(s)" in warning
    assert PASSWORD not in caplog.text


@pytest.mark.mysql
@pytest.mark.parametrize("driver", list(MYSQL_MODULES))
def test_mysql_pool_that_fits_is_quiet(
    mysql_url: str, mysql_user: str, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    _open_sync(_sync_mysql(mysql_url, mysql_user, driver), 2, caplog)
    assert warnings_of(caplog) == []


# -- async pools ----------------------------------------------------------------------------

ASYNC = {"asyncpg": "asyncpg", "psycopg": "psycopg", "aiomysql": "aiomysql"}


async def _open_async(url: str, max_size: int) -> None:
    async with millpond.AsyncPool(url, max_size=max_size, name=f"alim-{max_size}") as pool:
        await pool.open(wait=True, timeout=10)
        assert pool.stats().checkouts == 0
        async with pool.connection() as conn:
            assert pool._adapter.status(conn) in (TxStatus.IDLE, TxStatus.UNKNOWN)


def _async_url(request: pytest.FixtureRequest, driver: str) -> tuple[str, str]:
    """The URL of the limited account for ``driver``, and the limit's name to expect."""
    require_module(ASYNC[driver])
    if driver == "aiomysql":
        user = request.getfixturevalue("mysql_user")
        url = with_user(request.getfixturevalue("mysql_url"), "mysql+aiomysql", user)
        return url, f"MAX_USER_CONNECTIONS 3 of account '{user}@%'"
    role = request.getfixturevalue("pg_role")
    url = with_user(request.getfixturevalue("pg_url"), f"postgresql+{driver}", role)
    return url, f"rolconnlimit 3 of role '{role}' (pg_roles)"


@pytest.mark.parametrize("driver", list(ASYNC))
@pytest.mark.parametrize("max_size", [5, 2])
def test_async_pools(
    request: pytest.FixtureRequest, driver: str, max_size: int, caplog: pytest.LogCaptureFixture
) -> None:
    url, limit = _async_url(request, driver)
    caplog.set_level(logging.DEBUG, logger="millpond")
    asyncio.run(_open_async(url, max_size))
    found = warnings_of(caplog)
    if max_size == 2:
        assert found == []
    else:
        [warning] = found
        assert "'alim-5'" in warning and limit in warning
        assert "headroom for this pool is 3 connection(s)" in warning
    assert PASSWORD not in caplog.text


# -- failures and what cannot be known, without a server --------------------------------------


class _Raising(FakeDriver):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error
        self.calls = 0

    def server_limits(self, conn: Any) -> ServerLimits:
        self.calls += 1
        raise self.error


def test_raising_check_does_not_break_the_pool(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="millpond")
    driver = _Raising(FakeError(f"boom {PASSWORD}"))
    driver.secrets = (PASSWORD,)
    with millpond.Pool(driver, max_size=3, open=False) as pool:
        pool.open(wait=True, timeout=5)
        with pool.connection():
            pass
        assert (pool.stats().connects, pool.stats().connect_errors) == (1, 0)
    assert driver.calls == 1
    assert "could not read the server's connection limits: boom" in caplog.text
    assert PASSWORD not in caplog.text


def test_check_that_breaks_the_connection_costs_only_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A session that dies during the check is a failed connect (the server dropped it right
    after login); the retry is not checked again, and the pool serves."""
    caplog.set_level(logging.DEBUG, logger="millpond")
    driver = _Raising(FakeDisconnect("gone"))
    with millpond.Pool(driver, max_size=3, open=False) as pool:
        with pytest.raises(millpond.ConnectError, match="gone"):
            pool.open(wait=True, timeout=5)
        deadline = time.monotonic() + 5
        while pool.stats().size < 1:  # the housekeeper retries after the backoff
            assert time.monotonic() < deadline, pool.stats()
            time.sleep(0.01)
        with pool.connection(timeout=5):
            pass
        assert (pool.stats().connects, pool.stats().connect_errors) == (1, 1)
    assert driver.calls == 1


class _Answering(FakeDriver):
    def __init__(self, limits: ServerLimits) -> None:
        super().__init__()
        self.limits = limits
        self.calls = 0

    def server_limits(self, conn: Any) -> ServerLimits:
        self.calls += 1
        return self.limits


def test_one_warning_however_many_connects_open_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="millpond")
    driver = _Answering(ServerLimits((Limit(2, "max_user_connections 2 (test)", in_use=4),)))
    with millpond.Pool(driver, min_size=4, max_size=4, name="many", open=False) as pool:
        pool.open(wait=True, timeout=5)
    assert driver.calls == 1
    [warning] = warnings_of(caplog)
    assert "'many'" in warning and "max_user_connections 2" in warning
    # the four sessions the server counts may all be the pool's own: none are others'
    assert "0 other session(s)" in warning and "headroom for this pool is 2" in warning


def test_a_noticed_pooler_is_reported_not_judged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="millpond")
    driver = _Answering(ServerLimits((), pooler="a pooler such as pgbouncer sits in between"))
    with millpond.Pool(driver, max_size=50, open=False) as pool:
        pool.open(wait=True, timeout=5)
    assert warnings_of(caplog) == []
    [info] = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "pgbouncer" in info and "max_client_conn" in info


def test_check_server_limits_must_be_a_bool() -> None:
    with pytest.raises(millpond.ConfigError, match="check_server_limits"):
        millpond.Pool(FakeDriver(), check_server_limits="yes", open=False)  # type: ignore[arg-type]


def test_a_pooler_in_between_is_noticed() -> None:
    row = (100, 3, 0, False, 3, -1, 7, 2, 5, "app", "test", 4242)
    assert pg_limits(row, client_pid=4242).pooler is None
    behind = pg_limits(row, client_pid=99)
    assert behind.limits == () and "pgbouncer" in str(behind.pooler)


def test_superusers_are_exempt_from_role_and_database_limits() -> None:
    row = (100, 3, 0, True, 3, 2, 7, 2, 5, "postgres", "test", 1)
    assert pg_limits(row, client_pid=1).limits == (Limit(100, "max_connections 100", 7),)


def test_tightest_counts_the_pools_own_sessions_as_its_budget() -> None:
    limits = ServerLimits((Limit(10, "a", in_use=4), Limit(3, "b", in_use=1)))
    assert tightest(limits, cap=3, own=1) is None
    assert tightest(limits, cap=4, own=1) == (limits.limits[1], 0, 3)
    assert tightest(limits, cap=8, own=1) == (limits.limits[1], 0, 3)  # the least headroom
    crowded = ServerLimits((Limit(10, "a", in_use=9), Limit(3, "b", in_use=1)))
    assert tightest(crowded, cap=3, own=1) == (crowded.limits[0], 8, 2)
