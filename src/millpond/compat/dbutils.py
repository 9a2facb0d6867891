"""DBUtils' ``PooledDB`` and ``PersistentDB`` on millpond: change the import, keep the code.

::

    from millpond.compat.dbutils import PooledDB   # was: from dbutils.pooled_db import PooledDB

    pool = PooledDB(psycopg2, maxconnections=5, host="127.0.0.1", dbname="test")
    db = pool.connection()            # a proxy, as with DBUtils
    cur = db.cursor(); cur.execute("SELECT 1"); cur.fetchall()
    db.close()                        # back to the pool (so does ``del db``)

As in DBUtils: ``creator`` is a DB-API 2 module or a function returning connections, and every
other argument keeps its meaning (``mincached`` opened at start, ``maxcached`` idle kept,
``maxshared`` shared connections for modules with threadsafety > 1, ``maxconnections`` with
``blocking`` or ``TooManyConnectionsError``, ``maxusage`` operations before a reconnect,
``setsession`` run on every new connection, ``failures``/``isfatal``/``ping`` for the
"hardened" connections, which reconnect and retry a statement when the connection is lost
outside a transaction). Connections come wrapped, as DBUtils wraps them: the proxy's ``close()``
returns the connection, after which the proxy raises ``InvalidConnectionError``.

What millpond adds: an idle connection is validated before it is lent, with the driver's own
cheap ping (DBUtils pings only drivers that have a ``ping()`` method, which psycopg2 and sqlite3
lack), every connection goes back rolled back, a cursor refuses use once its connection went
back to the pool (``InvalidCursorError``), the pool is fork-safe, and ``stats()``.
``pool_options=`` passes millpond.Pool options: ``timeout`` bounds what ``blocking=True`` waits,
``leak_timeout`` reports connections never closed, and so on.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import millpond
from millpond.compat import (
    CONNECT_BUDGET,
    borrow,
    check_pool_options,
    inherited,
    on_fork,
    open_pool,
    reclaimer,
    wait_budget,
    watch_connects,
)
from millpond.drivers import SyncAdapter
from millpond.drivers.url import resolve
from millpond.errors import PoolClosed, PoolTimeout, TooManyWaiters


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:  # DBUtils itself is optional: the layer only borrows its error classes
        return None


_pooled: Any = _import("dbutils.pooled_db")
_persistent: Any = _import("dbutils.persistent_db")
_steady: Any = _import("dbutils.steady_db")


def _peer(module: Any, name: str) -> Any:
    """DBUtils' exception class ``name``, or a stand-in when DBUtils is not installed (one
    per name, so that no class lists the same base twice)."""
    cls = getattr(module, name, None) if module is not None else None
    if cls is None:
        cls = type(f"_Absent{name}", (Exception,), {"__module__": __name__})
    return cls


__all__ = [
    "InvalidConnection",
    "InvalidConnectionError",
    "InvalidCursorError",
    "NotSupportedError",
    "PersistentDB",
    "PersistentDBError",
    "PooledDB",
    "PooledDBError",
    "PooledDedicatedDBConnection",
    "PooledSharedDBConnection",
    "SharedDBConnection",
    "SteadyDBConnection",
    "SteadyDBCursor",
    "SteadyDBError",
    "TooManyConnections",
    "TooManyConnectionsError",
]

__version__: str = getattr(_import("dbutils"), "__version__", millpond.__version__)


class PooledDBError(millpond.PoolError, _peer(_pooled, "PooledDBError")):  # type: ignore[misc]
    """General PooledDB error (DBUtils' own where it is installed, and a millpond error)."""


class InvalidConnectionError(PooledDBError, _peer(_pooled, "InvalidConnectionError")):  # type: ignore[misc]
    """Database connection is invalid (the proxy was closed)."""


class TooManyConnectionsError(PooledDBError, _peer(_pooled, "TooManyConnectionsError")):  # type: ignore[misc]
    """Too many database connections were opened."""


class PersistentDBError(millpond.PoolError, _peer(_persistent, "PersistentDBError")):  # type: ignore[misc]
    """General PersistentDB error."""


class NotSupportedError(
    PooledDBError,
    _peer(_pooled, "NotSupportedError"),  # type: ignore[misc]
    _peer(_persistent, "NotSupportedError"),  # type: ignore[misc]
):
    """DB-API module not supported (not thread-safe): DBUtils' pooled_db and persistent_db
    errors of that name in one class."""


class SteadyDBError(millpond.PoolError, _peer(_steady, "SteadyDBError")):  # type: ignore[misc]
    """General SteadyDB error."""


class InvalidCursorError(SteadyDBError, _peer(_steady, "InvalidCursorError")):  # type: ignore[misc]
    """Database cursor is invalid."""


# DBUtils' deprecated alias names
InvalidConnection = InvalidConnectionError
TooManyConnections = TooManyConnectionsError
InvalidCursor = InvalidCursorError

_PING_ERROR = (
    "'ping' must be an integer, an SQL statement, a callable,"
    " or a tuple with an integer and one of the latter."
)
#: the engine needs a bound; DBUtils' maxconnections=0 means none
_UNLIMITED = 1 << 30

# positional parameters of the connect() of drivers that take any, so that the driver's own
# millpond adapter (its ping, transaction status, reset) can be used
_POSITIONAL: Mapping[str, tuple[str, ...]] = {
    "sqlite3": (
        "database", "timeout", "detect_types", "isolation_level", "check_same_thread",
        "factory", "cached_statements", "uri",
    ),
    "psycopg2": ("dsn", "connection_factory", "cursor_factory"),
    "psycopg": ("conninfo",),
    "pymysql": (),
    "mysql.connector": (),
}  # fmt: skip


# -- the creator --------------------------------------------------------------------------------


def _threadsafety(creator: Any) -> int:
    """DBUtils' reading of a creator's thread safety: a module must declare it, a plain
    function is taken as 1."""
    value = getattr(creator, "threadsafety", None)
    if value is None:
        value = getattr(getattr(creator, "dbapi", None), "threadsafety", None)
    if value is None:
        return 0 if callable(getattr(creator, "connect", None)) else 1
    return int(value)


def _dbapi_of(creator: Any) -> Any:
    """The DB-API module behind ``creator``, found where DBUtils looks for it (None if not)."""
    if callable(getattr(creator, "connect", None)):
        dbapi = getattr(creator, "dbapi", None)
        return dbapi if callable(getattr(dbapi, "connect", None)) else creator
    dbapi = getattr(creator, "dbapi", None)
    if dbapi is not None:
        return dbapi
    module = sys.modules.get(getattr(creator, "__module__", None) or "")
    return module if getattr(module, "connect", None) is creator else None


def _adapter_for(creator: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SyncAdapter:
    connect = getattr(creator, "connect", None)
    if callable(connect):
        name = str(getattr(creator, "__name__", ""))
        names = _POSITIONAL.get(name)
        if names is not None and len(args) <= len(names):
            params = dict(kwargs)
            for key, value in zip(names, args, strict=False):
                if key in params:
                    raise TypeError(f"connect() got multiple values for argument {key!r}")
                params[key] = value
            if name == "sqlite3":
                # sqlite3's own busy timeout unless given (millpond's default is longer), and
                # no thread check: the engine opens connections on its worker threads
                params.setdefault("timeout", 5.0)
                params.pop("check_same_thread", None)
            return resolve(creator, params)
        return SyncAdapter(
            functools.partial(connect, *args, **kwargs),
            description=f"{name}.connect",
            module=creator,
        )
    if not callable(creator):
        raise TypeError(f"{creator!r} is not a connection provider.")
    name = getattr(creator, "__qualname__", None) or type(creator).__name__
    return SyncAdapter(
        functools.partial(creator, *args, **kwargs),
        description=f"callable {name}",
        module=_dbapi_of(creator),
    )


def _parse_ping(ping: Any) -> tuple[int, Callable[[Any], Any] | None]:
    """DBUtils' ``ping``: a flag, an SQL statement, a callable, or (flag, statement/callable)."""
    pinger: Any = None
    if isinstance(ping, tuple):
        try:
            ping, pinger = ping
        except ValueError:
            raise TypeError(_PING_ERROR) from None
    elif isinstance(ping, str) or callable(ping):
        ping, pinger = 1, ping
    if isinstance(pinger, str):
        pinger = functools.partial(_sql_ping, pinger)
    elif pinger is not None and not callable(pinger):
        raise TypeError(_PING_ERROR)
    return (ping if isinstance(ping, int) else 0), pinger


def _sql_ping(sql: str, con: Any) -> None:
    cursor = con.cursor()
    try:
        cursor.execute(sql)
    finally:
        with contextlib.suppress(Exception):
            cursor.close()


def _run_setsession(statements: Sequence[str], con: Any) -> None:
    cursor = con.cursor()
    for sql in statements:
        cursor.execute(sql)
    cursor.close()


def _failures_of(source: Any) -> tuple[type[BaseException], ...] | None:
    """DBUtils' default failures, from a DB-API module (or a connection that carries the
    exception classes as attributes)."""
    try:
        return (source.OperationalError, source.InterfaceError, source.InternalError)
    except AttributeError:
        return None


def _module_of(con: Any) -> Any:
    """The DB-API module a connection comes from, as DBUtils looks for it."""
    for klass in type(con).__mro__:
        name = klass.__module__
        while name:
            module = sys.modules.get(name)
            if callable(getattr(module, "connect", None)):
                return module
            name = name.rpartition(".")[0]
    return None


class _Engine:
    """What PooledDB and PersistentDB share: the engine pool, and the settings and bookkeeping
    of DBUtils' "steady" connections (usage counts, failures, ping)."""

    def __init__(
        self,
        creator: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        maxusage: Any,
        setsession: Sequence[str] | None,
        failures: Any,
        ping: Any,
        isfatal: Any,
        pool_options: Mapping[str, Any] | None,
        min_size: int,
        max_size: int,
    ) -> None:
        # DBUtils checks these when its first connection is made; here at once
        if maxusage is None:
            maxusage = 0
        if not isinstance(maxusage, int):
            raise TypeError("'maxusage' must be an integer value.")
        if (
            failures is not None
            and not isinstance(failures, tuple)
            and not issubclass(failures, Exception)
        ):
            raise TypeError("'failures' must be a tuple of exceptions.")
        if isfatal is not None and not callable(isfatal):
            raise TypeError("'isfatal' must be a callable.")
        self.maxusage: int = maxusage
        self.isfatal: Callable[[BaseException], bool] | None = isfatal
        self.ping, self.pinger = _parse_ping(ping)
        self.creator = creator
        self.threadsafety = _threadsafety(creator)
        self.dbapi = _dbapi_of(creator)
        self.failures: Any = failures if failures is not None else _failures_of(self.dbapi)
        self.options = check_pool_options(pool_options)
        self.budget = float(self.options.get("timeout", CONNECT_BUDGET))
        self.wait = wait_budget(self.options)
        self.max_size = max_size
        self.adapter = _adapter_for(creator, args, dict(kwargs))
        self.watch = watch_connects(self.adapter)
        self.settings: dict[str, Any] = {
            "reset": "rollback",
            # DBUtils' flag 1 checks a connection each time it leaves the pool
            "pre_ping": bool(self.ping & 1),
        }
        if setsession:
            self.settings["configure"] = functools.partial(_run_setsession, list(setsession))
        self._lock = threading.Lock()
        # DBUtils counts operations per connection, across checkouts
        self.usage: dict[int, tuple[Any, int]] = {}
        self.pool: millpond.Pool | None = open_pool(
            self.adapter,
            min_size=min(min_size, max_size),
            max_size=max_size,
            keep_min_size=False,
            options=self.options,
            **self.settings,
        )
        reclaimer.start()

    # -- the engine pool ---------------------------------------------------------------------

    def current(self) -> millpond.Pool:
        """The engine pool; after ``close()`` a new one, as DBUtils' pool keeps working."""
        with self._lock:
            pool = self.pool
            if pool is None:
                pool = self.pool = open_pool(
                    self.adapter,
                    min_size=0,
                    max_size=self.max_size,
                    keep_min_size=False,
                    options=self.options,
                    **self.settings,
                )
            return pool

    def borrow(self, *, growing: bool, wait: float | None = None) -> tuple[Any, millpond.Pool]:
        pool = self.current()
        budget = self.budget if growing or wait is None else wait
        return borrow(pool, self.watch, budget, growing=growing), pool

    def give_back(self, con: Any, lender: millpond.Pool, keep: bool) -> None:
        if keep:
            lender.putconn(con)  # rolled back there
            return
        # closed here, not by the engine's worker, as DBUtils closes it before returning
        with contextlib.suppress(Exception):
            con.close()
        with contextlib.suppress(millpond.PoolError):
            lender.putconn(con, discard=True)

    def idle(self) -> int:
        pool = self.pool
        return 0 if pool is None else pool.stats().idle

    def close_idle(self) -> None:
        """Close the idle connections now and keep the pool working (DBUtils' ``close()``)."""
        with self._lock:
            pool = self.pool
            if pool is None:
                return
            lent = pool.stats().in_use
            if not lent:
                self.pool = None
        if not lent:
            pool.close()  # nothing lent: end its threads too; a later checkout opens anew
            return
        # shrinking to what is lent closes every idle connection at once; growing back keeps
        # the lent ones when they return, as DBUtils caches them
        pool.resize(min_size=0, max_size=lent)
        pool.resize(max_size=self.max_size)

    # -- steady connections -------------------------------------------------------------------

    def usage_of(self, con: Any) -> int:
        entry = self.usage.get(id(con))
        return entry[1] if entry is not None and entry[0] is con else 0

    def record_usage(self, con: Any, usage: int) -> None:
        if not self.maxusage:
            return
        with self._lock:
            # keyed by id, holding the connection so the id cannot be reused meanwhile; pruned
            # of connections the engine has closed whenever it grows past the pool's reach
            self.usage[id(con)] = (con, usage)
            if len(self.usage) > 2 * (self.max_size if self.max_size < _UNLIMITED else 64):
                self.usage = {
                    k: v for k, v in self.usage.items() if not self.adapter.is_closed(v[0])
                }

    def forget_usage(self, con: Any) -> None:
        with self._lock:
            self.usage.pop(id(con), None)

    def learn(self, con: Any) -> None:
        """What DBUtils finds out from a connection when the creator does not say: the DB-API
        module (the connection's class modules and their packages), and the failures."""
        if self.dbapi is None:
            self.dbapi = _module_of(con)
        if self.failures is None:
            failures = _failures_of(self.dbapi) or _failures_of(con)
            if failures is None:
                raise AttributeError(
                    "Could not determine failure exceptions (please set failures or creator.dbapi)."
                )
            self.failures = failures

    @property
    def steady_threadsafety(self) -> int:
        """A steady connection's ``threadsafety()``: the creator's, else its module's."""
        value = getattr(self.creator, "threadsafety", None)
        if value is None:
            value = getattr(self.dbapi, "threadsafety", None)
        return self.threadsafety if value is None else int(value)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        inherited.append(self.usage)
        self.usage = {}

    def steady(
        self, con: Any, lender: millpond.Pool, *, closeable: bool, persistent: bool
    ) -> SteadyDBConnection:
        try:
            self.learn(con)
        except AttributeError:
            self.give_back(con, lender, keep=False)
            raise
        return SteadyDBConnection(self, con, lender, closeable=closeable, persistent=persistent)

    def reopen(self, steady: SteadyDBConnection) -> BaseException | None:
        """Replace the steady connection's driver connection (lost, or used ``maxusage``
        times); the error if no new one could be had."""
        old, lender = steady._con, steady._lender
        steady._con = None
        if old is not None and steady._pid != os.getpid():
            inherited.append(old)  # the parent process's: its socket is not ours to close
        elif old is not None and lender is not None:
            self.forget_usage(old)
            self.give_back(old, lender, keep=False)
        try:
            # the slot just freed is this caller's: a connect, not a queue
            con, pool = self.borrow(growing=True)
        except Exception as exc:
            return exc
        steady._store(con, pool, self.usage_of(con))
        return None


# -- steady connections and cursors ------------------------------------------------------------


class SteadyDBConnection:
    """DBUtils' "hardened" connection around the driver connection millpond lent.

    Outside a transaction (``begin()``), a statement that fails with one of ``failures``
    (a lost connection) is retried once on a new connection; after ``maxusage`` operations
    the connection is replaced. Inside one, errors go to the application.
    """

    def __init__(
        self,
        engine: _Engine,
        con: Any,
        lender: millpond.Pool,
        *,
        closeable: bool,
        persistent: bool,
    ) -> None:
        self._engine = engine
        self._closeable = closeable
        self._persistent = persistent
        self._released = False
        self._closed = False
        self._con: Any = None
        self._lender: millpond.Pool | None = None
        self._transaction = False
        self._usage = 0
        self._store(con, lender, engine.usage_of(con))

    def _store(self, con: Any, lender: millpond.Pool, usage: int) -> None:
        self._pid = os.getpid()
        self._con = con
        self._lender = lender
        self._transaction = False
        self._closed = False
        self._usage = usage

    def _release(self) -> tuple[Any, millpond.Pool | None]:
        """Give up the driver connection (to go back to the pool); this object is spent."""
        con, lender = self._con, self._lender
        self._released = True
        self._con = self._lender = None
        self._transaction = False
        if con is not None and self._pid != os.getpid():
            inherited.append(con)  # lent to the parent process: its socket is not ours
            return None, None
        if con is not None:
            self._engine.record_usage(con, self._usage)
        return con, lender

    def _live(self) -> Any:
        """The driver connection; reopened first if a failed reopen or ``close()`` left none."""
        if self._released:
            raise InvalidConnectionError
        if self._con is None:
            error = self._engine.reopen(self)
            if error is not None:
                raise error
        return self._con

    def _failure(self) -> type[BaseException]:
        failures = self._engine.failures
        return failures[0] if isinstance(failures, tuple) else failures  # type: ignore[no-any-return]

    def _fatal_check(self, error: BaseException) -> bool:
        isfatal = self._engine.isfatal
        return isfatal is None or bool(isfatal(error))

    def _close(self) -> None:
        """Close the driver connection (it leaves the pool); this object can reopen."""
        if not self._closed:
            con, lender = self._con, self._lender
            self._con = self._lender = None
            if con is not None and self._pid != os.getpid():
                inherited.append(con)
            elif con is not None and lender is not None:
                self._engine.forget_usage(con)
                self._engine.give_back(con, lender, keep=False)
            self._transaction = False
            self._closed = True

    def _reset(self, force: bool = False) -> None:
        if self._con is not None and (force or self._transaction):
            with contextlib.suppress(Exception):
                self.rollback()

    def _ping_check(self, ping: int = 1, reconnect: bool = True) -> bool | None:
        """Check the connection as DBUtils does for ``ping`` (a flag); if it is dead and no
        transaction is open, reopen it."""
        engine = self._engine
        if not ping & engine.ping:
            return None
        con = self._con
        alive: Any
        if con is None:
            alive = False
        elif engine.pinger is None:
            try:
                try:
                    alive = con.ping(False)
                except TypeError:  # no reconnect flag
                    alive = con.ping()
            except (AttributeError, IndexError, TypeError, ValueError):
                engine.ping = 0  # the driver has no ping(): DBUtils stops checking
                return None
            except Exception:
                alive = False
        else:
            try:
                alive = engine.pinger(con)
            except Exception:
                alive = False
        if alive is None:
            alive = True
        if alive:
            reconnect = False
        if reconnect and not self._transaction and engine.reopen(self) is None:
            alive = True
        return bool(alive)

    def dbapi(self) -> Any:
        """The DB-API 2 module of the connection."""
        if self._engine.dbapi is None:
            raise AttributeError("Could not determine DB-API 2 module (please set creator.dbapi).")
        return self._engine.dbapi

    @property
    def dbapi_connection(self) -> Any:
        """The driver connection: what runs on it is neither counted nor failed over."""
        return self._con

    def threadsafety(self) -> int:
        return self._engine.steady_threadsafety

    def close(self) -> None:
        """Close the connection if it is closeable (PersistentDB with ``closeable=True``);
        else only roll back an open transaction."""
        if self._closeable:
            self._close()
        elif self._transaction:
            self._reset()

    def begin(self, *args: Any, **kwargs: Any) -> None:
        """Begin a transaction: until it ends, the connection is neither replaced nor shared,
        and errors go to the application."""
        self._transaction = True
        begin = getattr(self._con, "begin", None)
        if begin is not None:
            begin(*args, **kwargs)

    def commit(self) -> None:
        self._transaction = False
        try:
            self._live().commit()
        except self._engine.failures as error:
            self._engine.reopen(self)
            raise error

    def rollback(self) -> None:
        self._transaction = False
        try:
            self._live().rollback()
        except self._engine.failures as error:
            self._engine.reopen(self)
            raise error

    def cancel(self) -> None:
        self._transaction = False
        cancel = getattr(self._con, "cancel", None)
        if cancel is not None:
            cancel()

    def ping(self, *args: Any, **kwargs: Any) -> Any:
        return self._live().ping(*args, **kwargs)

    def _cursor(self, *args: Any, **kwargs: Any) -> Any:
        """A driver cursor, on a new connection if this one failed or is used up."""
        transaction = self._transaction
        if not transaction:
            self._ping_check(2)
        engine = self._engine
        overused = False
        try:
            if engine.maxusage and self._usage >= engine.maxusage and not transaction:
                overused = True
                raise self._failure()
            cursor = self._live().cursor(*args, **kwargs)
        except engine.failures as error:
            # a used-up connection is always replaced: the application cannot veto that
            if not overused and not self._fatal_check(error):
                raise
            if engine.reopen(self) is None:
                try:
                    cursor = self._con.cursor(*args, **kwargs)
                except Exception:
                    pass
                else:
                    if transaction:
                        raise error
                    return cursor
            if transaction:
                self._transaction = False
            raise error
        return cursor

    def cursor(self, *args: Any, **kwargs: Any) -> SteadyDBCursor:
        """A new hardened cursor."""
        return SteadyDBCursor(self, *args, **kwargs)

    def __enter__(self) -> SteadyDBConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        """Ends a transaction (commit, or rollback on an exception); does not close."""
        if exc[0] is None and exc[1] is None and exc[2] is None:
            self.commit()
        else:
            self.rollback()

    def __del__(self) -> None:
        try:  # noqa: SIM105 (at interpreter shutdown what this needs may be gone already)
            self._dropped()
        except Exception:
            pass

    def _dropped(self) -> None:
        # PersistentDB: the thread that owned it ended; DBUtils closes the connection then
        con, lender = self.__dict__.get("_con"), self.__dict__.get("_lender")
        engine = self.__dict__.get("_engine")
        if con is not None and self.__dict__.get("_pid") != os.getpid():
            inherited.append(con)
        elif con is not None and lender is not None and engine is not None:
            reclaimer.defer(functools.partial(engine.give_back, con, lender, False))


class SteadyDBCursor:
    """DBUtils' hardened cursor: ``execute*`` and ``call*`` count towards ``maxusage`` and
    are retried on a new connection when the connection was lost outside a transaction."""

    def __init__(self, con: SteadyDBConnection, *args: Any, **kwargs: Any) -> None:
        self._cursor: Any = None
        self._closed = True
        self._no_failover = 0
        self._con = con
        self._args, self._kwargs = args, kwargs
        self._inputsizes: Any = []
        self._outputsizes: dict[Any, Any] = {}
        try:
            self._cursor = con._cursor(*args, **kwargs)
        except AttributeError as error:
            raise TypeError(f"{con!r} is not a SteadyDBConnection.") from error
        self._closed = False

    def __enter__(self) -> SteadyDBCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        cursor = self._cursor
        try:
            return iter(cursor)
        except TypeError:
            return iter(cursor.fetchone, None)

    @property
    def dbapi_cursor(self) -> Any:
        """The driver cursor: what runs on it is neither counted nor failed over."""
        cursor = self._cursor
        if not cursor:
            raise InvalidCursorError
        return cursor

    @contextlib.contextmanager
    def no_failover(self) -> Iterator[SteadyDBCursor]:
        """Statements inside fail at once instead of being retried on a new connection."""
        self._no_failover += 1
        try:
            yield self
        finally:
            self._no_failover -= 1

    def setinputsizes(self, sizes: Any) -> None:
        self._inputsizes = sizes

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        self._outputsizes[column] = size

    def _clearsizes(self) -> None:
        self._inputsizes = []
        self._outputsizes = {}

    def _setsizes(self, cursor: Any = None) -> None:
        if cursor is None:
            cursor = self._cursor
        if self._inputsizes:
            cursor.setinputsizes(self._inputsizes)
        for column, size in self._outputsizes.items():
            if column is None:
                cursor.setoutputsize(size)
            else:
                cursor.setoutputsize(size, column)

    def close(self) -> None:
        if not self._closed:
            with contextlib.suppress(Exception):
                self._cursor.close()
            self._closed = True

    def _swap(self, cursor: Any) -> None:
        self.close()
        self._cursor = cursor
        self._closed = False

    def _get_tough_method(self, name: str) -> Callable[..., Any]:
        def tough_method(*args: Any, **kwargs: Any) -> Any:
            con = self._con
            if con._released:
                # the connection went back to the pool and may be someone else's now
                raise InvalidCursorError("the cursor's connection was returned to the pool")
            engine = con._engine
            execute = name.startswith("execute")
            transaction = con._transaction
            if not transaction:
                con._ping_check(4)
            overused = False
            try:
                if engine.maxusage and con._usage >= engine.maxusage and not transaction:
                    overused = True
                    raise con._failure()
                if execute:
                    self._setsizes()
                result = getattr(self._cursor, name)(*args, **kwargs)
                if execute:
                    self._clearsizes()
            except engine.failures as error:
                if not overused and (self._no_failover or not con._fatal_check(error)):
                    raise
                return self._failover(name, error, transaction, args, kwargs)
            con._usage += 1
            return result

        return tough_method

    def _failover(
        self,
        name: str,
        error: BaseException,
        transaction: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """DBUtils' recovery from a failed statement: a new cursor, then a new connection."""
        con = self._con
        execute = name.startswith("execute")
        if not transaction:
            try:
                cursor2 = con._cursor(*self._args, **self._kwargs)
            except Exception:
                pass
            else:
                try:
                    if execute:
                        self._setsizes(cursor2)
                    result = getattr(cursor2, name)(*args, **kwargs)
                    if execute:
                        self._clearsizes()
                except Exception:
                    with contextlib.suppress(Exception):
                        cursor2.close()
                else:
                    self._swap(cursor2)
                    con._usage += 1
                    return result
        if con._engine.reopen(con) is None:
            try:
                cursor2 = con._con.cursor(*self._args, **self._kwargs)
            except Exception:
                pass
            else:
                if transaction:
                    self._swap(cursor2)
                    raise error  # the transaction is lost: the application must know
                try:
                    if execute:
                        self._setsizes(cursor2)
                    result = getattr(cursor2, name)(*args, **kwargs)
                    if execute:
                        self._clearsizes()
                except error.__class__:
                    with contextlib.suppress(Exception):
                        cursor2.close()
                except Exception as error2:
                    self._swap(cursor2)
                    con._usage += 1
                    raise error2 from None
                else:
                    self._swap(cursor2)
                    con._usage += 1
                    return result
        if transaction:
            con._transaction = False
        raise error

    def __getattr__(self, name: str) -> Any:
        cursor = self.__dict__.get("_cursor")
        if cursor:
            if name.startswith(("execute", "call")):
                return self._get_tough_method(name)
            return getattr(cursor, name)
        raise InvalidCursorError

    def __del__(self) -> None:
        try:  # noqa: SIM105 (at interpreter shutdown what this needs may be gone already)
            self.close()
        except Exception:
            pass


# -- PooledDB -----------------------------------------------------------------------------------


class PooledDB:
    """Pool for DB-API 2 connections, as DBUtils' ``PooledDB``, on a millpond engine pool."""

    version = __version__

    def __init__(
        self,
        creator: Any,
        mincached: int | None = 0,
        maxcached: int | None = 0,
        maxshared: int | None = 0,
        maxconnections: int | None = 0,
        blocking: bool = False,
        maxusage: int | None = None,
        setsession: Sequence[str] | None = None,
        reset: bool = True,
        failures: Any = None,
        ping: Any = 1,
        isfatal: Callable[[BaseException], bool] | None = None,
        *args: Any,
        pool_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Set up the pool; ``mincached`` connections open now. ``args`` and ``kwargs`` go to
        the creator. ``pool_options`` is a millpond extension (see the module's
        documentation)."""
        threadsafety = _threadsafety(creator)
        if not threadsafety:
            raise NotSupportedError("Database module is not thread-safe.")
        self._creator = creator
        self._args, self._kwargs = args, kwargs
        self._blocking = blocking
        self._maxusage = maxusage
        self._setsession = setsession
        # millpond rolls back every connection that comes back in a transaction, whatever
        # reset says: DBUtils' reset=False lets uncommitted work reach the next borrower
        self._reset = reset
        self._failures = failures
        self._isfatal = isfatal
        self._ping = ping
        mincached = mincached or 0
        maxcached = maxcached or 0
        maxconnections = maxconnections or 0
        self._maxcached = max(maxcached, mincached) if maxcached else 0
        self._maxshared = maxshared if threadsafety > 1 and maxshared else 0
        if maxconnections:
            maxconnections = max(maxconnections, self._maxcached, maxshared or 0)
        self._maxconnections = maxconnections
        self._shared_cache: list[SharedDBConnection] = []
        self._lock = threading.Condition()
        self._connections = 0  # lent: dedicated connections and shared ones (DBUtils' count)
        self._reserved = 0  # between the limit check and the engine's answer
        self._waiting = 0  # queued in the engine for a return (blocking=True)
        self._shared_reserved = 0
        self._engine = _Engine(
            creator,
            args,
            kwargs,
            maxusage=maxusage,
            setsession=setsession,
            failures=failures,
            ping=ping,
            isfatal=isfatal,
            pool_options=pool_options,
            min_size=mincached,
            max_size=maxconnections or _UNLIMITED,
        )
        on_fork(self)

    # -- checkout --------------------------------------------------------------------------------

    def steady_connection(self) -> SteadyDBConnection:
        """A steady connection outside the pool's limits; ``close()`` closes it."""
        reclaimer.flush()
        con, lender = self._engine.borrow(growing=True)
        return self._engine.steady(con, lender, closeable=True, persistent=True)

    def connection(self, shareable: bool = True) -> Any:
        """A steady connection from the pool, wrapped in a proxy whose ``close()`` returns it.
        With ``shareable`` and ``maxshared``, it may be shared with other threads."""
        reclaimer.flush()
        if shareable and self._maxshared:
            return PooledSharedDBConnection(self, self._shared())
        return PooledDedicatedDBConnection(self, self._dedicated())

    def dedicated_connection(self) -> Any:
        """Alias for ``connection(shareable=False)``."""
        return self.connection(False)

    def _busy(self) -> int:
        return self._connections + self._reserved + self._waiting + self._shared_reserved

    def _full(self) -> bool:
        return bool(self._maxconnections) and self._busy() >= self._maxconnections

    def _dedicated(self) -> SteadyDBConnection:
        with self._lock:
            growing = not self._full()
            if not growing and not self._blocking:
                raise TooManyConnectionsError
            if growing:
                self._reserved += 1
            else:
                self._waiting += 1
        try:
            con, lender = self._borrow(growing)
        finally:
            with self._lock:
                if growing:
                    self._reserved -= 1
                else:
                    self._waiting -= 1
        with self._lock:
            self._connections += 1
        try:
            steady = self._engine.steady(con, lender, closeable=True, persistent=False)
        except BaseException:
            with self._lock:
                self._connections -= 1
                self._lock.notify()
            raise
        if self._engine.pinger is not None:
            steady._ping_check()  # a custom check runs on every checkout, as in DBUtils
        return steady

    def _borrow(self, growing: bool) -> tuple[Any, millpond.Pool]:
        try:
            return self._engine.borrow(growing=growing, wait=self._engine.wait)
        except (PoolTimeout, TooManyWaiters, PoolClosed) as exc:
            if growing:
                raise PooledDBError(str(exc)) from exc
            raise TooManyConnectionsError from exc

    def _shared(self) -> SharedDBConnection:
        deadline = _Deadline(self._engine.wait)
        existing: SharedDBConnection | None = None
        with self._lock:
            while True:
                while not self._shared_cache and self._full():
                    self._wait_lock(deadline)
                if (
                    len(self._shared_cache) + self._shared_reserved < self._maxshared
                    and not self._full()
                ):
                    self._shared_reserved += 1  # room for one more: opened below
                    break
                if not self._shared_cache:
                    self._wait_lock(deadline)  # the one being opened will be shared
                    continue
                self._shared_cache.sort()  # the least shared first (stable: oldest first)
                existing = self._shared_cache[0]
                if existing.con._transaction:
                    # never share a connection inside a transaction: wait for a change
                    existing = None
                    self._wait_lock(deadline)
                    continue
                existing.share()
                self._shared_cache.append(self._shared_cache.pop(0))
                self._lock.notify()
                break
        if existing is not None:
            existing.con._ping_check()  # outside the lock: a reopen must not hold it
            return existing
        try:
            con, lender = self._borrow(True)
            steady = self._engine.steady(con, lender, closeable=True, persistent=False)
        except BaseException:
            with self._lock:
                self._shared_reserved -= 1
                self._lock.notify()
            raise
        shared = SharedDBConnection(steady)
        with self._lock:
            self._shared_reserved -= 1
            self._connections += 1
            self._shared_cache.append(shared)
            self._lock.notify()
        return shared

    def _wait_lock(self, deadline: _Deadline) -> None:
        """Wait until notified, or report the limit (``blocking=False``, or the ``timeout``
        extension ran out). Call holding the lock; callers check again after it returns."""
        if not self._blocking:
            raise TooManyConnectionsError
        left = deadline.left()
        if left <= 0:
            raise TooManyConnectionsError
        self._lock.wait(None if left == math.inf else left)

    # -- return ------------------------------------------------------------------------------

    def unshare(self, con: SharedDBConnection) -> None:
        """Decrease the share of a shared connection; back to the pool when nobody uses it."""
        with self._lock:
            con.unshare()
            shared = con.shared
            if not shared:
                with contextlib.suppress(ValueError):  # the pool has been closed
                    self._shared_cache.remove(con)
            self._lock.notify()
        if not shared:
            self._give_back(con.con, counted=not con.evicted)

    def cache(self, con: SteadyDBConnection) -> None:
        """Put a dedicated connection back: idle (rolled back) while fewer than ``maxcached``
        are, else closed."""
        self._give_back(con, counted=True)

    def _give_back(self, steady: SteadyDBConnection, *, counted: bool) -> None:
        if steady._released:
            return
        if steady._pid != os.getpid():
            steady._release()  # lent before a fork: not counted in this process
            return
        raw, lender = steady._release()
        with self._lock:
            try:
                if raw is not None and lender is not None:
                    keep = not self._maxcached or self._engine.idle() < self._maxcached
                    self._engine.give_back(raw, lender, keep)
            finally:
                if counted:
                    self._connections -= 1
                self._lock.notify()

    def _give_back_dropped(self, steady: SteadyDBConnection) -> None:
        self.cache(steady)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the idle and the shared connections. As with DBUtils the pool still works
        afterwards; dedicated connections lent now are pooled again when closed."""
        with self._lock:
            shared, self._shared_cache = self._shared_cache, []
            for entry in shared:
                entry.evicted = True
                with contextlib.suppress(Exception):
                    entry.con._close()
                self._connections -= 1
            self._lock.notify_all()
        self._engine.close_idle()

    def _after_fork_in_child(self) -> None:
        # the engine pool starts afresh in a child: what the parent lent is not lent here
        self._lock = threading.Condition()
        inherited.append(self._shared_cache)
        self._shared_cache = []
        self._connections = self._reserved = self._waiting = self._shared_reserved = 0
        self._engine._after_fork_in_child()

    # -- millpond extensions ----------------------------------------------------------------

    def stats(self) -> millpond.PoolStats | None:
        """The engine pool's :meth:`millpond.Pool.stats` (None after ``close()`` until the next
        checkout)."""
        pool = self._engine.pool
        return None if pool is None else pool.stats()

    @property
    def millpond_pool(self) -> millpond.Pool:
        """The engine pool underneath."""
        return self._engine.current()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._engine.adapter.description} "
            f"lent={self._connections} maxconnections={self._maxconnections or 'unlimited'}>"
        )


class _Deadline:
    def __init__(self, budget: float) -> None:
        self._end = time.monotonic() + budget

    def left(self) -> float:
        return self._end - time.monotonic()


class PooledDedicatedDBConnection:
    """Proxy of a dedicated pooled connection: ``close()`` (or dropping it) returns it, after
    which any use raises ``InvalidConnectionError``."""

    def __init__(self, pool: PooledDB, con: SteadyDBConnection) -> None:
        self._con: SteadyDBConnection | None = None
        if not con.threadsafety():
            raise NotSupportedError("Database module is not thread-safe.")
        self._pool = pool
        self._con = con

    def close(self) -> None:
        """Return the connection to the pool (a second call does nothing)."""
        if self._con:
            self._pool.cache(self._con)
            self._con = None

    def __getattr__(self, name: str) -> Any:
        con = self.__dict__.get("_con")
        if con:
            return getattr(con, name)
        raise InvalidConnectionError

    def __del__(self) -> None:
        # DBUtils returns a dropped proxy's connection: so does this, through the reclaimer
        con, pool = self.__dict__.get("_con"), self.__dict__.get("_pool")
        if con and pool is not None:
            try:  # noqa: SIM105 (at interpreter shutdown what this needs may be gone already)
                reclaimer.defer(functools.partial(pool._give_back_dropped, con))
            except Exception:
                pass

    def __enter__(self) -> PooledDedicatedDBConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SharedDBConnection:
    """A connection in the shared cache, with its number of shares."""

    def __init__(self, con: SteadyDBConnection) -> None:
        self.con = con
        self.shared = 1
        self.evicted = False  # closed by the pool's close(): no longer counted

    def __lt__(self, other: SharedDBConnection) -> bool:
        if self.con._transaction == other.con._transaction:
            return self.shared < other.shared
        return not self.con._transaction

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def share(self) -> None:
        self.shared += 1

    def unshare(self) -> None:
        self.shared -= 1


class PooledSharedDBConnection:
    """Proxy of a shared pooled connection: ``close()`` gives up this share."""

    def __init__(self, pool: PooledDB, shared_con: SharedDBConnection) -> None:
        self._con: SteadyDBConnection | None = None
        con = shared_con.con
        if not con.threadsafety() > 1:
            raise NotSupportedError("Database connection is not thread-safe.")
        self._pool = pool
        self._shared_con: SharedDBConnection | None = shared_con
        self._con = con

    def close(self) -> None:
        """Give up this share (the connection returns when nobody shares it)."""
        if self._con and self._shared_con is not None:
            self._pool.unshare(self._shared_con)
            self._shared_con = self._con = None

    def __getattr__(self, name: str) -> Any:
        con = self.__dict__.get("_con")
        if con:
            return getattr(con, name)
        raise InvalidConnectionError

    def __del__(self) -> None:
        shared, pool = self.__dict__.get("_shared_con"), self.__dict__.get("_pool")
        if self.__dict__.get("_con") and shared is not None and pool is not None:
            try:  # noqa: SIM105 (at interpreter shutdown what this needs may be gone already)
                reclaimer.defer(functools.partial(pool.unshare, shared))
            except Exception:
                pass

    def __enter__(self) -> PooledSharedDBConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- PersistentDB ---------------------------------------------------------------------------------


def _thread_local() -> Any:
    try:
        # DBUtils prefers the pure-Python local: the C one loses its data between requests
        # under mod_wsgi
        return importlib.import_module("_threading_local").local
    except ImportError:
        return threading.local


class PersistentDB:
    """Thread-affine persistent connections, as DBUtils' ``PersistentDB``: each thread keeps
    one connection (lent by the engine pool) until it ends, when the connection is closed."""

    version = __version__

    def __init__(
        self,
        creator: Any,
        maxusage: int | None = None,
        setsession: Sequence[str] | None = None,
        failures: Any = None,
        ping: Any = 1,
        closeable: bool = False,
        threadlocal: Any = None,
        isfatal: Callable[[BaseException], bool] | None = None,
        *args: Any,
        pool_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not _threadsafety(creator):
            raise NotSupportedError("Database module is not thread-safe.")
        self._creator = creator
        self._maxusage = maxusage
        self._setsession = setsession
        self._failures = failures
        self._isfatal = isfatal
        self._ping = ping
        self._closeable = closeable
        self._args, self._kwargs = args, kwargs
        self._engine = _Engine(
            creator,
            args,
            kwargs,
            maxusage=maxusage,
            setsession=setsession,
            failures=failures,
            ping=ping,
            isfatal=isfatal,
            pool_options=pool_options,
            min_size=0,
            max_size=_UNLIMITED,
        )
        self._threadlocal = threadlocal or _thread_local()
        self.thread = self._threadlocal()
        on_fork(self)

    def _after_fork_in_child(self) -> None:
        # the forking thread's connection is the parent's: this process starts without one
        inherited.append(self.thread)
        self.thread = self._threadlocal()
        self._engine._after_fork_in_child()

    def steady_connection(self) -> SteadyDBConnection:
        """A steady connection that is not the thread's persistent one."""
        reclaimer.flush()
        con, lender = self._engine.borrow(growing=True)
        return self._engine.steady(con, lender, closeable=self._closeable, persistent=True)

    def connection(self, shareable: bool = False) -> SteadyDBConnection:
        """This thread's persistent steady connection (``shareable`` is ignored)."""
        reclaimer.flush()
        try:
            con: SteadyDBConnection = self.thread.connection
        except AttributeError as error:
            con = self.steady_connection()
            if not con.threadsafety():
                raise NotSupportedError("Database module is not thread-safe.") from error
            self.thread.connection = con
        con._ping_check()
        return con

    def dedicated_connection(self) -> SteadyDBConnection:
        """Alias for ``connection()``."""
        return self.connection()

    def stats(self) -> millpond.PoolStats | None:
        """The engine pool's :meth:`millpond.Pool.stats`."""
        pool = self._engine.pool
        return None if pool is None else pool.stats()
