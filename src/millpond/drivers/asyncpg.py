"""asyncpg (``postgresql+asyncpg://``; also ``postgresql://`` for an AsyncPool when installed).

asyncpg has no autocommit switch: a statement outside ``conn.transaction()`` (or an explicit
``BEGIN``) commits on its own. So :meth:`AsyncpgAdapter.get_autocommit` is always True and a
transaction is a ``conn.transaction()`` object, which :meth:`~AsyncpgAdapter.begin` returns
as its token.

asyncpg tells "in a transaction" from the ``ReadyForQuery`` messages it has read, but does
not say whether that transaction has failed: :meth:`~AsyncpgAdapter.status` reports INTRANS
for both, which costs nothing, since both mean "roll back".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from millpond.drivers.async_base import AsyncAdapter, transport_fd
from millpond.drivers.async_url import check_connect_kwargs
from millpond.drivers.base import ConnectParams, TxStatus, load_driver
from millpond.drivers.limits import PG_SQL, ServerLimits, pg_limits
from millpond.errors import ConfigError

__all__ = ["AsyncpgAdapter"]

# SQLSTATEs outside class 08 after which the server has ended the session: admin shutdown
# (pg_terminate_backend), crash shutdown, and "cannot connect now" (starting up / recovering)
_DISCONNECT_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


#: how long an abandoned connection may wait for asyncpg's own query cancellation
ABANDON_WAIT = 2.0


class AsyncpgAdapter(AsyncAdapter):
    name = "asyncpg"
    extra = "asyncpg"
    supports_full_reset = True

    @classmethod
    def server_pooler_kwargs(cls, kind: str) -> dict[str, Any]:
        # pgbouncer in transaction mode hands each transaction to any server connection, where
        # the statements asyncpg prepared and cached on another one do not exist
        return {"statement_cache_size": 0}

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        *,
        description: str = "asyncpg",
        secrets: Iterable[str] = (),
        module: Any = None,
    ) -> None:
        super().__init__(connect, description=description, secrets=secrets)
        self.module = module if module is not None else load_driver("asyncpg", self.extra)
        exceptions = self.module.exceptions
        self._connection_error: type[BaseException] = exceptions.PostgresConnectionError
        self._postgres_error: type[BaseException] = exceptions.PostgresError
        self._interface_error: type[BaseException] = exceptions.InterfaceError
        self.disconnect_errors = (exceptions.PostgresConnectionError,)

    @classmethod
    def from_kwargs(
        cls, kwargs: Mapping[str, Any], *, description: str, secrets: Iterable[str] = ()
    ) -> AsyncpgAdapter:
        asyncpg = load_driver("asyncpg", cls.extra)
        params = ConnectParams(kwargs, secrets)
        check_connect_kwargs(asyncpg.connect, params, "asyncpg")
        connect_async = asyncpg.connect

        async def connect() -> Any:
            # asyncpg would call a password callable itself; resolving it here instead keeps
            # one behaviour for every driver, and scrubs the result from a connect error
            return await params.acall(connect_async)

        return cls(connect, description=description, secrets=secrets, module=asyncpg)

    # -- opening and closing ---------------------------------------------------------------

    async def close(self, conn: Any) -> None:
        # sends Terminate and waits for the server to hang up; aborts the socket on failure
        await conn.close()

    def socket_fd(self, conn: Any) -> int | None:
        return transport_fd(getattr(conn, "_transport", None))

    def terminate(self, conn: Any) -> None:
        conn.terminate()  # aborts the transport: no message, no wait

    async def recover(self, conn: Any) -> bool:
        # asyncpg's own pool keeps such a connection: it waits for the cancel request it sent
        # to be answered (the protocol then has the cancelled query's end), and resets it. The
        # same here, plus one round trip: a reply out of step would fail it, not a borrower.
        protocol = getattr(conn, "_protocol", None)
        is_cancelling = getattr(protocol, "_is_cancelling", None)
        wait = getattr(protocol, "_wait_for_cancellation", None)
        if not callable(is_cancelling) or not callable(wait):
            return False  # an asyncpg without them: drop the connection as before
        if is_cancelling():
            await wait(ABANDON_WAIT)
        if conn.is_closed() or is_cancelling():
            return False
        await conn.execute("SELECT 1")
        return True

    async def abandon(self, conn: Any) -> None:
        # asyncpg answers a cancelled query by sending a cancel request on a side connection;
        # terminate() would abort that request and leave the statement running server-side
        pending = [t for t in getattr(conn, "_cancellations", ()) if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=ABANDON_WAIT)
        conn.terminate()

    def is_closed(self, conn: Any) -> bool:
        return bool(conn.is_closed())

    # -- health ----------------------------------------------------------------------------

    async def ping(self, conn: Any) -> None:
        # A simple-protocol query: one round trip, nothing prepared or cached. The empty
        # query would be cheaper for the server, but asyncpg 0.32 fails to decode its
        # EmptyQueryResponse.
        await conn.execute("SELECT 1")

    async def server_limits(self, conn: Any) -> ServerLimits:
        # outside a transaction asyncpg runs in autocommit: nothing is left open
        row = await conn.fetchrow(PG_SQL)
        return pg_limits(tuple(row), conn.get_server_pid())

    def is_disconnect(self, exc: BaseException, conn: Any | None = None) -> bool:
        if conn is not None and conn.is_closed():
            return True
        # SQLSTATE class 08, and ConnectionDoesNotExistError ("connection was closed in the
        # middle of operation"), which asyncpg files under it
        if isinstance(exc, self._connection_error):
            return True
        if isinstance(exc, self._postgres_error):
            return getattr(exc, "sqlstate", None) in _DISCONNECT_SQLSTATES
        if isinstance(exc, self._interface_error):
            # asyncpg's own misuse errors share this class; only "connection is closed"
            # (raised once it has noticed the socket is gone) means the session is over
            return "connection is closed" in str(exc)
        # a query timeout is a TimeoutError (an OSError) after which asyncpg has cancelled
        # the query and the connection is fine; other OSErrors are a socket that broke
        return isinstance(exc, OSError) and not isinstance(exc, TimeoutError)

    # -- session state ---------------------------------------------------------------------

    def status(self, conn: Any) -> TxStatus:
        if conn.is_closed():
            return TxStatus.BROKEN
        if conn.is_in_transaction():
            return TxStatus.INTRANS  # or INERROR: asyncpg does not expose the difference
        # A query cancelled by its borrower (a timeout around it, say) is still being
        # cancelled on the server, and the transaction state read before it is stale: a
        # cancelled BEGIN may have taken effect. asyncpg makes the next statement wait for
        # the cancellation, so a ROLLBACK sent now is safe and settles it.
        protocol = getattr(conn, "_protocol", None)
        cancelling = getattr(protocol, "_is_cancelling", None)
        if cancelling is not None and cancelling():
            return TxStatus.UNKNOWN
        return TxStatus.IDLE

    async def rollback(self, conn: Any) -> None:
        # A Transaction started with ``tr.start()`` and abandoned stays registered as the
        # connection's outermost one, and would turn the next borrower's conn.transaction()
        # into a SAVEPOINT outside any transaction. asyncpg's own reset() forgets it the
        # same way.
        abandoned = getattr(conn, "_top_xact", None) is not None
        if abandoned:
            conn._top_xact = None
        if abandoned or self.status(conn) is not TxStatus.IDLE:
            await conn.execute("ROLLBACK")

    async def full_reset(self, conn: Any) -> None:
        """Roll back, forget LISTEN and log-message callbacks, then ``DISCARD ALL``: role and
        session authorization, every setting (custom ones too), advisory locks, prepared
        statements, ``LISTEN``s, cursors, temp tables, cached plans and sequence state.

        ``DISCARD ALL`` deallocates the statements asyncpg has prepared and cached, so its
        statement cache is dropped too (``reload_schema_state``); codecs registered with
        ``set_type_codec`` are kept. asyncpg's ``reset()`` matters only for what it does on the
        client side (forgetting listener callbacks); its server side (advisory unlock,
        ``CLOSE ALL``, ``UNLISTEN *``, ``RESET ALL``) is a subset of ``DISCARD ALL`` that would
        cost a round trip of its own, so where asyncpg's listener registries are where we
        expect them they are cleared directly, and ``reset()`` runs only otherwise.
        """
        await self.rollback(conn)
        listeners = getattr(conn, "_listeners", None)
        log_listeners = getattr(conn, "_log_listeners", None)
        if isinstance(listeners, dict) and isinstance(log_listeners, set):
            listeners.clear()
            log_listeners.clear()
        else:
            await conn.reset()
        await conn.execute("DISCARD ALL")
        await conn.reload_schema_state()

    def get_autocommit(self, conn: Any) -> bool:
        return True  # outside a transaction block every statement commits by itself

    async def set_autocommit(self, conn: Any, value: bool) -> None:
        if not value:
            raise ConfigError(
                "asyncpg has no autocommit=False mode: statements outside a transaction "
                "commit at once; use pool.transaction() or conn.transaction()"
            )

    async def begin(self, conn: Any) -> Any:
        transaction = conn.transaction()
        await transaction.start()
        return transaction

    async def commit(self, conn: Any, token: Any = None) -> None:
        if token is not None:
            await token.commit()
        elif conn.is_in_transaction():  # a transaction begun without us (configure, say)
            await conn.execute("COMMIT")

    async def rollback_transaction(self, conn: Any, token: Any = None) -> None:
        if token is not None and not conn.is_closed():
            try:
                await token.rollback()
                return
            except self._interface_error:
                # the Transaction has already ended (a failed COMMIT leaves it in error
                # state): make sure the session has too
                pass
        await self.rollback(conn)
