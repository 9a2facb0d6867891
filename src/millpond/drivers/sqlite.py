"""The standard library's sqlite3 (``sqlite:///path``).

Connections are opened with ``check_same_thread=False`` (the pool lends a connection to one
thread at a time, but not always the thread that opened it) and from a trivial subclass of
``sqlite3.Connection``, because the plain class cannot be weakly referenced and the pool keeps
weak references to notice connections dropped without being returned.

``sqlite://`` and ``sqlite:///:memory:`` give every pooled connection its own, empty,
private database. For one in-memory database shared by the pool use a named shared-cache
URI: ``sqlite:///file:name?mode=memory&cache=shared``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from millpond.drivers.base import SyncAdapter, TxStatus, load_driver
from millpond.errors import ConfigError

__all__ = ["DEFAULT_BUSY_TIMEOUT", "SqliteAdapter"]

#: seconds a statement waits for another connection's lock before "database is locked".
#: Python's own default is 5 s; a pool makes contention between its connections routine,
#: so wait as long as the pool's default checkout timeout instead of failing early.
DEFAULT_BUSY_TIMEOUT = 30.0

# primary result codes (the low byte of extended codes) after which the handle is not worth
# keeping: I/O error, corrupt or not-a-database file, file cannot be opened. A fresh
# connection re-opens the file, which is what recovers from a replaced or remounted file.
_DISCONNECT_CODES = frozenset({10, 11, 14, 26})

_LEGACY_TRANSACTION_CONTROL = -1  # sqlite3.LEGACY_TRANSACTION_CONTROL on 3.12+


@functools.cache
def _weakrefable(factory: type) -> type:
    """``factory`` itself if its instances take weak references, else a minimal subclass."""
    if factory.__weakrefoffset__:
        return factory
    return type(factory.__name__, (factory,), {"__slots__": ("__weakref__",)})


class SqliteAdapter(SyncAdapter):
    name = "sqlite3"
    extra = None
    # full_reset() does what SQLite allows (see its docstring), but per-connection PRAGMAs
    # and Python-side registrations survive it: that is not a pristine session
    supports_full_reset = False

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        description: str = "sqlite3",
        secrets: Iterable[str] = (),
        module: Any = None,
        isolation_level: str = "",
    ) -> None:
        super().__init__(connect, description=description, secrets=secrets, module=module)
        if module is None:
            self.module = load_driver("sqlite3", None)
        # what leaving autocommit restores; None (autocommit at connect) maps to DEFERRED
        self._isolation_level = isolation_level

    @classmethod
    def from_kwargs(
        cls, kwargs: Mapping[str, Any], *, description: str, secrets: Iterable[str] = ()
    ) -> SqliteAdapter:
        sqlite3 = load_driver("sqlite3", None)
        params = dict(kwargs)
        if "database" not in params:
            raise ConfigError("sqlite3 needs a database: a file path or ':memory:'")
        if params.get("check_same_thread", False):
            raise ConfigError(
                "check_same_thread=True cannot be used with a pool: the pool lends a "
                "connection to whichever thread asks next; leave it unset"
            )
        params["check_same_thread"] = False
        params.setdefault("timeout", DEFAULT_BUSY_TIMEOUT)
        params["factory"] = _weakrefable(params.get("factory") or sqlite3.Connection)
        level = params.get("isolation_level", "")

        def connect() -> Any:
            return sqlite3.connect(**params)

        return cls(
            connect,
            description=description,
            secrets=secrets,
            module=sqlite3,
            isolation_level=level if isinstance(level, str) else "",
        )

    def is_closed(self, conn: Any) -> bool:
        # sqlite3 has no "closed" flag; every attribute access on a closed handle raises
        try:
            conn.in_transaction  # noqa: B018
        except self.module.ProgrammingError:
            return True
        return False

    def ping(self, conn: Any) -> None:
        """There is no server: the one failure a ping can find is a closed handle. Reading
        the file (``PRAGMA schema_version``) would prove little more and would make the
        ping wait behind another connection's write lock."""
        conn.execute("SELECT 1").fetchone()

    def is_disconnect(self, exc: BaseException, conn: Any | None = None) -> bool:
        if conn is not None and self.is_closed(conn):
            return True
        if isinstance(exc, self.module.ProgrammingError):
            return "closed database" in str(exc)
        # sqlite3.Error carries the code; other exceptions (a wrapper's) have none
        code = getattr(exc, "sqlite_errorcode", None)
        return isinstance(code, int) and (code & 0xFF) in _DISCONNECT_CODES

    def status(self, conn: Any) -> TxStatus:
        try:
            in_transaction = conn.in_transaction
        except self.module.ProgrammingError:
            return TxStatus.BROKEN
        return TxStatus.INTRANS if in_transaction else TxStatus.IDLE

    def full_reset(self, conn: Any) -> None:
        """Roll back, detach attached databases, drop temporary tables, views and triggers.

        Not reset, because SQLite cannot enumerate or undo them: PRAGMAs set on the
        connection (``foreign_keys``, ``cache_size``, ``recursive_triggers``, ...), functions,
        aggregates, collations, authorizers and trace or progress handlers registered from
        Python, and the ``row_factory``/``text_factory`` attributes. Opening a new connection
        costs microseconds, so a pool that needs a pristine SQLite session should reconnect.
        """
        conn.rollback()
        for _seq, schema, _file in conn.execute("PRAGMA database_list").fetchall():
            if schema not in ("main", "temp"):
                conn.execute(f"DETACH DATABASE {_quote(schema)}")
        temp_objects = conn.execute(
            "SELECT type, name FROM temp.sqlite_master WHERE type IN ('view', 'trigger', 'table')"
        ).fetchall()
        # views and triggers first: they may depend on the tables
        order = {"view": 0, "trigger": 1, "table": 2}
        for kind, name in sorted(temp_objects, key=lambda row: order[row[0]]):
            conn.execute(f"DROP {kind.upper()} IF EXISTS temp.{_quote(name)}")
        if conn.in_transaction:  # Python 3.12's autocommit=False keeps one open at all times
            conn.commit()

    def get_autocommit(self, conn: Any) -> bool:
        mode = getattr(conn, "autocommit", _LEGACY_TRANSACTION_CONTROL)
        if mode != _LEGACY_TRANSACTION_CONTROL:
            return bool(mode)
        return conn.isolation_level is None

    def set_autocommit(self, conn: Any, value: bool) -> None:
        if value == self.get_autocommit(conn):
            return
        # sqlite3 commits an open transaction when autocommit is switched on; refuse, as
        # psycopg does, rather than commit work nobody asked to commit
        if conn.in_transaction:
            raise self.module.ProgrammingError(
                "cannot change autocommit inside a transaction: sqlite3 would commit it"
            )
        if getattr(conn, "autocommit", _LEGACY_TRANSACTION_CONTROL) != _LEGACY_TRANSACTION_CONTROL:
            conn.autocommit = value
        else:
            conn.isolation_level = None if value else self._isolation_level

    def begin(self, conn: Any) -> None:
        # In its legacy mode sqlite3 begins implicitly only before INSERT/UPDATE/DELETE, so
        # a transaction of reads would see other connections' commits between statements:
        # begin explicitly whenever none is open, with the connection's own locking mode.
        if conn.in_transaction:
            return
        level = conn.isolation_level or ""
        conn.execute(f"BEGIN {level}" if level else "BEGIN")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
