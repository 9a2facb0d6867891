"""Tenant isolation on MariaDB: borrower A leaves user variables, session variables, a temp
table, a named lock and a prepared statement; borrower B on the same server session (a pool
of one) looks for them.

With reset="full" (COM_RESET_CONNECTION) B sees none; with reset="rollback" the test records
what survives, which docs/security.md's table states (ROLLBACK_SURVIVES is its MariaDB
column).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import millpond

pytestmark = pytest.mark.mysql

ITEMS = (
    "user_variable",
    "session_wait_timeout",
    "session_group_concat_max_len",
    "temp_table",
    "named_lock",
    "prepared_statement",
)
ROLLBACK_SURVIVES = dict.fromkeys(ITEMS, True)

A_STATEMENTS = [
    "SET @tenant = 'a'",
    "SET SESSION wait_timeout = 12345",
    "SET SESSION group_concat_max_len = 4242",
    "CREATE TEMPORARY TABLE tenant_secret (x INT)",
    "SELECT GET_LOCK('mp_tenant_a', 0)",
    "PREPARE tenant_stmt FROM 'SELECT 1'",
]

_PROBE = """
SELECT CONNECTION_ID(),
       @tenant IS NOT NULL,
       @@session.wait_timeout = 12345,
       @@session.group_concat_max_len = 4242,
       IS_USED_LOCK('mp_tenant_a') <=> CONNECTION_ID()
"""
# MariaDB 10.x lists no temporary tables in information_schema, and has no view of prepared
# statements: they are probed by using them (error 1146 / 1243 when they are gone)
_TEMP_PROBE = "SELECT COUNT(*) FROM tenant_secret"
_PREPARED_PROBE = "EXECUTE tenant_stmt"


def _found(row: Any, temp_table: bool, prepared: bool) -> tuple[int, dict[str, bool]]:
    cid, user_var, wait_timeout, gcml, lock = row
    return int(cid), {
        "user_variable": bool(user_var),
        "session_wait_timeout": bool(wait_timeout),
        "session_group_concat_max_len": bool(gcml),
        "temp_table": temp_table,
        "named_lock": bool(lock),
        "prepared_statement": prepared,
    }


def _sync_run(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return cur.fetchall() if cur.description else None
    finally:
        cur.close()


# 1146: no such table, 1243: unknown prepared statement: "it is gone", nothing else
_GONE = (1146, 1243)


def _sync_works(conn: Any, sql: str) -> bool:
    try:
        _sync_run(conn, sql)
    except Exception as exc:
        code = getattr(exc, "errno", None) or (exc.args[0] if exc.args else None)
        if code not in _GONE:
            raise
        return False
    return True


def _sync_case(url: str, reset: str) -> tuple[int, int, dict[str, bool]]:
    with millpond.Pool(url, min_size=1, max_size=1, reset=reset, timeout=10) as pool:
        with pool.connection() as conn:
            cid_a = int(_sync_run(conn, "SELECT CONNECTION_ID()")[0][0])
            for sql in A_STATEMENTS:
                _sync_run(conn, sql)
            conn.commit()
        with pool.connection() as conn:
            row = _sync_run(conn, _PROBE)[0]
            cid_b, found = _found(
                row, _sync_works(conn, _TEMP_PROBE), _sync_works(conn, _PREPARED_PROBE)
            )
            conn.rollback()
            _sync_run(conn, "DO RELEASE_ALL_LOCKS()")
    return cid_a, cid_b, found


SYNC_DRIVERS = ["mysql+pymysql", "mysql+mysqlconnector"]


def _url(mysql_url: str, scheme: str) -> str:
    return scheme + "://" + mysql_url.partition("://")[2]


@pytest.mark.parametrize("scheme", SYNC_DRIVERS)
def test_full_reset_isolates_tenants(mysql_url: str, scheme: str) -> None:
    cid_a, cid_b, found = _sync_case(_url(mysql_url, scheme), "full")
    assert cid_a == cid_b, "B must get A's server session for the test to mean anything"
    assert found == dict.fromkeys(ITEMS, False)


@pytest.mark.parametrize("scheme", SYNC_DRIVERS)
def test_rollback_reset_leaves_session_state(mysql_url: str, scheme: str) -> None:
    cid_a, cid_b, found = _sync_case(_url(mysql_url, scheme), "rollback")
    assert cid_a == cid_b
    assert found == ROLLBACK_SURVIVES


# -- aiomysql --------------------------------------------------------------------------------


async def _async_run(conn: Any, sql: str) -> Any:
    async with conn.cursor() as cur:
        await cur.execute(sql)
        return await cur.fetchall() if cur.description else None


async def _async_works(conn: Any, sql: str) -> bool:
    try:
        await _async_run(conn, sql)
    except Exception as exc:
        if not exc.args or exc.args[0] not in _GONE:
            raise
        return False
    return True


async def _async_case(url: str, reset: str) -> tuple[int, int, dict[str, bool]]:
    async with millpond.AsyncPool(url, min_size=1, max_size=1, reset=reset, timeout=10) as pool:
        async with pool.connection() as conn:
            cid_a = int((await _async_run(conn, "SELECT CONNECTION_ID()"))[0][0])
            for sql in A_STATEMENTS:
                await _async_run(conn, sql)
            await conn.commit()
        async with pool.connection() as conn:
            row = (await _async_run(conn, _PROBE))[0]
            temp = await _async_works(conn, _TEMP_PROBE)
            prepared = await _async_works(conn, _PREPARED_PROBE)
            cid_b, found = _found(row, temp, prepared)
            await conn.rollback()
            await _async_run(conn, "DO RELEASE_ALL_LOCKS()")
    return cid_a, cid_b, found


def test_full_reset_isolates_tenants_aiomysql(mysql_url: str) -> None:
    cid_a, cid_b, found = asyncio.run(_async_case(_url(mysql_url, "mysql+aiomysql"), "full"))
    assert cid_a == cid_b
    assert found == dict.fromkeys(ITEMS, False)


def test_rollback_reset_leaves_session_state_aiomysql(mysql_url: str) -> None:
    cid_a, cid_b, found = asyncio.run(_async_case(_url(mysql_url, "mysql+aiomysql"), "rollback"))
    assert cid_a == cid_b
    assert found == ROLLBACK_SURVIVES
