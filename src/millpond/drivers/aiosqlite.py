"""aiosqlite 0.22+ (``sqlite+aiosqlite:///path``; :meth:`AiosqliteAdapter.terminate` needs the
``stop()`` that 0.22 added).

aiosqlite runs each connection's sqlite3 handle in a thread of its own and hands statements
to it through a queue. The sqlite3 handle is opened with ``check_same_thread=False``: the
statements still all run in that thread, but the attributes aiosqlite exposes on the
connection (``isolation_level``, ``row_factory``) are read and set from the event loop's
thread, which sqlite3's thread check refuses for setters. :meth:`AiosqliteAdapter.status`
reads ``in_transaction`` the same way: an attribute read, no hop to the thread.

``sqlite+aiosqlite://`` and ``sqlite+aiosqlite:///:memory:`` give every pooled connection its
own, empty, private database; use a named shared-cache URI
(``sqlite+aiosqlite:///file:name?mode=memory&cache=shared``) for one shared by the pool.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from millpond.drivers.async_base import AsyncAdapter
from millpond.drivers.base import TxStatus, load_driver
from millpond.drivers.sqlite import DEFAULT_BUSY_TIMEOUT
from millpond.errors import ConfigError

__all__ = ["AiosqliteAdapter"]

# primary result codes after which the handle is not worth keeping: I/O error, corrupt or
# not-a-database file, cannot open the file (a fresh connection re-opens it)
_DISCONNECT_CODES = frozenset({10, 11, 14, 26})

_MISSING = object()

# what aiosqlite raises once its connection is closed or its thread stopped
_CLOSED_MESSAGES = ("Connection closed", "no active connection")


class AiosqliteAdapter(AsyncAdapter):
    name = "aiosqlite"
    extra = "aiosqlite"
    # full_reset() does what SQLite allows, but PRAGMAs and functions registered from
    # Python survive it (see the synchronous sqlite3 adapter): not a pristine session
    supports_full_reset = False

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        *,
        description: str = "aiosqlite",
        secrets: Iterable[str] = (),
        isolation_level: str = "",
    ) -> None:
        super().__init__(connect, description=description, secrets=secrets)
        self.sqlite3 = load_driver("sqlite3", None)
        # what leaving autocommit restores; None (autocommit at connect) maps to DEFERRED
        self._isolation_level = isolation_level
        # connections terminate() stopped -> the future of their thread's exit
        self._stopping: weakref.WeakKeyDictionary[Any, asyncio.Future[Any]] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_kwargs(
        cls, kwargs: Mapping[str, Any], *, description: str, secrets: Iterable[str] = ()
    ) -> AiosqliteAdapter:
        aiosqlite = load_driver("aiosqlite", cls.extra)
        params = dict(kwargs)
        database = params.pop("database", None)
        if database is None:
            raise ConfigError("aiosqlite needs a database: a file path or ':memory:'")
        if params.get("check_same_thread", False):
            raise ConfigError(
                "check_same_thread=True cannot be used with aiosqlite in a pool: the event "
                "loop's thread reads the connection's transaction state; leave it unset"
            )
        if "autocommit" in params:
            # Python 3.12's sqlite3 autocommit attribute: aiosqlite does not expose it, so
            # the pool could neither read nor restore it
            raise ConfigError(
                "aiosqlite does not support sqlite3's autocommit= parameter; use "
                "isolation_level=None for autocommit mode"
            )
        params["check_same_thread"] = False
        params.setdefault("timeout", DEFAULT_BUSY_TIMEOUT)
        level = params.get("isolation_level", "")
        connect_async = aiosqlite.connect

        async def connect() -> Any:
            return await connect_async(database, **params)

        return cls(
            connect,
            description=description,
            secrets=secrets,
            isolation_level=level if isinstance(level, str) else "",
        )

    # -- opening and closing ---------------------------------------------------------------

    async def close(self, conn: Any) -> None:
        stopping = self._stopping.pop(conn, None)
        if stopping is not None:
            # terminate() queued the close and the thread's exit; wait for them here, so the
            # thread is gone before the loop it reports to may be (aiosqlite's own close()
            # would wait for an answer from the stopped thread forever)
            await stopping
        elif not self.is_closed(conn):
            await conn.close()  # closes the handle in its thread, then stops the thread

    def terminate(self, conn: Any) -> None:
        """Interrupt whatever statement the connection's thread is running, and queue the
        close and the thread's exit behind it. The handle is closed a moment later, in its
        own thread; the connection refuses new statements at once."""
        if not getattr(conn, "_running", True):
            return  # closed, or already stopping
        raw = getattr(conn, "_connection", None)
        if raw is not None:
            raw.interrupt()  # the one sqlite3 call meant to be made from another thread
        done = conn.stop()
        if isinstance(done, asyncio.Future):
            # close() awaits it, if the pool gets that far; retrieve a failure so that
            # asyncio does not log it as never retrieved
            done.add_done_callback(_consume)
            self._stopping[conn] = done

    def is_closed(self, conn: Any) -> bool:
        # _running drops as soon as stop() or close() is called, _connection once the
        # handle is closed; aiosqlite has no public flag
        return not getattr(conn, "_running", True) or getattr(conn, "_connection", _MISSING) is None

    # -- health ----------------------------------------------------------------------------

    async def ping(self, conn: Any) -> None:
        """One hop to the connection's thread and back: the one failure it can find is a
        stopped thread or a closed handle (there is no server). Reading the file would also
        wait behind another connection's write lock."""
        await conn.execute_fetchall("SELECT 1")

    def is_disconnect(self, exc: BaseException, conn: Any | None = None) -> bool:
        if conn is not None and self.is_closed(conn):
            return True
        if isinstance(exc, ValueError):
            return str(exc) in _CLOSED_MESSAGES
        if isinstance(exc, self.sqlite3.ProgrammingError):
            return "closed database" in str(exc)
        code = getattr(exc, "sqlite_errorcode", None)  # sqlite3.Error only
        return isinstance(code, int) and (code & 0xFF) in _DISCONNECT_CODES

    # -- session state ---------------------------------------------------------------------

    def status(self, conn: Any) -> TxStatus:
        if not getattr(conn, "_running", True):
            return TxStatus.BROKEN
        try:
            in_transaction = conn.in_transaction
        except (ValueError, self.sqlite3.ProgrammingError):  # no handle, or a closed one
            return TxStatus.BROKEN
        return TxStatus.INTRANS if in_transaction else TxStatus.IDLE

    async def rollback(self, conn: Any) -> None:
        # in_transaction is exact here, and every call to the driver is a hop to its thread
        if conn.in_transaction:
            await conn.rollback()

    async def full_reset(self, conn: Any) -> None:
        """Roll back, detach attached databases, drop temporary tables, views and triggers;
        up to four hops to the connection's thread. PRAGMAs and Python-side registrations
        survive, as with the synchronous sqlite3 adapter."""
        await conn.rollback()
        statements = [
            f"DETACH DATABASE {_quote(schema)}"
            for _seq, schema, _file in await conn.execute_fetchall("PRAGMA database_list")
            if schema not in ("main", "temp")
        ]
        temp_objects = await conn.execute_fetchall(
            "SELECT type, name FROM temp.sqlite_master WHERE type IN ('view', 'trigger', 'table')"
        )
        order = {"view": 0, "trigger": 1, "table": 2}  # views and triggers depend on tables
        for kind, name in sorted(temp_objects, key=lambda row: order[row[0]]):
            statements.append(f"DROP {kind.upper()} IF EXISTS temp.{_quote(name)}")
        if statements:
            # one hop for them all; executescript commits first, and nothing is open
            await conn.executescript(";\n".join(statements) + ";")

    def get_autocommit(self, conn: Any) -> bool:
        return conn.isolation_level is None

    async def set_autocommit(self, conn: Any, value: bool) -> None:
        if value == (conn.isolation_level is None):
            return
        # sqlite3 commits an open transaction when autocommit is switched on; refuse, as
        # psycopg does, rather than commit work nobody asked to commit
        if conn.in_transaction:
            raise self.sqlite3.ProgrammingError(
                "cannot change autocommit inside a transaction: sqlite3 would commit it"
            )
        conn.isolation_level = None if value else self._isolation_level

    async def begin(self, conn: Any) -> Any:
        # sqlite3's legacy mode begins implicitly only before INSERT/UPDATE/DELETE, so a
        # transaction of reads would see other connections' commits between statements:
        # begin explicitly whenever none is open, in the connection's own locking mode
        if not conn.in_transaction:
            level = conn.isolation_level or ""
            await conn.execute_fetchall(f"BEGIN {level}" if level else "BEGIN")
        return None

    async def commit(self, conn: Any, token: Any = None) -> None:
        await conn.commit()

    async def rollback_transaction(self, conn: Any, token: Any = None) -> None:
        await conn.rollback()


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
