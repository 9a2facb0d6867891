"""reset="full" gives the next borrower a pristine session whatever the target: a URL (the
driver's own reset), or a callable the pool knows nothing about (a new connection)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import millpond

pytestmark = pytest.mark.postgres


def _dsn(pg_url: str) -> str:
    return pg_url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_a_callable_target_with_full_reset_hands_out_a_pristine_session(pg_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    dsn = _dsn(pg_url)
    with millpond.Pool(lambda: psycopg.connect(dsn), reset="full", max_size=1) as pool:
        with pool.connection() as conn:
            conn.execute("SET statement_timeout = 1234")
            conn.commit()
            first = conn.execute("SELECT pg_backend_pid()").fetchone()
        with pool.connection() as conn:
            row: Any = conn.execute(
                "SELECT current_setting('statement_timeout'), pg_backend_pid()"
            ).fetchone()
    assert row[0] == "0"
    assert row[1] != first[0]  # the generic adapter can only reset by reconnecting


def test_an_async_callable_target_with_full_reset_hands_out_a_pristine_session(
    pg_url: str,
) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    dsn = _dsn(pg_url)

    async def main() -> str:
        async with millpond.AsyncPool(
            lambda: asyncpg.connect(dsn), reset="full", max_size=1
        ) as pool:
            async with pool.connection() as conn:
                await conn.execute("SET statement_timeout = 1234")
            async with pool.connection() as conn:
                value: str = await conn.fetchval("SELECT current_setting('statement_timeout')")
                return value

    assert asyncio.run(main()) == "0"
