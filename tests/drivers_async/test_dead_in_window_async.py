"""Issue 11 item 11 for AsyncPool: a backend killed right after a return is not lent inside
``ping_window`` (its socket shows end-of-file: ping, replace). Real servers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import millpond

pytestmark = pytest.mark.asyncio

PG_SCHEMES = ["postgresql+asyncpg", "postgresql+psycopg"]


def _with_scheme(url: str, scheme: str) -> str:
    return scheme + url[url.index("://") :]


async def _wait_eof(pool: millpond.AsyncPool, conn: Any) -> None:
    deadline = time.monotonic() + 10
    while pool._adapter.socket_alive(conn):
        assert time.monotonic() < deadline, "the killed session's socket never showed EOF"
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.01)  # past the PEEK_AFTER moment after the return


async def _query(conn: Any, sql: str) -> Any:
    if hasattr(conn, "fetchval"):  # asyncpg
        return await conn.fetchval(sql)
    cur = await conn.execute(sql) if not hasattr(conn, "_writer") else None
    if cur is None:  # aiomysql
        async with conn.cursor() as c:
            await c.execute(sql)
            return (await c.fetchone())[0]
    return (await cur.fetchone())[0]


async def _kill_idle_and_borrow(pool: millpond.AsyncPool, ident: str, kill: Any) -> None:
    conn = await pool.getconn()
    before = await _query(conn, ident)
    await pool.putconn(conn)
    kill(before)
    await _wait_eof(pool, conn)
    again = await pool.getconn()  # well inside ping_window (30 s)
    try:
        assert await _query(again, "SELECT 1") == 1  # works on the first try
        assert await _query(again, ident) != before
    finally:
        await pool.putconn(again)


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", PG_SCHEMES)
async def test_postgres_backend_killed_inside_ping_window(pg_url: str, scheme: str) -> None:
    pytest.importorskip("asyncpg" if scheme.endswith("asyncpg") else "psycopg")
    import psycopg

    def kill(pid: int) -> None:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))

    pool = millpond.AsyncPool(_with_scheme(pg_url, scheme), min_size=0, max_size=1, ping_window=30)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        async with pool:
            await _kill_idle_and_borrow(pool, "SELECT pg_backend_pid()", kill)


@pytest.mark.mysql
async def test_mariadb_session_killed_inside_ping_window(mysql_url: str) -> None:
    pytest.importorskip("aiomysql")
    import pymysql

    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)

    def kill(victim: int) -> None:
        with admin.cursor() as cur:
            cur.execute(f"KILL {int(victim):d}")

    pool = millpond.AsyncPool(
        _with_scheme(mysql_url, "mysql+aiomysql"), min_size=0, max_size=1, ping_window=30
    )
    try:
        async with pool:
            await _kill_idle_and_borrow(pool, "SELECT CONNECTION_ID()", kill)
    finally:
        admin.close()
