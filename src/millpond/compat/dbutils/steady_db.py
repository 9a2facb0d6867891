"""DBUtils' ``steady_db``: the "hardened" connection and cursor that PooledDB and
PersistentDB hand out around the driver connection millpond lent."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import millpond
from millpond.compat._reclaim import inherited, reclaimer
from millpond.compat.dbutils._engine import Engine
from millpond.compat.dbutils._peer import (
    InvalidConnectionError,
    InvalidCursor,
    InvalidCursorError,
    SteadyDBError,
)

__all__ = [
    "InvalidCursor",
    "InvalidCursorError",
    "SteadyDBConnection",
    "SteadyDBCursor",
    "SteadyDBError",
]


class SteadyDBConnection:
    """DBUtils' "hardened" connection around the driver connection millpond lent.

    Outside a transaction (``begin()``), a statement that fails with one of ``failures``
    (a lost connection) is retried once on a new connection; after ``maxusage`` operations
    the connection is replaced. Inside one, errors go to the application.
    """

    def __init__(
        self,
        engine: Engine,
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

    def _reopen(self) -> BaseException | None:
        """Replace the driver connection (lost, or used ``maxusage`` times); the error if no
        new one could be had."""
        engine = self._engine
        old, lender = self._con, self._lender
        self._con = None
        if old is not None and self._pid != os.getpid():
            inherited.append(old)  # the parent process's: its socket is not ours to close
        elif old is not None and lender is not None:
            engine.forget_usage(old)
            engine.give_back(old, lender, keep=False)
        try:
            # the slot just freed is this caller's: a connect, not a queue
            con, pool = engine.borrow(growing=True)
        except Exception as exc:
            return exc
        self._store(con, pool, engine.usage_of(con))
        return None

    def _live(self) -> Any:
        """The driver connection; reopened first if a failed reopen or ``close()`` left none."""
        if self._released:
            raise InvalidConnectionError
        if self._con is None:
            error = self._reopen()
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
        if reconnect and not self._transaction and self._reopen() is None:
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
            self._reopen()
            raise error

    def rollback(self) -> None:
        self._transaction = False
        try:
            self._live().rollback()
        except self._engine.failures as error:
            self._reopen()
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
            if self._reopen() is None:
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
        if con._reopen() is None:
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


def lend_steady(
    engine: Engine, con: Any, lender: millpond.Pool, *, closeable: bool, persistent: bool
) -> SteadyDBConnection:
    """Wrap a connection the engine lent; it goes back if DBUtils' checks refuse it."""
    try:
        engine.learn(con)
    except AttributeError:
        engine.give_back(con, lender, keep=False)
        raise
    return SteadyDBConnection(engine, con, lender, closeable=closeable, persistent=persistent)
