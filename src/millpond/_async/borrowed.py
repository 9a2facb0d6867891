"""What ``async with pool.connection()`` and ``pool.transaction()`` return (asyncio shell).

``Borrowed`` is one of the two fast paths' entry points: it asks the pool's
``_lend_idle``/``_return_idle`` first and falls back to ``getconn``/``putconn``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from millpond._shell import RESET_TIMEOUT

if TYPE_CHECKING:
    from millpond._async.pool import AsyncPool

__all__ = ["CUT_OFF", "RESET_TIMEOUT", "Borrowed", "Transaction", "bounded"]


#: what ends a block early, maybe mid-query: the connection may be mid-protocol
CUT_OFF = (asyncio.CancelledError, TimeoutError)


async def bounded(aw: Awaitable[Any], seconds: float) -> Any:
    async with asyncio.timeout(seconds):
        return await aw


class Borrowed:
    """``async with pool.connection() as conn``."""

    __slots__ = ("_conn", "_pool", "_timeout")

    # set by AsyncPool.connection without an __init__ call: one Python frame less per borrow
    _pool: AsyncPool
    _timeout: float | None
    _conn: Any

    async def __aenter__(self) -> Any:
        pool = self._pool
        if self._timeout is None and pool._leak_timeout is None:
            conn = pool._lend_idle()
            if conn is not None:
                self._conn = conn
                return conn
        self._conn = conn = await pool.getconn(self._timeout)
        return conn

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn = self._conn
        self._conn = None
        pool = self._pool
        if ev is None and not pool._reset_always and pool._return_idle(conn):
            return
        await pool.putconn(conn, False, ev)


class Transaction:
    """``async with pool.transaction() as conn``: the driver's own way of beginning,
    committing on success and rolling back on an exception."""

    __slots__ = ("_conn", "_pool", "_timeout", "_token")

    def __init__(self, pool: AsyncPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None
        self._token: Any = None

    async def __aenter__(self) -> Any:
        pool = self._pool
        self._conn = conn = await pool.getconn(self._timeout)
        try:
            self._token = await pool._adapter.begin(conn)
        except BaseException as exc:
            self._conn = None
            await pool.putconn(conn, False, exc)
            raise
        return conn

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, token = self._conn, self._token
        self._conn = self._token = None
        pool = self._pool
        adapter = pool._adapter
        if isinstance(ev, CUT_OFF):
            # the block was cancelled or timed out, maybe mid-query: a ROLLBACK could wait on
            # a connection that will never answer; putconn drops the connection instead
            await pool.putconn(conn, False, ev)
            return
        try:
            if ev is None:
                await adapter.commit(conn, token)
            else:
                await bounded(adapter.rollback_transaction(conn, token), RESET_TIMEOUT)
        except BaseException as exc:
            await pool.putconn(conn, False, exc)
            if ev is None or not isinstance(exc, Exception):
                raise  # a commit failure, or a cancellation arriving during the rollback
            return  # the block's own exception is the one the caller needs to see
        await pool.putconn(conn, False, ev)
