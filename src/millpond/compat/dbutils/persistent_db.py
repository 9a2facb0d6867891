"""DBUtils' ``persistent_db``: ``PersistentDB``, one connection per thread."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import millpond
from millpond.compat._reclaim import inherited, on_fork, reclaimer
from millpond.compat.dbutils._engine import UNLIMITED, Engine, threadsafety_of
from millpond.compat.dbutils._peer import NotSupportedError, PersistentDBError, __version__
from millpond.compat.dbutils.steady_db import SteadyDBConnection, lend_steady

__all__ = ["NotSupportedError", "PersistentDB", "PersistentDBError"]


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
        if not threadsafety_of(creator):
            raise NotSupportedError("Database module is not thread-safe.")
        self._creator = creator
        self._maxusage = maxusage
        self._setsession = setsession
        self._failures = failures
        self._isfatal = isfatal
        self._ping = ping
        self._closeable = closeable
        self._args, self._kwargs = args, kwargs
        self._engine = Engine(
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
            max_size=UNLIMITED,
        )
        self._threadlocal = threadlocal or _thread_local()
        self.thread = self._threadlocal()
        on_fork(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        # the forking thread's connection is the parent's: this process starts without one
        inherited.append(self.thread)
        self.thread = self._threadlocal()
        self._engine.after_fork_in_child()

    def steady_connection(self) -> SteadyDBConnection:
        """A steady connection that is not the thread's persistent one."""
        reclaimer.flush()
        con, lender = self._engine.borrow(growing=True)
        return lend_steady(self._engine, con, lender, closeable=self._closeable, persistent=True)

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
