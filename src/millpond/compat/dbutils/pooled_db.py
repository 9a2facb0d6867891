"""DBUtils' ``pooled_db``: ``PooledDB`` and the connections it lends, dedicated or shared."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import millpond
from millpond.compat._reclaim import inherited, on_fork, reclaimer
from millpond.compat.dbutils._engine import UNLIMITED, Engine, threadsafety_of
from millpond.compat.dbutils._peer import (
    InvalidConnection,
    InvalidConnectionError,
    NotSupportedError,
    PooledDBError,
    TooManyConnections,
    TooManyConnectionsError,
    __version__,
)
from millpond.compat.dbutils.steady_db import SteadyDBConnection, lend_steady
from millpond.errors import PoolClosed, PoolTimeout, TooManyWaiters

__all__ = [
    "InvalidConnection",
    "InvalidConnectionError",
    "NotSupportedError",
    "PooledDB",
    "PooledDBError",
    "PooledDedicatedDBConnection",
    "PooledSharedDBConnection",
    "SharedDBConnection",
    "TooManyConnections",
    "TooManyConnectionsError",
]


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
        threadsafety = threadsafety_of(creator)
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
            min_size=mincached,
            max_size=maxconnections or UNLIMITED,
        )
        on_fork(self._after_fork_in_child)

    # -- checkout --------------------------------------------------------------------------------

    def steady_connection(self) -> SteadyDBConnection:
        """A steady connection outside the pool's limits; ``close()`` closes it."""
        reclaimer.flush()
        con, lender = self._engine.borrow(growing=True)
        return lend_steady(self._engine, con, lender, closeable=True, persistent=True)

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
            steady = lend_steady(self._engine, con, lender, closeable=True, persistent=False)
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
            steady = lend_steady(self._engine, con, lender, closeable=True, persistent=False)
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
        self._engine.after_fork_in_child()

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
