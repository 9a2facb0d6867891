"""mysqlclient, imported as ``MySQLdb`` (``mysql+mysqldb://``, ``mariadb+mysqldb://``).

mysqlclient wraps the C client library (libmariadb or libmysqlclient) and exposes less of it
than the adapter needs: neither the server status flags nor ``mysql_reset_connection()``. Both
are reached through ctypes, on the ``MYSQL*`` handle mysqlclient hands out
(``_get_native_connection()``), in the library it is linked against:

* transaction status from ``mariadb_get_info(MARIADB_CONNECTION_SERVER_STATUS)``: no I/O,
  about a microsecond. libmysqlclient has no such call; there every return is UNKNOWN and so
  costs a ROLLBACK (one round trip).
* ``full_reset`` is ``mysql_reset_connection()`` (COM_RESET_CONNECTION, in both libraries),
  then the connection's setup replayed. Without the call the pool reconnects instead.
"""

from __future__ import annotations

import ctypes
import importlib
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from millpond.drivers.base import (
    ConnectParams,
    SyncAdapter,
    TxStatus,
    load_driver,
    shutdown_socket,
)
from millpond.drivers.limits import ServerLimits, mysql_server_limits
from millpond.drivers.pymysql import MYSQL_DISCONNECT_CODES

__all__ = ["MySQLdbAdapter"]

_SERVER_STATUS_IN_TRANS = 0x0001
_SERVER_STATUS_AUTOCOMMIT = 0x0002
_MARIADB_CONNECTION_SERVER_STATUS = 30  # enum mariadb_value in mariadb's mysql.h
_CAPSULE_NAME = b"_mysql.connection.native_connection"


class _Native:
    """The C calls mysqlclient does not wrap, or None each where the library lacks it."""

    def __init__(self, mysql_module: Any) -> None:
        self.get_info: Callable[..., int] | None = None
        self.reset: Callable[[int], int] | None = None
        try:
            lib = ctypes.CDLL(mysql_module.__file__)
        except OSError:  # pragma: no cover - a statically linked or unusual build
            return
        get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
        get_pointer.restype = ctypes.c_void_p
        get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        self._pointer = get_pointer
        # dlsym on the extension's handle also searches the client library it links
        get_info = getattr(lib, "mariadb_get_info", None)
        if get_info is not None:
            get_info.restype = ctypes.c_ubyte  # my_bool
            get_info.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            self.get_info = get_info
        reset = getattr(lib, "mysql_reset_connection", None)
        if reset is not None:
            reset.restype = ctypes.c_int
            reset.argtypes = [ctypes.c_void_p]
            self.reset = reset

    def handle(self, conn: Any) -> int:
        pointer: int = self._pointer(conn._get_native_connection(), _CAPSULE_NAME)
        return pointer

    def server_status(self, conn: Any) -> int | None:
        if self.get_info is None:
            return None
        value = ctypes.c_uint(0)
        if self.get_info(self.handle(conn), _MARIADB_CONNECTION_SERVER_STATUS, ctypes.byref(value)):
            return None  # my_bool 1: the call failed
        return value.value


_connection_class: type | None = None


def _mysqldb_connection_class(mysqldb: Any) -> type:
    """MySQLdb's Connection, remembering the unbuffered cursors (SSCursor and kin) it made.

    An unbuffered cursor left unread keeps the connection busy: every later query fails with
    "Commands out of sync" (2014), and the C library gives no way to see that without I/O.
    So the connection keeps weak references to such cursors, and the adapter closes them
    (reading what is left) before the next borrower can meet them.
    """
    global _connection_class
    if _connection_class is None:
        base: Any = importlib.import_module("MySQLdb.connections").Connection
        unbuffered = importlib.import_module("MySQLdb.cursors").CursorUseResultMixIn

        class Connection(base):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self._millpond_unbuffered: weakref.WeakSet[Any] = weakref.WeakSet()

            def cursor(self, cursorclass: Any = None) -> Any:
                cur = super().cursor(cursorclass)
                if isinstance(cur, unbuffered):
                    self._millpond_unbuffered.add(cur)
                return cur

        _connection_class = Connection
    return _connection_class


def _close_unbuffered(conn: Any) -> None:
    cursors = getattr(conn, "_millpond_unbuffered", None)
    if cursors:
        for cur in list(cursors):
            cur.close()  # reads and drops the rows left
        cursors.clear()


class MySQLdbAdapter(SyncAdapter):
    name = "mysqlclient"
    extra = "mysqlclient"
    supports_full_reset = True

    def __init__(self, *args: Any, setup: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.module is None:
            self.module = load_driver("MySQLdb", self.extra)
        self._native = _Native(self.module._mysql)
        # what connect() set up, replayed after COM_RESET_CONNECTION resets the session
        self._setup = dict(setup or {})

    @classmethod
    def from_kwargs(
        cls, kwargs: Mapping[str, Any], *, description: str, secrets: Iterable[str] = ()
    ) -> MySQLdbAdapter:
        mysqldb = load_driver("MySQLdb", cls.extra)
        params = ConnectParams(kwargs, secrets)
        connect_function = _mysqldb_connection_class(mysqldb)

        def connect() -> Any:
            conn = params.call(connect_function)
            # the negotiated character set, before any SET NAMES can change what it reports
            conn._millpond_charset = conn.character_set_name()
            # fileno() refuses to run while another thread uses the connection, which is
            # exactly when interrupt() needs it
            conn._millpond_fd = conn.fileno()
            return conn

        setup = {
            k: kwargs[k]
            for k in ("charset", "collation", "sql_mode", "init_command")
            if kwargs.get(k)
        }
        return cls(connect, description=description, secrets=secrets, module=mysqldb, setup=setup)

    def close(self, conn: Any) -> None:
        if conn.open:  # closing twice raises
            conn.close()

    def socket_fd(self, conn: Any) -> int | None:
        fd = getattr(conn, "_millpond_fd", None)
        if fd is None:
            return None
        return int(fd) if conn.open else -1

    def interrupt(self, conn: Any) -> bool:
        fd = getattr(conn, "_millpond_fd", None)
        if fd is None or not conn.open:
            return False
        return shutdown_socket(fd)

    def is_closed(self, conn: Any) -> bool:
        # ``open`` turns false on close() only: a lost connection shows when it is used
        return not conn.open

    def ping(self, conn: Any) -> None:
        conn.ping()  # mysql_ping(): COM_PING, one round trip, no transaction

    def server_limits(self, conn: Any) -> ServerLimits:
        return mysql_server_limits(conn)

    def is_disconnect(self, exc: BaseException, conn: Any | None = None) -> bool:
        if conn is not None and not conn.open:
            return True
        if isinstance(exc, self.module.InterfaceError):
            return True  # raised for a connection already closed
        if isinstance(exc, self.module.OperationalError):
            return bool(exc.args) and exc.args[0] in MYSQL_DISCONNECT_CODES
        return False

    def status(self, conn: Any) -> TxStatus:
        """From the server status flags, trusted only where they can be (as for PyMySQL):
        error packets carry no status, so outside autocommit a first statement that fails
        leaves a transaction open that the flags never show."""
        if not conn.open:
            return TxStatus.BROKEN
        if getattr(conn, "_millpond_unbuffered", None):
            return TxStatus.UNKNOWN  # an unbuffered cursor may hold rows: rollback() reads them
        flags = self._native.server_status(conn)
        if flags is None:
            return TxStatus.UNKNOWN
        if flags & _SERVER_STATUS_IN_TRANS:
            return TxStatus.INTRANS
        if flags & _SERVER_STATUS_AUTOCOMMIT:
            return TxStatus.IDLE
        return TxStatus.UNKNOWN

    def full_reset(self, conn: Any) -> None:
        """COM_RESET_CONNECTION: rolls back and clears user and session variables, temp
        tables, prepared statements, table and named locks; then the character set,
        ``sql_mode`` and ``init_command`` connect() set up, and the autocommit mode. Raises
        NotImplementedError where the call is unavailable, so the pool reconnects instead."""
        reset = self._native.reset
        if reset is None:
            raise NotImplementedError("this client library has no mysql_reset_connection()")
        autocommit = bool(conn.get_autocommit())
        _close_unbuffered(conn)
        _discard_results(conn)
        if reset(self._native.handle(conn)) != 0:
            raise NotImplementedError(
                "mysql_reset_connection() failed (a server without COM_RESET_CONNECTION, "
                "which needs MySQL 5.7.3 or MariaDB 10.2.4, or a lost connection)"
            )
        setup = self._setup
        charset = setup.get("charset") or getattr(conn, "_millpond_charset", "utf8mb4")
        names = f"SET NAMES {charset}"
        if setup.get("collation"):
            names += f" COLLATE {setup['collation']}"
        conn.query(names)
        if setup.get("sql_mode"):
            conn.query(f"SET sql_mode='{setup['sql_mode']}'")
        if setup.get("init_command"):
            conn.query(setup["init_command"])
            _discard_results(conn)
        if bool(conn.get_autocommit()) != autocommit:
            conn.autocommit(autocommit)

    def rollback(self, conn: Any) -> None:
        _close_unbuffered(conn)
        conn.rollback()

    def get_autocommit(self, conn: Any) -> bool:
        return bool(conn.get_autocommit())  # reads the status flags: no I/O

    def set_autocommit(self, conn: Any, value: bool) -> None:
        conn.autocommit(value)

    def begin(self, conn: Any) -> None:
        # Only in autocommit mode: outside it the server begins implicitly, and an explicit
        # BEGIN would silently commit whatever the session had started.
        if conn.get_autocommit() and self.status(conn) is not TxStatus.INTRANS:
            conn.begin()


def _discard_results(conn: Any) -> None:
    """Read and drop what the last statement left unread (else: "commands out of sync")."""
    conn.discard_result()
