"""MySQL Connector/Python (``mysql+mysqlconnector://``).

Connector/Python picks its C extension when it can load it (``use_pure=False``) and its pure
Python implementation otherwise; this adapter leaves that choice to the driver (pass
``use_pure`` in ``connect_kwargs`` to force one) and handles both connection classes. Against
a local MariaDB both connect in about 0.35-0.45 ms, so connect time is no reason to prefer
either; the C extension's gain is on reading large results.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from millpond.drivers.base import ConnectParams, SyncAdapter, TxStatus, load_driver, shutdown_socket
from millpond.drivers.limits import ServerLimits, mysql_server_limits
from millpond.drivers.pymysql import MYSQL_DISCONNECT_CODES
from millpond.errors import ConfigError

__all__ = ["MySQLConnectorAdapter"]

# Connector/Python reports a connection it already found dead with errno -1 and one of these
# messages (the real error, when there is one, is only in __cause__)
_NOT_AVAILABLE = ("MySQL Connection not available", "Connection to MySQL is not available")


class MySQLConnectorAdapter(SyncAdapter):
    name = "mysql-connector"
    extra = "mysql"
    supports_full_reset = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.module is None:
            self.module = load_driver("mysql.connector", self.extra)
        self._pure_class: type[Any] = self.module.MySQLConnection

    @classmethod
    def from_kwargs(
        cls, kwargs: Mapping[str, Any], *, description: str, secrets: Iterable[str] = ()
    ) -> MySQLConnectorAdapter:
        mysql_connector = load_driver("mysql.connector", cls.extra)
        params = ConnectParams(kwargs, secrets)
        pool_options = sorted(k for k in params if k.startswith("pool_"))
        if pool_options:
            raise ConfigError(
                f"{', '.join(pool_options)}: these options make mysql.connector.connect() "
                "return a connection from its own pool; millpond is the pool, so drop them "
                "and use the Pool's min_size/max_size"
            )

        def connect() -> Any:
            return params.call(mysql_connector.connect)

        return cls(connect, description=description, secrets=secrets, module=mysql_connector)

    def socket_fd(self, conn: Any) -> int | None:
        holder = getattr(conn, "_socket", None)  # the C extension exposes no socket
        sock = getattr(holder, "sock", None)
        return None if sock is None else int(sock.fileno())

    def interrupt(self, conn: Any) -> bool:
        holder = getattr(conn, "_socket", None)  # mysql-connector's pure-Python transport
        sock = getattr(holder, "sock", None)
        if sock is None:
            return False
        return shutdown_socket(sock.fileno())

    def is_closed(self, conn: Any) -> bool:
        is_closed = getattr(conn, "is_closed", None)
        if is_closed is not None:  # the C extension's connection: asks libmysqlclient, no I/O
            return bool(is_closed())
        # The pure connection forgets its handshake on close(). It does not notice a lost
        # connection until it is used, and then only raises.
        return conn.connection_id is None

    def ping(self, conn: Any) -> None:
        if isinstance(conn, self._pure_class):
            # cmd_ping() is COM_PING itself (~20 us here); ping() wraps it in checks and
            # rewraps its error, tripling the cost
            conn.cmd_ping()
        else:
            conn.ping()  # the C extension's cmd_ping() is not implemented

    def server_limits(self, conn: Any) -> ServerLimits:
        return mysql_server_limits(conn)

    def is_disconnect(self, exc: BaseException, conn: Any | None = None) -> bool:
        if conn is not None and self.is_closed(conn):
            return True
        if not self._is_mysql_error(exc):
            return False
        if getattr(exc, "errno", None) in MYSQL_DISCONNECT_CODES:
            return True
        cause = exc.__cause__
        if (
            cause is not None
            and self._is_mysql_error(cause)
            and getattr(cause, "errno", None) in MYSQL_DISCONNECT_CODES
        ):
            return True
        return any(text in str(exc) for text in _NOT_AVAILABLE)

    def _is_mysql_error(self, exc: BaseException) -> bool:
        if isinstance(exc, self.module.Error):
            return True
        # the C extension sometimes lets its own exception escape (rollback() on a lost
        # connection raises _mysql_connector.MySQLInterfaceError, not a mysql.connector error)
        cext = sys.modules.get("_mysql_connector")
        return cext is not None and isinstance(exc, cext.MySQLError)

    def status(self, conn: Any) -> TxStatus:
        """``in_transaction`` is kept from OK and EOF packets, but error packets carry no
        status: outside autocommit a first statement that fails (a duplicate key, say)
        leaves a transaction open, holding its locks, while ``in_transaction`` stays False.
        So "not in a transaction" is trusted only in autocommit mode."""
        if self.is_closed(conn):
            return TxStatus.BROKEN
        if conn.unread_result:
            # a result set left unread: the next borrower's first query would fail with
            # "Unread result found"; rollback() reads it first
            return TxStatus.UNKNOWN
        if conn.in_transaction:
            return TxStatus.INTRANS
        if getattr(conn, "_autocommit", None) is True:
            return TxStatus.IDLE
        return TxStatus.UNKNOWN

    def rollback(self, conn: Any) -> None:
        if conn.unread_result:
            conn.consume_results()
        conn.rollback()

    def full_reset(self, conn: Any) -> None:
        """COM_RESET_CONNECTION via ``cmd_reset_connection()``, which also replays the
        connection's setup (character set, autocommit, time zone, sql_mode, init_command).
        ``reset_session()`` would add a ping first and fall back to re-authenticating; here
        a failed reset raises NotImplementedError and the pool reconnects instead."""
        if conn.unread_result:
            conn.consume_results()  # else the reset is refused with "Unread result found"
        if not conn.cmd_reset_connection():
            raise NotImplementedError(
                "mysql-connector could not reset the session (a server without "
                "COM_RESET_CONNECTION, or a lost connection)"
            )

    def get_autocommit(self, conn: Any) -> bool:
        # The autocommit property runs SELECT @@session.autocommit; the value the connection
        # last set is kept without I/O (it misses a raw SQL "SET autocommit").
        value = getattr(conn, "_autocommit", None)
        if isinstance(value, bool):
            return value
        return bool(conn.autocommit)

    def set_autocommit(self, conn: Any, value: bool) -> None:
        conn.autocommit = value

    def begin(self, conn: Any) -> None:
        # Only in autocommit mode: outside it the server begins implicitly, and an explicit
        # START TRANSACTION would silently commit whatever the session had started.
        if self.get_autocommit(conn) and not conn.in_transaction:
            conn.start_transaction()
