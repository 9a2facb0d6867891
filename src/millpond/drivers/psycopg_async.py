"""psycopg 3's ``AsyncConnection`` (``postgresql+psycopg://`` and ``postgresql+psycopg_async://``
in an AsyncPool; ``postgresql://`` too when asyncpg is not installed).

Everything but the I/O matches the synchronous psycopg adapter: the transaction status is
libpq's, read from memory, and it does tell a failed transaction from a healthy one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from millpond.drivers.async_base import AsyncAdapter
from millpond.drivers.base import ConnectParams, TxStatus, load_driver
from millpond.drivers.limits import PG_SQL, ServerLimits, pg_limits

__all__ = ["PsycopgAsyncAdapter"]

# PQtransactionStatus values in order (psycopg's pq.TransactionStatus), as a tuple so that
# status() indexes instead of building an enum on every return
_PQ_STATUS = (
    TxStatus.IDLE,  # PQTRANS_IDLE
    TxStatus.UNKNOWN,  # PQTRANS_ACTIVE: a command is in flight (a half-read stream, COPY)
    TxStatus.INTRANS,  # PQTRANS_INTRANS
    TxStatus.INERROR,  # PQTRANS_INERROR
    TxStatus.BROKEN,  # PQTRANS_UNKNOWN: libpq's word for a bad connection
)
_PQTRANS_IDLE = 0
_PQTRANS_ACTIVE = 1
_CONNECTION_OK = 0

# SQLSTATEs outside class 08 that end the session: admin shutdown (pg_terminate_backend),
# crash shutdown, cannot connect now
_DISCONNECT_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


class PsycopgAsyncAdapter(AsyncAdapter):
    name = "psycopg-async"
    extra = "psycopg"
    supports_full_reset = True

    @classmethod
    def server_pooler_kwargs(cls, kind: str) -> dict[str, Any]:
        # pgbouncer in transaction mode hands each transaction to any server connection, where
        # the statements psycopg prepared on another one do not exist
        return {"prepare_threshold": None}

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        *,
        description: str = "psycopg-async",
        secrets: Iterable[str] = (),
        module: Any = None,
    ) -> None:
        super().__init__(connect, description=description, secrets=secrets)
        self.module = module if module is not None else load_driver("psycopg", self.extra)
        self.disconnect_errors = (self.module.OperationalError, self.module.InterfaceError)

    @classmethod
    def from_kwargs(
        cls, kwargs: Mapping[str, Any], *, description: str, secrets: Iterable[str] = ()
    ) -> PsycopgAsyncAdapter:
        psycopg = load_driver("psycopg", cls.extra)
        params = ConnectParams(kwargs, secrets)
        connect_async = psycopg.AsyncConnection.connect

        async def connect() -> Any:
            return await params.acall(connect_async)

        return cls(connect, description=description, secrets=secrets, module=psycopg)

    # -- opening and closing ---------------------------------------------------------------

    async def close(self, conn: Any) -> None:
        await conn.close()

    async def recover(self, conn: Any) -> bool:
        # psycopg answers a cancellation inside a query by cancelling it on the server and
        # reading its end before it re-raises: the session is then idle or in a failed
        # transaction, which the pool's rollback ends. A command still in flight (ACTIVE), or a
        # bad connection, is dropped. One round trip proves the protocol is in step.
        pgconn = conn.pgconn
        if pgconn.status != 0 or pgconn.transaction_status == _PQTRANS_ACTIVE:
            return False
        await conn.execute("", prepare=False)
        return True

    def terminate(self, conn: Any) -> None:
        # PQfinish, which is all AsyncConnection.close() does for a connection outside a
        # psycopg pool, minus the coroutine. libpq puts async connections in nonblocking mode,
        # so the Terminate message it tries to send cannot stall the loop. The connection
        # then reads as closed (and "broken", which it is).
        conn.pgconn.finish()

    def is_closed(self, conn: Any) -> bool:
        return bool(conn.closed)

    # -- health ----------------------------------------------------------------------------

    async def ping(self, conn: Any) -> None:
        # The empty query: one round trip, answered with EmptyQueryResponse. Outside
        # autocommit psycopg would send BEGIN first and leave a transaction open, so the
        # ping runs in autocommit; on an idle connection that switch is client-side only.
        if conn.autocommit or conn.pgconn.transaction_status != _PQTRANS_IDLE:
            await conn.execute("", prepare=False)
            return
        await conn.set_autocommit(True)
        try:
            await conn.execute("", prepare=False)  # nothing to gain from a prepared ping
        finally:
            if not conn.closed:
                await conn.set_autocommit(False)

    async def server_limits(self, conn: Any) -> ServerLimits:
        try:
            cur = await conn.execute(PG_SQL, prepare=False)
            row = await cur.fetchone()
        finally:
            await conn.rollback()  # the query began a transaction outside autocommit
        if row is None:
            raise LookupError("the limits query returned no row")
        return pg_limits(tuple(row), conn.info.backend_pid)

    def is_disconnect(self, exc: BaseException, conn: Any | None = None) -> bool:
        if conn is not None and conn.closed:
            return True
        psycopg = self.module
        if not isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return False
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate is not None:
            return bool(sqlstate.startswith("08") or sqlstate in _DISCONNECT_SQLSTATES)
        # No SQLSTATE: libpq's own failure (socket closed, server gone) or psycopg refusing
        # a closed connection. With the connection at hand, which was open, it is neither.
        return conn is None

    # -- session state ---------------------------------------------------------------------

    def status(self, conn: Any) -> TxStatus:
        pgconn = conn.pgconn
        if pgconn.status != _CONNECTION_OK:  # closed by the user, terminated, or broken
            return TxStatus.BROKEN
        return _PQ_STATUS[pgconn.transaction_status]

    async def rollback(self, conn: Any) -> None:
        await conn.rollback()

    async def full_reset(self, conn: Any) -> None:
        """Roll back, then ``DISCARD ALL``: role and session authorization, every setting
        (custom ones too), advisory locks, prepared statements, ``LISTEN``s, temp tables,
        cached plans, sequence state. psycopg sees the ``DISCARD ALL`` go by and forgets its
        own prepared statements. The autocommit mode is kept."""
        await conn.rollback()
        autocommit = conn.autocommit
        if not autocommit:
            await conn.set_autocommit(True)  # DISCARD ALL refuses to run in a transaction
        try:
            # prepare=False: psycopg prepares a statement it has seen prepare_threshold
            # times, and a prepared DISCARD ALL deallocates itself, after which psycopg
            # still runs it by name ("prepared statement _pg3_0 does not exist")
            await conn.execute("DISCARD ALL", prepare=False)
        finally:
            if not autocommit and not conn.closed:
                await conn.set_autocommit(False)

    def get_autocommit(self, conn: Any) -> bool:
        return bool(conn.autocommit)

    async def set_autocommit(self, conn: Any, value: bool) -> None:
        await conn.set_autocommit(value)

    async def begin(self, conn: Any) -> Any:
        # outside autocommit psycopg sends BEGIN itself before the first statement
        if conn.autocommit and conn.pgconn.transaction_status == _PQTRANS_IDLE:
            await conn.execute("BEGIN")
        return None

    async def commit(self, conn: Any, token: Any = None) -> None:
        # psycopg commits by the server's transaction status, so this also ends a BEGIN that
        # begin() sent in autocommit mode
        await conn.commit()

    async def rollback_transaction(self, conn: Any, token: Any = None) -> None:
        await conn.rollback()
