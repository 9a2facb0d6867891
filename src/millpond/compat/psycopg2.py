"""``psycopg2.pool`` on millpond: change the import, keep the code.

::

    from millpond.compat import psycopg2 as pool   # was: from psycopg2 import pool

    pg_pool = pool.SimpleConnectionPool(2, 10, host="127.0.0.1", dbname="test")
    conn = pg_pool.getconn()          # psycopg2's own connection object
    pg_pool.putconn(conn)
    pg_pool.closeall()

As in psycopg2: ``minconn`` connections open in the constructor (a failure raises psycopg2's
``OperationalError``); ``getconn()`` hands out an idle connection, or opens one while fewer than
``maxconn`` are lent, and raises ``PoolError("connection pool exhausted")`` at once when
``maxconn`` are; ``putconn()`` keeps up to ``minconn`` idle connections (rolled back) and
closes the others; keys work as in psycopg2; ``closeall()`` closes lent connections too.

What millpond adds: the idle connection handed out is validated first (a dead one is replaced,
not lent), every connection goes back rolled back with its autocommit restored, the pool is
thread-safe and fork-safe whichever class you use, and ``stats()``. The extension ``timeout=``
(seconds) makes an exhausted ``getconn()`` wait that long for a return before raising
``PoolError``; ``pool_options=`` passes further millpond.Pool options (``leak_timeout`` to find
connections never put back, ``max_lifetime``, ``keepalive``, ...).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Hashable, Mapping
from typing import Any

import millpond
from millpond.compat._reclaim import inherited, on_fork
from millpond.compat._shared import (
    CONNECT_BUDGET,
    borrow,
    check_pool_options,
    open_pool,
    wait_budget,
)
from millpond.drivers.url import resolve
from millpond.errors import PoolClosed, PoolTimeout, TooManyWaiters

try:
    _psycopg2: Any = importlib.import_module("psycopg2")
    _peer: Any = importlib.import_module("psycopg2.pool")
except ImportError as exc:  # the layer lends psycopg2 connections: nothing to do without it
    raise ImportError(
        "millpond.compat.psycopg2 needs psycopg2: pip install 'millpond[psycopg2]'"
    ) from exc

__all__ = ["AbstractConnectionPool", "PoolError", "SimpleConnectionPool", "ThreadedConnectionPool"]

# psycopg2.connect(dsn=None, connection_factory=None, cursor_factory=None, **kwargs): the pool
# forwards its extra positional arguments there
_POSITIONAL = ("dsn", "connection_factory", "cursor_factory")


class PoolError(_peer.PoolError, millpond.PoolError):  # type: ignore[misc]
    """psycopg2's ``PoolError`` (``except psycopg2.pool.PoolError`` still catches it), and a
    millpond error."""


class AbstractConnectionPool:
    """Generic key-based pooling code, as psycopg2's class of that name (thread-safe here)."""

    def __init__(
        self,
        minconn: int,
        maxconn: int,
        *args: Any,
        timeout: float | None = None,
        pool_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Open ``minconn`` connections now with ``psycopg2.connect(*args, **kwargs)``; lend at
        most ``maxconn``. ``timeout`` and ``pool_options`` are millpond extensions (see the
        module's documentation)."""
        self.minconn = int(minconn)
        self.maxconn = int(maxconn)
        self.closed = False
        self._args = args
        self._kwargs = kwargs
        self._used: dict[Hashable, Any] = {}
        self._rused: dict[int, Hashable] = {}  # id(conn) -> key
        self._keys = 0
        self._lock = threading.Lock()
        self._reserved = 0  # getconn calls between the limit check and the engine's answer
        options = check_pool_options(pool_options)
        if timeout is not None:
            options["timeout"] = timeout
        self._wait = options.get("timeout")
        self._budget = wait_budget(options, CONNECT_BUDGET)
        if len(args) > len(_POSITIONAL):
            raise TypeError(
                f"psycopg2.connect() takes at most {len(_POSITIONAL)} positional arguments "
                f"({len(args)} given)"
            )
        params = dict(zip(_POSITIONAL, args, strict=False))
        params.update(kwargs)
        adapter = resolve(_psycopg2, params)
        # psycopg2 holds minconn > maxconn without complaint; the engine needs min <= max
        self.millpond_pool: millpond.Pool = open_pool(
            adapter,
            min_size=max(self.minconn, 0),
            max_size=max(self.maxconn, self.minconn, 1),
            keep_min_size=False,
            options=options,
            reset="rollback",
        )
        on_fork(self._after_fork_in_child)

    # -- psycopg2's protected API, which its subclasses (and some applications) call ------------

    def _getkey(self) -> int:
        """Return a new unique key."""
        self._keys += 1
        return self._keys

    def _getconn(self, key: Hashable = None) -> Any:
        """Get a free connection and assign it to ``key`` if not None."""
        with self._lock:
            if self.closed:
                raise PoolError("connection pool is closed")
            if key is None:
                key = self._getkey()
            if key in self._used:
                return self._used[key]
            growing = len(self._used) + self._reserved < self.maxconn
            if not growing and self._wait is None:
                raise PoolError("connection pool exhausted")
            self._reserved += 1
        try:
            conn = self._borrow(growing)
        finally:
            with self._lock:
                self._reserved -= 1
        with self._lock:
            if self.closed:  # closeall() ran while this caller waited
                self._discard(conn)
                raise PoolError("connection pool is closed")
            if key in self._used:  # another thread asked for the same key meanwhile
                self.millpond_pool.putconn(conn)
                return self._used[key]
            self._used[key] = conn
            self._rused[id(conn)] = key
            return conn

    def _borrow(self, growing: bool) -> Any:
        budget = self._budget if self._wait is None or growing else float(self._wait)
        try:
            return borrow(self.millpond_pool, budget, growing=growing)
        except PoolClosed as exc:
            raise PoolError("connection pool is closed") from exc
        except (PoolTimeout, TooManyWaiters) as exc:
            if growing:  # a connect that never finished: say so rather than "exhausted"
                raise PoolError(str(exc)) from exc
            raise PoolError("connection pool exhausted") from exc

    def _putconn(self, conn: Any, key: Hashable = None, close: bool = False) -> None:
        """Put away a connection: kept idle (rolled back) while fewer than ``minconn`` are,
        else closed; ``close=True`` closes it."""
        with self._lock:
            if self.closed:
                raise PoolError("connection pool is closed")
            if key is None:
                key = self._rused.get(id(conn))
                if key is None or self._used.get(key) is not conn:
                    raise PoolError("trying to put unkeyed connection")
            elif self._used.get(key, self) is not conn:
                raise KeyError(key)  # what psycopg2 raises for a key it did not lend
            del self._used[key]
            del self._rused[id(conn)]
            # psycopg2 keeps at most minconn idle and closes the rest; the decision and the
            # return happen under one lock so that two returns cannot both take the last place
            if not close and self.millpond_pool.stats().idle < self.minconn:
                self.millpond_pool.putconn(conn)
            else:
                self._discard(conn)

    def _discard(self, conn: Any) -> None:
        # closed here, not by the engine's worker: psycopg2 closes before putconn returns, and
        # a server's connection count right after is part of what existing code sees
        with contextlib.suppress(Exception):
            conn.close()
        with contextlib.suppress(millpond.PoolError):
            self.millpond_pool.putconn(conn, discard=True)

    def _closeall(self) -> None:
        """Close all connections, including the ones in use: code still holding one gets
        psycopg2's "connection already closed" when it uses it."""
        with self._lock:
            if self.closed:
                raise PoolError("connection pool is closed")
            for conn in list(self._used.values()):
                self._discard(conn)
            self.millpond_pool.close()
            self.closed = True

    def _after_fork_in_child(self) -> None:
        # the engine pool starts afresh in a child: what the parent lent is not lent here
        self._lock = threading.Lock()
        inherited.append(self._used)
        self._used = {}
        self._rused = {}
        self._reserved = 0

    # -- millpond extensions ----------------------------------------------------------------

    def stats(self) -> millpond.PoolStats:
        """The engine pool's :meth:`millpond.Pool.stats`."""
        return self.millpond_pool.stats()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._used)} of {self.maxconn} lent"
        return f"<{type(self).__name__} {state} on {self.millpond_pool!r}>"


class SimpleConnectionPool(AbstractConnectionPool):
    """psycopg2's pool for one thread; here it is thread-safe as well."""

    def getconn(self, key: Hashable = None) -> Any:
        """Get a free connection and assign it to ``key`` if not None."""
        return self._getconn(key)

    def putconn(self, conn: Any, key: Hashable = None, close: bool = False) -> None:
        """Put away a connection."""
        self._putconn(conn, key, close)

    def closeall(self) -> None:
        """Close all connections (even the ones in use)."""
        self._closeall()


class ThreadedConnectionPool(AbstractConnectionPool):
    """A connection pool that works with the threading module."""

    def getconn(self, key: Hashable = None) -> Any:
        """Get a free connection and assign it to ``key`` if not None."""
        return self._getconn(key)

    def putconn(self, conn: Any = None, key: Hashable = None, close: bool = False) -> None:
        """Put away an unused connection."""
        self._putconn(conn, key, close)

    def closeall(self) -> None:
        """Close all connections (even the ones in use)."""
        self._closeall()
