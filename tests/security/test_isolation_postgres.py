"""Tenant isolation on PostgreSQL: borrower A leaves session state behind, borrower B gets the
same server session (a pool of one) and looks for it.

With reset="full" B must see none of it. With reset="rollback" the test records exactly what
survives; docs/security.md's table states the same (ROLLBACK_SURVIVES below is that table's
PostgreSQL column).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import millpond

pytestmark = pytest.mark.postgres

#: what borrower A leaves behind, committed (session state, not a transaction's)
ITEMS = (
    "role",
    "search_path",
    "custom_setting",
    "temp_table",
    "advisory_lock",
    "listen",
    "prepared_statement",
)

#: what survives reset="rollback" on PostgreSQL: all of it, since none of it is transactional
#: once committed (docs/security.md, "What each policy clears")
ROLLBACK_SURVIVES = dict.fromkeys(ITEMS, True)


def _a_statements(role: str) -> list[str]:
    return [
        "SET search_path TO mp_tenant_a, public",
        "SET app.tenant = 'a'",
        "CREATE TEMP TABLE tenant_secret (x int)",
        "SELECT pg_advisory_lock(424242)",
        "LISTEN tenant_a",
        "PREPARE tenant_stmt AS SELECT 1",
        f'SET ROLE "{role}"',  # last, so the statements above run as the login role
    ]


_PROBE = """
SELECT pg_backend_pid(),
       current_user <> session_user,
       current_setting('search_path') LIKE '%mp_tenant_a%',
       coalesce(current_setting('app.tenant', true), '') = 'a',
       EXISTS (SELECT 1 FROM pg_class
               WHERE relnamespace = pg_my_temp_schema() AND relname = 'tenant_secret'),
       EXISTS (SELECT 1 FROM pg_locks
               WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted),
       EXISTS (SELECT 1 FROM pg_listening_channels() AS c WHERE c = 'tenant_a'),
       EXISTS (SELECT 1 FROM pg_prepared_statements WHERE name = 'tenant_stmt')
"""


def _survivors(row: Any) -> tuple[int, dict[str, bool]]:
    pid, *flags = row
    return int(pid), {item: bool(flag) for item, flag in zip(ITEMS, flags, strict=True)}


# -- sync drivers ----------------------------------------------------------------------------


def _sync_run(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return cur.fetchone() if cur.description else None
    finally:
        cur.close()


def _sync_case(url: str, reset: str, role: str) -> tuple[int, int, dict[str, bool]]:
    with millpond.Pool(url, min_size=1, max_size=1, reset=reset, timeout=10) as pool:
        with pool.connection() as conn:
            pid_a = int(_sync_run(conn, "SELECT pg_backend_pid()")[0])
            for sql in _a_statements(role):
                _sync_run(conn, sql)
            conn.commit()
        with pool.connection() as conn:
            pid_b, found = _survivors(_sync_run(conn, _PROBE))
            conn.rollback()
    return pid_a, pid_b, found


SYNC_DRIVERS = ["postgresql+psycopg", "postgresql+psycopg2"]


@pytest.mark.parametrize("scheme", SYNC_DRIVERS)
def test_full_reset_isolates_tenants(pg_url: str, tenant_role: str, scheme: str) -> None:
    url = scheme + "://" + pg_url.partition("://")[2]
    pid_a, pid_b, found = _sync_case(url, "full", tenant_role)
    assert pid_a == pid_b, "B must get A's server session for the test to mean anything"
    assert found == dict.fromkeys(ITEMS, False)


@pytest.mark.parametrize("scheme", SYNC_DRIVERS)
def test_rollback_reset_leaves_session_state(pg_url: str, tenant_role: str, scheme: str) -> None:
    url = scheme + "://" + pg_url.partition("://")[2]
    pid_a, pid_b, found = _sync_case(url, "rollback", tenant_role)
    assert pid_a == pid_b
    assert found == ROLLBACK_SURVIVES


# -- asyncpg ---------------------------------------------------------------------------------


async def _async_case(url: str, reset: str, role: str) -> tuple[int, int, dict[str, bool], int]:
    async with millpond.AsyncPool(url, min_size=1, max_size=1, reset=reset, timeout=10) as pool:
        async with pool.connection() as conn:
            pid_a = int(await conn.fetchval("SELECT pg_backend_pid()"))
            for sql in _a_statements(role):
                await conn.execute(sql)
            # a client-side listener callback too: the next borrower must not receive
            # notifications on behalf of this one
            await conn.add_listener("tenant_a_cb", lambda *args: None)
        async with pool.connection() as conn:
            pid_b, found = _survivors(await conn.fetchrow(_PROBE))
            callbacks = len(getattr(conn, "_listeners", {}))
    return pid_a, pid_b, found, callbacks


def _pg_async(pg_url: str) -> str:
    return "postgresql+asyncpg://" + pg_url.partition("://")[2]


def test_full_reset_isolates_tenants_asyncpg(pg_url: str, tenant_role: str) -> None:
    pid_a, pid_b, found, callbacks = asyncio.run(
        _async_case(_pg_async(pg_url), "full", tenant_role)
    )
    assert pid_a == pid_b
    assert found == dict.fromkeys(ITEMS, False)
    assert callbacks == 0


def test_rollback_reset_leaves_session_state_asyncpg(pg_url: str, tenant_role: str) -> None:
    pid_a, pid_b, found, callbacks = asyncio.run(
        _async_case(_pg_async(pg_url), "rollback", tenant_role)
    )
    assert pid_a == pid_b
    assert found == ROLLBACK_SURVIVES
    assert callbacks == 1  # the listener callback too: only "full" forgets it


# -- an open transaction is what "rollback" is for ------------------------------------------


@pytest.mark.parametrize("scheme", SYNC_DRIVERS)
def test_rollback_clears_uncommitted_session_changes(pg_url: str, scheme: str) -> None:
    """SET and temp tables inside an uncommitted transaction are undone by the rollback:
    only state a borrower committed (or made in autocommit) outlives reset="rollback"."""
    url = scheme + "://" + pg_url.partition("://")[2]
    with millpond.Pool(url, min_size=1, max_size=1, reset="rollback", timeout=10) as pool:
        with pool.connection() as conn:
            _sync_run(conn, "SET app.tenant = 'a'")
            _sync_run(conn, "CREATE TEMP TABLE tenant_secret (x int)")
            _sync_run(conn, "SELECT pg_advisory_xact_lock(424243)")
        with pool.connection() as conn:
            row = _sync_run(
                conn,
                "SELECT coalesce(current_setting('app.tenant', true), ''),"
                " to_regclass('pg_temp.tenant_secret') IS NULL,"
                " NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                "             AND pid = pg_backend_pid())",
            )
            conn.rollback()
    assert tuple(row) == ("", True, True)
