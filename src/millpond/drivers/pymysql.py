"""PyMySQL (``mysql://``, ``mysql+pymysql://``, ``mariadb://``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from millpond.drivers.base import ConnectParams, SyncAdapter, TxStatus, load_driver, shutdown_socket
from millpond.drivers.limits import ServerLimits, mysql_server_limits

__all__ = ["MYSQL_DISCONNECT_CODES", "PyMySQLAdapter"]

#: MySQL/MariaDB error numbers after which the session is gone (or its protocol state is, so
#: it must not be reused). Shared with the mysql-connector adapter.
MYSQL_DISCONNECT_CODES = frozenset(
    {
        # client library: cannot connect, server gone, lost mid-query, out of sync, bad protocol
        2002, 2003, 2006, 2013, 2014, 2047, 2055,
        1053,  # ER_SERVER_SHUTDOWN
        1152,  # ER_ABORTING_CONNECTION
        1153,  # ER_NET_PACKET_TOO_LARGE: the server closes the connection after sending it
        1154, 1156, 1157, 1158, 1159, 1160, 1161,  # ER_NET_*: read/write/packet-order errors
        1927,  # ER_CONNECTION_KILLED (MariaDB)
        3169,  # ER_SESSION_WAS_KILLED (MySQL)
        4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8.0.24+: closed for inactivity)
    }
)  # fmt: skip

_SERVER_STATUS_IN_TRANS = 0x0001
_SERVER_STATUS_AUTOCOMMIT = 0x0002
# The protocol's COM_RESET_CONNECTION (MySQL 5.7.3+, MariaDB 10.2.4+). PyMySQL 1.2 has no
# method for it and lists 0x1F under the name COM_END.
_COM_RESET_CONNECTION = 0x1F
_ER_UNKNOWN_COM_ERROR = 1047

# PyMySQL's default TLS mode is "preferred": each Connection() builds a fresh SSLContext with
# ssl.create_default_context(), which loads the system CA store (~17 ms of a ~18 ms connect
# measured here; ~40 ms on the reporter's machine) even against a server without TLS, where
# the context is never used. That context takes no input (no CA, no certificate, verification
# off), so one per process serves every connection: SSLContext is safe to share across threads
# and sockets. Contexts built from the user's ssl options are left alone, so rotated
# certificate or CA files are still read at each connect. Nothing about the negotiation
# changes (a TLS-capable server still gets TLS), which is why this beats disabling TLS for
# local hosts: a server with require_secure_transport would refuse that.
_preferred_ctx: Any = None
_preferred_ctx_lock = threading.Lock()


def _shared_preferred_ctx(build: Callable[[dict[str, Any]], Any]) -> Any:
    global _preferred_ctx
    ctx = _preferred_ctx
    if ctx is None:
        with _preferred_ctx_lock:
            if _preferred_ctx is None:
                _preferred_ctx = build({})
            ctx = _preferred_ctx
    return ctx


_connection_class: type | None = None


def _pymysql_connection_class(pymysql: Any) -> type:
    """PyMySQL's Connection, reusing the preferred-mode SSL context across connections."""
    global _connection_class
    if _connection_class is None:

        class Connection(pymysql.connections.Connection):  # type: ignore[misc]
            def _create_ssl_ctx(self, sslp: Any) -> Any:
                # PyMySQL passes {} exactly when the user gave no ssl option at all
                if isinstance(sslp, dict) and not sslp:
                    return _shared_preferred_ctx(super()._create_ssl_ctx)
                return super()._create_ssl_ctx(sslp)

        _connection_class = Connection
    return _connection_class


class PyMySQLAdapter(SyncAdapter):
    name = "pymysql"
    extra = "pymysql"
    supports_full_reset = True

    @classmethod
    def from_kwargs(
        cls, kwargs: Mapping[str, Any], *, description: str, secrets: Iterable[str] = ()
    ) -> PyMySQLAdapter:
        pymysql = load_driver("pymysql", cls.extra)
        factory = _pymysql_connection_class(pymysql)
        params = ConnectParams(kwargs, secrets)

        def connect() -> Any:
            return params.call(factory)

        return cls(connect, description=description, secrets=secrets, module=pymysql)

    def close(self, conn: Any) -> None:
        # PyMySQL raises "Already closed" for a connection whose socket is already gone,
        # which is the normal state of a broken connection the pool is throwing away
        if conn.open:
            conn.close()

    def socket_fd(self, conn: Any) -> int | None:
        sock = getattr(conn, "_sock", None)
        return None if sock is None else int(sock.fileno())

    def interrupt(self, conn: Any) -> bool:
        sock = getattr(conn, "_sock", None)  # PyMySQL keeps its socket there
        if sock is None:
            return False
        return shutdown_socket(sock.fileno())

    def is_closed(self, conn: Any) -> bool:
        # PyMySQL drops its socket on every network error, so this also catches "broken"
        return not conn.open

    def ping(self, conn: Any) -> None:
        conn.ping(reconnect=False)  # COM_PING: one round trip, no transaction

    def server_limits(self, conn: Any) -> ServerLimits:
        return mysql_server_limits(conn)

    def is_disconnect(self, exc: BaseException, conn: Any | None = None) -> bool:
        if conn is not None and not conn.open:
            return True
        err = self.module.err
        if isinstance(exc, err.InterfaceError):
            return True  # PyMySQL raises it only for a connection without a socket
        if isinstance(exc, err.OperationalError):
            return bool(exc.args) and exc.args[0] in MYSQL_DISCONNECT_CODES
        return False

    def status(self, conn: Any) -> TxStatus:
        """From the server status flags of the last OK packet, trusted only where they can be.

        PyMySQL 1.2 updates ``server_status`` from OK packets but not from the EOF packet
        that ends a result set, and error packets carry no status. Outside autocommit a
        ``SELECT`` (or a statement that fails, keeping the locks it took) opens a transaction
        that the flags never show, so there "not in a transaction" means UNKNOWN. In
        autocommit mode only BEGIN/START TRANSACTION or SET autocommit open one, and those
        answer with an OK packet.
        """
        if not conn.open:
            return TxStatus.BROKEN
        if _unbuffered_active(conn):
            return TxStatus.UNKNOWN  # rows of an SSCursor left unread: rollback() reads them
        flags = conn.server_status or 0
        if flags & _SERVER_STATUS_IN_TRANS:
            return TxStatus.INTRANS
        if flags & _SERVER_STATUS_AUTOCOMMIT:
            return TxStatus.IDLE
        return TxStatus.UNKNOWN

    def rollback(self, conn: Any) -> None:
        _finish_unbuffered(conn)
        conn.rollback()

    def full_reset(self, conn: Any) -> None:
        """COM_RESET_CONNECTION: rolls back and clears user and session variables, temp
        tables, prepared statements, locks; then replays what PyMySQL's connect() set up
        (character set and collation, ``sql_mode``, ``init_command``) and restores the
        autocommit mode. Raises NotImplementedError where the command is unavailable, so
        the pool reconnects instead."""
        execute = getattr(conn, "_execute_command", None)
        read_ok = getattr(conn, "_read_ok_packet", None)
        if execute is None or read_ok is None:
            raise NotImplementedError("this PyMySQL cannot send COM_RESET_CONNECTION")
        autocommit = conn.get_autocommit()
        _finish_unbuffered(conn)
        try:
            execute(_COM_RESET_CONNECTION, b"")
            read_ok()
        except self.module.err.MySQLError as exc:
            if exc.args and exc.args[0] == _ER_UNKNOWN_COM_ERROR:
                raise NotImplementedError(
                    "the server does not support COM_RESET_CONNECTION "
                    "(needs MySQL 5.7.3 or MariaDB 10.2.4)"
                ) from exc
            raise
        conn.set_character_set(conn.charset, conn.collation)
        if conn.sql_mode is not None or conn.init_command is not None:
            cur = conn.cursor()
            try:
                if conn.sql_mode is not None:
                    cur.execute("SET sql_mode=%s", (conn.sql_mode,))
                if conn.init_command is not None:
                    cur.execute(conn.init_command)
            finally:
                cur.close()
        if conn.get_autocommit() != autocommit:
            conn.autocommit(autocommit)

    def get_autocommit(self, conn: Any) -> bool:
        return bool(conn.get_autocommit())  # reads the status flags: no I/O

    def set_autocommit(self, conn: Any, value: bool) -> None:
        conn.autocommit(value)

    def begin(self, conn: Any) -> None:
        # Only in autocommit mode: outside it the server begins implicitly, and an explicit
        # BEGIN would silently commit whatever the session had started.
        flags = conn.server_status or 0
        if flags & _SERVER_STATUS_AUTOCOMMIT and not flags & _SERVER_STATUS_IN_TRANS:
            conn.begin()


def _unbuffered_active(conn: Any) -> bool:
    # on every return: plain attribute reads (the driver sets both in every connection)
    result = conn._result
    return result is not None and result.unbuffered_active is True


def _finish_unbuffered(conn: Any) -> None:
    """Read the rest of an unbuffered (SSCursor) result a borrower left. PyMySQL would do it
    before the next query anyway, but with a UserWarning in the next borrower's code."""
    if _unbuffered_active(conn):
        conn._result._finish_unbuffered_query()
