"""psycopg2 (``postgresql+psycopg2://``, or ``postgresql://`` when psycopg 3 is missing)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from millpond.drivers.base import ConnectParams, SyncAdapter, TxStatus, load_driver
from millpond.drivers.limits import PG_SQL, ServerLimits, fetch_row, pg_limits

__all__ = ["Psycopg2Adapter"]

# conn.get_transaction_status() returns libpq's PQtransactionStatus (see psycopg.py)
_PQ_STATUS = (
    TxStatus.IDLE,
    TxStatus.UNKNOWN,  # ACTIVE: a command is in flight
    TxStatus.INTRANS,
    TxStatus.INERROR,
    TxStatus.BROKEN,  # libpq's UNKNOWN means a bad connection
)

# connection exception (class 08) and the shutdown codes: the session is over
_DISCONNECT_PGCODES = ("57P01", "57P02", "57P03")


class Psycopg2Adapter(SyncAdapter):
    name = "psycopg2"
    extra = "psycopg2"
    supports_full_reset = True

    @classmethod
    def from_kwargs(
        cls, kwargs: Mapping[str, Any], *, description: str, secrets: Iterable[str] = ()
    ) -> Psycopg2Adapter:
        psycopg2 = load_driver("psycopg2", cls.extra)
        params = ConnectParams(kwargs, secrets)

        def connect() -> Any:
            return params.call(psycopg2.connect)

        return cls(connect, description=description, secrets=secrets, module=psycopg2)

    def is_closed(self, conn: Any) -> bool:
        # 0 = open, 1 = closed by close(), 2 = psycopg2 saw it break
        return bool(conn.closed)

    def ping(self, conn: Any) -> None:
        # psycopg2 refuses an empty query, so SELECT 1; with autocommit off it would send a
        # separate BEGIN first and need a ROLLBACK after: three round trips instead of one.
        # Switching autocommit on an idle connection is client-side only.
        if conn.autocommit or conn.get_transaction_status() != 0:
            self._select_one(conn)
            return
        conn.autocommit = True
        try:
            self._select_one(conn)
        finally:
            if not conn.closed:
                conn.autocommit = False

    @staticmethod
    def _select_one(conn: Any) -> None:
        cur = conn.cursor()
        try:
            cur.execute("SELECT 1")
        finally:
            cur.close()

    def server_limits(self, conn: Any) -> ServerLimits:
        # get_backend_pid is libpq's PQbackendPID: what the server said at connect, no I/O
        return pg_limits(fetch_row(conn, PG_SQL), conn.get_backend_pid())

    def is_disconnect(self, exc: BaseException, conn: Any | None = None) -> bool:
        if conn is not None and conn.closed:
            return True
        psycopg2 = self.module
        if psycopg2 is None or not isinstance(
            exc, (psycopg2.OperationalError, psycopg2.InterfaceError)
        ):
            return False
        pgcode = getattr(exc, "pgcode", None)
        if pgcode:
            return bool(pgcode.startswith("08") or pgcode in _DISCONNECT_PGCODES)
        # no SQLSTATE: libpq's own error ("server closed the connection unexpectedly"); psycopg2
        # marks the connection closed when it sees one, so with an open conn it was not that
        return conn is None

    def status(self, conn: Any) -> TxStatus:
        if conn.closed:
            return TxStatus.BROKEN
        return _PQ_STATUS[conn.get_transaction_status()]

    def rollback(self, conn: Any) -> None:
        # psycopg2's rollback() and commit() do nothing in autocommit mode, even when an
        # explicit BEGIN left a transaction open on the server: send the SQL ourselves then
        if conn.autocommit:
            if conn.get_transaction_status() != 0:
                self._run(conn, "ROLLBACK")
        else:
            conn.rollback()

    def commit(self, conn: Any) -> None:
        if conn.autocommit:
            if conn.get_transaction_status() != 0:
                self._run(conn, "COMMIT")
        else:
            conn.commit()

    @staticmethod
    def _run(conn: Any, sql: str) -> None:
        cur = conn.cursor()
        try:
            cur.execute(sql)
        finally:
            cur.close()

    def full_reset(self, conn: Any) -> None:
        """Roll back, then ``DISCARD ALL`` (see :class:`PsycopgAdapter`); autocommit is kept."""
        self.rollback(conn)
        autocommit = conn.autocommit
        conn.autocommit = True  # DISCARD ALL cannot run inside a transaction block
        try:
            self._run(conn, "DISCARD ALL")
        finally:
            if not conn.closed:
                conn.autocommit = autocommit

    def get_autocommit(self, conn: Any) -> bool:
        return bool(conn.autocommit)

    def set_autocommit(self, conn: Any, value: bool) -> None:
        conn.autocommit = value

    def begin(self, conn: Any) -> None:
        # outside autocommit psycopg2 sends BEGIN itself before the first statement; inside,
        # finish with commit() above, not conn.commit(), which would ignore this BEGIN
        if conn.autocommit and conn.get_transaction_status() == 0:
            self._run(conn, "BEGIN")
