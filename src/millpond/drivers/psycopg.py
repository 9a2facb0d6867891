"""psycopg 3 (``postgresql://``, ``postgresql+psycopg://``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from millpond.drivers.base import ConnectParams, SyncAdapter, TxStatus, load_driver
from millpond.drivers.limits import PG_SQL, ServerLimits, fetch_row, pg_limits

__all__ = ["PsycopgAdapter"]

# libpq's PQtransactionStatus values, which psycopg exposes unchanged as pq.TransactionStatus;
# spelled out so that status() needs no import and no enum construction on every return
_PQ_STATUS = (
    TxStatus.IDLE,  # PQTRANS_IDLE
    TxStatus.UNKNOWN,  # PQTRANS_ACTIVE: a command (COPY, a half-read stream) is in flight
    TxStatus.INTRANS,  # PQTRANS_INTRANS
    TxStatus.INERROR,  # PQTRANS_INERROR
    TxStatus.BROKEN,  # PQTRANS_UNKNOWN: libpq's word for a bad connection
)

# SQLSTATE classes and codes that mean the session is over, for errors seen without their
# connection: 08 = connection exception, 57P01-57P03 = admin/crash shutdown, cannot connect now
_DISCONNECT_SQLSTATES = ("57P01", "57P02", "57P03")

_PQTRANS_ACTIVE = 1
# libpq's ExecStatus of a COPY in progress: PQgetResult returns it again and again until the
# copy ends, so draining stops there and the connection is discarded instead
_COPY_STATUSES = frozenset({3, 4, 8})  # COPY_OUT, COPY_IN, COPY_BOTH
#: results read at most while draining a cancelled statement (a half-read stream returns a
#: result per buffered row before the cancel's error)
_DRAIN_LIMIT = 100_000


class PsycopgAdapter(SyncAdapter):
    name = "psycopg"
    extra = "psycopg"
    supports_full_reset = True

    @classmethod
    def server_pooler_kwargs(cls, kind: str) -> dict[str, Any]:
        # pgbouncer in transaction mode hands each transaction to any server connection, where
        # the statements psycopg prepared on another one do not exist
        return {"prepare_threshold": None}

    @classmethod
    def from_kwargs(
        cls, kwargs: Mapping[str, Any], *, description: str, secrets: Iterable[str] = ()
    ) -> PsycopgAdapter:
        psycopg = load_driver("psycopg", cls.extra)
        params = ConnectParams(kwargs, secrets)

        def connect() -> Any:
            return params.call(psycopg.connect)

        return cls(connect, description=description, secrets=secrets, module=psycopg)

    def is_closed(self, conn: Any) -> bool:
        return bool(conn.closed)

    def ping(self, conn: Any) -> None:
        # An empty query is one round trip that the server answers with EmptyQueryResponse.
        # Outside autocommit psycopg would first send BEGIN (and we would need a ROLLBACK),
        # so autocommit is switched on around it; on an idle connection that switch is
        # client-side only. prepare=False here and below: psycopg prepares a statement
        # server-side by its fifth run on a connection, and DISCARD ALL unprepares it.
        if conn.autocommit or conn.pgconn.transaction_status != 0:
            conn.execute("", prepare=False)
            return
        conn.autocommit = True
        try:
            conn.execute("", prepare=False)
        finally:
            if not conn.closed:
                conn.autocommit = False

    def server_limits(self, conn: Any) -> ServerLimits:
        return pg_limits(fetch_row(conn, PG_SQL), conn.info.backend_pid)

    def is_disconnect(self, exc: BaseException, conn: Any | None = None) -> bool:
        if conn is not None and conn.closed:
            return True
        psycopg = self.module
        if psycopg is None or not isinstance(
            exc, (psycopg.OperationalError, psycopg.InterfaceError)
        ):
            return False
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate is not None:
            return sqlstate.startswith("08") or sqlstate in _DISCONNECT_SQLSTATES
        # Without a SQLSTATE the error came from libpq itself (socket closed, server gone) or
        # from psycopg refusing a closed connection; the connection, if we have it, was open.
        return conn is None

    def status(self, conn: Any) -> TxStatus:
        pgconn = conn.pgconn
        if pgconn.status != 0:  # CONNECTION_BAD: closed by the user or broken
            return TxStatus.BROKEN
        return _PQ_STATUS[pgconn.transaction_status]

    def rollback(self, conn: Any) -> None:
        settle(conn)
        conn.rollback()

    def full_reset(self, conn: Any) -> None:
        """Roll back, then ``DISCARD ALL``: role and session authorization, every setting
        (custom ones too), advisory locks, prepared statements, ``LISTEN``s, temp tables,
        cached plans and sequence state. psycopg notices the ``DISCARD ALL`` and forgets its
        own prepared statements with the server's. The autocommit mode is kept."""
        settle(conn)
        conn.rollback()
        autocommit = conn.autocommit
        # DISCARD ALL refuses to run inside a transaction block
        conn.autocommit = True
        try:
            # never prepared: psycopg prepares a statement by its fifth run, and a prepared
            # DISCARD ALL deallocates itself while psycopg's cache still names it
            conn.execute("DISCARD ALL", prepare=False)
        finally:
            if not conn.closed:
                conn.autocommit = autocommit

    def get_autocommit(self, conn: Any) -> bool:
        return bool(conn.autocommit)

    def set_autocommit(self, conn: Any, value: bool) -> None:
        conn.autocommit = value

    def begin(self, conn: Any) -> None:
        # outside autocommit psycopg sends BEGIN itself before the first statement
        if conn.autocommit and conn.pgconn.transaction_status == 0:
            conn.execute("BEGIN", prepare=False)


def settle(conn: Any) -> None:
    """End a statement still running on the server, so the session comes back usable.

    A borrower interrupted inside ``execute`` (a signal handler raising: Celery's soft time
    limit, an alarm-based request timeout) leaves the statement running: a plain rollback
    then fails ("another command is already in progress"), the pool discards the connection
    and opens a replacement while the old backend works on for nobody, so the server sees one
    session more than the pool's cap. Cancelling and reading the statement's end instead keeps
    the connection and the count. Bounded by the pool's reset watchdog.
    """
    pgconn = conn.pgconn
    if pgconn.transaction_status != _PQTRANS_ACTIVE:
        return
    cancel = getattr(conn, "cancel_safe", None)  # psycopg 3.2+: no blocking libpq call
    if cancel is not None:
        cancel()
    else:
        conn.cancel()
    for _ in range(_DRAIN_LIMIT):
        result = pgconn.get_result()
        if result is None:
            return
        if result.status in _COPY_STATUSES:
            break
    raise conn.OperationalError(  # the reset fails: the pool discards the connection
        "a statement in progress could not be ended (a COPY, or a stream too long to drain)"
    )
