"""The asyncio driver protocol: the async twin of :class:`millpond.drivers.base.SyncAdapter`.

One adapter instance serves one ``AsyncPool``. Methods that talk to the server are coroutines;
``status``, ``is_closed``, ``is_disconnect``, ``get_autocommit`` and ``terminate`` never wait,
because the pool calls them where it must not yield (on the return path's fast lane, or while
handling a cancellation).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from millpond.drivers.base import TxStatus, alive_by_socket, fileno_fd, redact
from millpond.drivers.limits import ServerLimits
from millpond.errors import ConfigError

__all__ = ["AsyncAdapter", "transport_fd"]


def transport_fd(transport: Any) -> int | None:
    """The socket descriptor behind an asyncio transport (-1 once it is closing)."""
    if transport is None:
        return None
    if transport.is_closing():
        return -1
    sock = transport.get_extra_info("socket")
    return None if sock is None else int(sock.fileno())


class AsyncAdapter:
    """Generic async adapter: ``connect`` is a zero-argument coroutine function.

    The fallbacks assume a DB-API-like async connection (``cursor()``, ``commit()``,
    ``rollback()``, ``close()`` as coroutines where the driver makes them so).
    """

    name: str = "async-dbapi"
    extra: str | None = None
    supports_full_reset: bool = False
    disconnect_errors: tuple[type[BaseException], ...] = ()

    @classmethod
    def server_pooler_kwargs(cls, kind: str) -> dict[str, Any]:
        """Connect arguments this driver needs behind the server-side pooler ``kind``
        ("pgbouncer-transaction"); the user's own arguments win over them."""
        return {}

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        *,
        description: str = "async-dbapi",
        secrets: Iterable[str] = (),
    ) -> None:
        if not callable(connect):
            raise ConfigError(f"connect target must be callable, got {type(connect).__name__}")
        self._connect = connect
        self.description = description
        self.secrets: tuple[str, ...] = tuple(s for s in secrets if s)

    # -- opening and closing ---------------------------------------------------------------

    async def connect(self) -> Any:
        result = self._connect()
        if not inspect.isawaitable(result):
            # a synchronous connect function handed to AsyncPool: a TypeError from ``await``
            # would reach the user as a connect failure, looking like an unreachable server
            with contextlib.suppress(Exception):
                result.close()  # do not leak what it opened
            raise ConfigError(
                f"the AsyncPool connect target returned {type(result).__name__}, not an "
                "awaitable: give a coroutine function (async def), or use millpond.Pool for a "
                "synchronous driver"
            )
        return await result

    async def close(self, conn: Any) -> None:
        """Close politely (may talk to the server)."""
        result = conn.close()
        if hasattr(result, "__await__"):
            await result

    def terminate(self, conn: Any) -> None:
        """Drop the connection at once without waiting for the server: used when a reset or a
        close timed out or was cancelled. Must not block or yield."""
        transport = getattr(conn, "terminate", None)
        if callable(transport):
            transport()

    async def recover(self, conn: Any) -> bool:
        """After a query cut off by a cancellation or timeout: bring the connection back to a
        known state if the driver can tell it is safe, and say so. True: the pool resets it
        (a rollback) and keeps it; False: the pool drops it with :meth:`abandon`. Bounded by
        the pool. Default: False."""
        return False

    async def abandon(self, conn: Any) -> None:
        """Drop a connection whose query was cut off by a cancellation or timeout. The pool
        keeps its slot counted until this returns (bounded), so the server never holds more
        sessions than the pool's size. Default: terminate at once; a driver that has started
        cancelling the query server-side (asyncpg) lets that finish first, so the statement
        does not run on with its locks."""
        self.terminate(conn)

    def socket_fd(self, conn: Any) -> int | None:
        """The descriptor of the connection's socket, None if the driver exposes none."""
        return fileno_fd(conn)

    def socket_alive(self, conn: Any) -> bool:
        """Cheap liveness check of an idle connection, without a round trip (never blocks
        the loop): False when its socket shows end-of-file or unread data (the pool then
        pings it), True when quiet or when the driver exposes no socket."""
        return alive_by_socket(self.socket_fd, conn)

    def is_closed(self, conn: Any) -> bool:
        closed = getattr(conn, "closed", False)
        if callable(closed):
            return False
        return bool(closed)

    # -- health ----------------------------------------------------------------------------

    async def ping(self, conn: Any) -> None:
        cur = conn.cursor()
        if hasattr(cur, "__await__"):
            cur = await cur
        try:
            await cur.execute("SELECT 1")
            await cur.fetchall()
        finally:
            result = cur.close()
            if hasattr(result, "__await__"):
                await result
        await conn.rollback()

    def is_disconnect(self, exc: BaseException, conn: Any | None = None) -> bool:
        if conn is not None and self.is_closed(conn):
            return True
        return bool(self.disconnect_errors) and isinstance(exc, self.disconnect_errors)

    async def server_limits(self, conn: Any) -> ServerLimits | None:
        """The async twin of :meth:`SyncAdapter.server_limits`: None when unknown."""
        return None

    # -- session state ---------------------------------------------------------------------

    def status(self, conn: Any) -> TxStatus:
        return TxStatus.UNKNOWN

    async def rollback(self, conn: Any) -> None:
        await conn.rollback()

    async def full_reset(self, conn: Any) -> None:
        await conn.rollback()

    def get_autocommit(self, conn: Any) -> bool | None:
        value = getattr(conn, "autocommit", None)
        if callable(value):
            return None
        return None if value is None else bool(value)

    async def set_autocommit(self, conn: Any, value: bool) -> None:
        conn.autocommit = value

    async def begin(self, conn: Any) -> Any:
        """Start a transaction for ``pool.transaction()``. Returns a token handed back to
        :meth:`commit` / :meth:`rollback_transaction` (asyncpg's Transaction object, say)."""
        if self.get_autocommit(conn):
            cur = conn.cursor()
            if hasattr(cur, "__await__"):
                cur = await cur
            await cur.execute("BEGIN")
        return None

    async def commit(self, conn: Any, token: Any = None) -> None:
        await conn.commit()

    async def rollback_transaction(self, conn: Any, token: Any = None) -> None:
        await self.rollback(conn)

    # -- presentation ----------------------------------------------------------------------

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"
