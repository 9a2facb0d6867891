"""aiomysql (``mysql+aiomysql://``, ``mariadb+aiomysql://``).

aiomysql is PyMySQL's protocol code made asyncio, and keeps PyMySQL's habits: it remembers
the server status flags of the last OK packet only (not those of the EOF packet that ends a
result set, and error packets carry none), and ``connect()`` defaults to ``autocommit=False``.
So outside autocommit mode the transaction status cannot be known without a round trip, and
every return of such a connection costs a ``ROLLBACK``; pass ``autocommit=True`` (in
``connect_kwargs`` or the URL) to let idle connections go back for free.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from millpond.drivers.async_base import AsyncAdapter, transport_fd
from millpond.drivers.async_url import check_connect_kwargs
from millpond.drivers.base import ConnectParams, TxStatus, load_driver
from millpond.drivers.limits import ServerLimits, mysql_limits, mysql_sql, server_info
from millpond.drivers.pymysql import MYSQL_DISCONNECT_CODES

__all__ = ["AiomysqlAdapter"]

_SERVER_STATUS_IN_TRANS = 0x0001
_SERVER_STATUS_AUTOCOMMIT = 0x0002
# COM_RESET_CONNECTION (MySQL 5.7.3+, MariaDB 10.2.4+), which aiomysql has no method for
_COM_RESET_CONNECTION = 0x1F
_ER_UNKNOWN_COM_ERROR = 1047


class AiomysqlAdapter(AsyncAdapter):
    name = "aiomysql"
    extra = "aiomysql"
    supports_full_reset = True

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        *,
        description: str = "aiomysql",
        secrets: Iterable[str] = (),
        module: Any = None,
    ) -> None:
        super().__init__(connect, description=description, secrets=secrets)
        self.module = module if module is not None else load_driver("aiomysql", self.extra)
        self._operational_error: type[BaseException] = self.module.OperationalError
        self._interface_error: type[BaseException] = self.module.InterfaceError
        self._mysql_error: type[BaseException] = self.module.MySQLError
        self.disconnect_errors = (self.module.InterfaceError,)

    @classmethod
    def from_kwargs(
        cls, kwargs: Mapping[str, Any], *, description: str, secrets: Iterable[str] = ()
    ) -> AiomysqlAdapter:
        aiomysql = load_driver("aiomysql", cls.extra)
        params = ConnectParams(kwargs, secrets)
        check_connect_kwargs(aiomysql.connect, params, "aiomysql")
        connect_async = aiomysql.connect

        async def connect() -> Any:
            return await params.acall(connect_async)

        return cls(connect, description=description, secrets=secrets, module=aiomysql)

    # -- opening and closing ---------------------------------------------------------------

    async def close(self, conn: Any) -> None:
        if not conn.closed:  # a broken connection has dropped its socket already
            await conn.ensure_closed()  # COM_QUIT, then close the socket

    def socket_fd(self, conn: Any) -> int | None:
        writer = getattr(conn, "_writer", None)
        return transport_fd(getattr(writer, "transport", None))

    def terminate(self, conn: Any) -> None:
        # aiomysql's close() is synchronous but lets the transport flush what is buffered
        # first, which never ends against a server that stopped reading; abort() drops the
        # buffer and the socket at once.
        writer = getattr(conn, "_writer", None)
        if writer is not None:
            writer.transport.abort()
        conn.close()

    def is_closed(self, conn: Any) -> bool:
        # aiomysql drops its socket on every read error and on cancellation mid-query
        return bool(conn.closed)

    # -- health ----------------------------------------------------------------------------

    async def ping(self, conn: Any) -> None:
        await conn.ping(reconnect=False)  # COM_PING: one round trip, no transaction

    async def server_limits(self, conn: Any) -> ServerLimits:
        try:
            cur = await conn.cursor()
            try:
                await cur.execute(mysql_sql(server_info(conn)))
                row = await cur.fetchone()
            finally:
                await cur.close()
        finally:
            await conn.rollback()  # a SELECT outside autocommit begins a transaction
        if row is None:
            raise LookupError("the limits query returned no row")
        return mysql_limits(tuple(row))

    def is_disconnect(self, exc: BaseException, conn: Any | None = None) -> bool:
        if conn is not None and conn.closed:
            return True
        if isinstance(exc, self._interface_error):
            return True  # raised for a connection without a socket
        if isinstance(exc, self._operational_error):
            return bool(exc.args) and exc.args[0] in MYSQL_DISCONNECT_CODES
        return isinstance(exc, OSError) and not isinstance(exc, TimeoutError)

    # -- session state ---------------------------------------------------------------------

    def status(self, conn: Any) -> TxStatus:
        """From the server status flags aiomysql kept, trusted only where they can be.

        Outside autocommit a ``SELECT`` (or a failed statement, which keeps the locks it
        took) opens a transaction the flags never show, so there "not in a transaction"
        means UNKNOWN. In autocommit mode only BEGIN/START TRANSACTION or SET autocommit
        open one, and those answer with an OK packet. A failed transaction stays open on
        MySQL, so INTRANS covers it (INERROR is a PostgreSQL state).
        """
        if conn.closed:
            return TxStatus.BROKEN
        if _unbuffered_active(conn):
            return TxStatus.UNKNOWN  # rows of an SSCursor left unread: rollback() reads them
        flags = conn.server_status or 0
        if flags & _SERVER_STATUS_IN_TRANS:
            return TxStatus.INTRANS
        if flags & _SERVER_STATUS_AUTOCOMMIT:
            return TxStatus.IDLE
        return TxStatus.UNKNOWN

    async def rollback(self, conn: Any) -> None:
        await _finish_unbuffered(conn)
        await conn.rollback()

    async def full_reset(self, conn: Any) -> None:
        """COM_RESET_CONNECTION: rolls back, clears user and session variables, temp tables,
        prepared statements and locks. Then one ``SET`` replays what aiomysql's connect set
        up (character set, ``sql_mode``) and the autocommit mode, and ``init_command`` runs
        again. Raises NotImplementedError where the command is unavailable, so that the pool
        reconnects instead."""
        execute = getattr(conn, "_execute_command", None)
        read_ok = getattr(conn, "_read_ok_packet", None)
        if execute is None or read_ok is None:
            raise NotImplementedError("this aiomysql cannot send COM_RESET_CONNECTION")
        autocommit = conn.get_autocommit()
        await _finish_unbuffered(conn)
        try:
            await execute(_COM_RESET_CONNECTION, b"")
            await read_ok()
        except self._mysql_error as exc:
            if exc.args and exc.args[0] == _ER_UNKNOWN_COM_ERROR:
                raise NotImplementedError(
                    "the server does not support COM_RESET_CONNECTION "
                    "(needs MySQL 5.7.3 or MariaDB 10.2.4)"
                ) from exc
            raise
        # MariaDB keeps the handshake's character set across the reset, but MySQL documents
        # the reset as restoring every session variable to its global value, SET NAMES ones
        # included; sending SET NAMES in the same statement covers both at no extra cost
        assignments = [f"NAMES {conn.escape(conn.charset)}"]
        if conn.sql_mode is not None:
            assignments.append(f"sql_mode={conn.sql_mode}")  # verbatim, as connect() does
        assignments.append(f"autocommit={int(autocommit)}")
        async with conn.cursor() as cur:
            await cur.execute("SET " + ", ".join(assignments))
            if conn.init_command is not None:
                await cur.execute(conn.init_command)
        if conn.init_command is not None:
            await conn.commit()  # as connect() does after init_command

    def get_autocommit(self, conn: Any) -> bool:
        return bool(conn.get_autocommit())  # reads the status flags: no I/O

    async def set_autocommit(self, conn: Any, value: bool) -> None:
        await conn.autocommit(value)

    async def begin(self, conn: Any) -> Any:
        # Only in autocommit mode: outside it the server begins implicitly, and an explicit
        # BEGIN would silently commit whatever the session had started.
        flags = conn.server_status or 0
        if flags & _SERVER_STATUS_AUTOCOMMIT and not flags & _SERVER_STATUS_IN_TRANS:
            await conn.begin()
        return None

    async def commit(self, conn: Any, token: Any = None) -> None:
        await conn.commit()

    async def rollback_transaction(self, conn: Any, token: Any = None) -> None:
        await conn.rollback()


def _unbuffered_active(conn: Any) -> bool:
    # on every return: plain attribute reads (the driver sets both in every connection)
    result = conn._result
    return result is not None and result.unbuffered_active is True


async def _finish_unbuffered(conn: Any) -> None:
    """Read the rest of an unbuffered (SSCursor) result a borrower left. aiomysql would do it
    before the next query anyway, but with a UserWarning in the next borrower's code."""
    if _unbuffered_active(conn):
        await conn._result._finish_unbuffered_query()
