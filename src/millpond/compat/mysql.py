"""``mysql.connector.pooling`` on millpond: change the import, keep the code.

::

    from millpond.compat import mysql as pooling   # was: from mysql.connector import pooling

    cnxpool = pooling.MySQLConnectionPool(pool_name="mypool", pool_size=5, host="127.0.0.1",
                                          user="app", database="test")
    cnx = cnxpool.get_connection()    # a PooledMySQLConnection
    cnx.cursor().execute("SELECT 1")
    cnx.close()                        # back to the pool, session reset

    cnx = pooling.connect(pool_name="mypool", host=..., ...)  # was: mysql.connector.connect(...)

As in mysql-connector: the constructor opens ``pool_size`` connections when it is given a
configuration; ``get_connection()`` raises ``PoolError("Failed getting connection; pool
exhausted")`` at once when all are lent; ``close()`` on the pooled connection resets the session
(``pool_reset_session``) and returns it, after which the object refuses use; ``pool_size`` is
limited to 1..32 and the pool name to 64 characters of ``[a-zA-Z0-9._:-*$#]``, with the peer's
messages; ``connect(pool_name=...)`` finds or creates a named pool.

What millpond adds: a connection found dead is replaced before it is lent, a failed reset
replaces the connection instead of failing ``close()``, a pooled connection dropped without
``close()`` comes back instead of being lost, the pool is fork-safe, and ``stats()``. The
extension ``timeout=`` makes an exhausted ``get_connection()`` wait that long for a return;
``pool_options=`` passes further millpond.Pool options.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, NoReturn

import millpond
from millpond.compat._reclaim import inherited, on_fork, reclaimer
from millpond.compat._shared import (
    CONNECT_BUDGET,
    borrow,
    check_pool_options,
    fill,
    open_pool,
    wait_budget,
)
from millpond.drivers.url import resolve
from millpond.errors import PoolClosed, PoolTimeout, TooManyWaiters

log = logging.getLogger("millpond")

try:
    _connector: Any = importlib.import_module("mysql.connector")
    _peer: Any = importlib.import_module("mysql.connector.pooling")
    _errors: Any = importlib.import_module("mysql.connector.errors")
    _constants: Any = importlib.import_module("mysql.connector.constants")
except ImportError as exc:  # the layer lends mysql-connector connections
    raise ImportError(
        "millpond.compat.mysql needs mysql-connector-python: pip install 'millpond[mysql]'"
    ) from exc

__all__ = [
    "CNX_POOL_MAXNAMESIZE",
    "CNX_POOL_MAXSIZE",
    "MySQLConnectionPool",
    "PoolError",
    "PooledMySQLConnection",
    "connect",
    "generate_pool_name",
]

# the peer's limits, read from the installed version so that both stay in step
CNX_POOL_MAXSIZE: int = _peer.CNX_POOL_MAXSIZE
CNX_POOL_MAXNAMESIZE: int = _peer.CNX_POOL_MAXNAMESIZE
CNX_POOL_NAMEREGEX: re.Pattern[str] = _peer.CNX_POOL_NAMEREGEX
CNX_POOL_ARGS: tuple[str, ...] = tuple(_constants.CNX_POOL_ARGS)
ERROR_NO_CEXT: str = _peer.ERROR_NO_CEXT
MYSQL_CNX_CLASS: type | tuple[type, ...] = _peer.MYSQL_CNX_CLASS


class PoolError(_errors.PoolError, millpond.PoolError):  # type: ignore[misc]
    """mysql-connector's ``PoolError`` (``except mysql.connector.errors.PoolError`` still
    catches it), and a millpond error."""


_CONNECTION_POOLS: dict[str, MySQLConnectionPool] = {}
_POOLS_LOCK = threading.RLock()

_EXHAUSTED = "Failed getting connection; pool exhausted"
_QUEUE_FULL = "Failed adding connection; queue is full"


def generate_pool_name(**kwargs: Any) -> str:
    """A pool name from the ``host``, ``port``, ``user`` and ``database`` arguments given."""
    parts = [str(kwargs[key]) for key in ("host", "port", "user", "database") if key in kwargs]
    if not parts:
        raise PoolError("Failed generating pool name; specify pool_name")
    return "_".join(parts)


def connect(*args: Any, **kwargs: Any) -> Any:
    """``mysql.connector.connect``: with a pooling argument (``pool_name``, ``pool_size``,
    ``pool_reset_session``) a :class:`PooledMySQLConnection` from the named millpond-backed
    pool, created on first use; otherwise a plain connection from mysql-connector."""
    if "read_default_file" in kwargs:
        kwargs["option_files"] = kwargs.pop("read_default_file")
    if "option_files" in kwargs:
        optionfiles: Any = importlib.import_module("mysql.connector.optionfiles")
        return connect(**optionfiles.read_option_files(**kwargs))
    # failover and DNS SRV pick a server per connect: the peer's own logic does that
    if "failover" in kwargs or kwargs.get("dns_srv"):
        return _connector.connect(*args, **kwargs)
    if any(key in kwargs for key in CNX_POOL_ARGS):
        return _get_pooled_connection(**kwargs)
    return _connector.connect(*args, **kwargs)


def _get_pooled_connection(**kwargs: Any) -> PooledMySQLConnection:
    pool_name = kwargs["pool_name"] if "pool_name" in kwargs else generate_pool_name(**kwargs)
    if kwargs.get("use_pure") is False and not getattr(_connector, "HAVE_CEXT", False):
        raise ImportError(ERROR_NO_CEXT)
    with _POOLS_LOCK:
        pool = _CONNECTION_POOLS.get(pool_name)
        if pool is None:
            pool = _CONNECTION_POOLS[pool_name] = MySQLConnectionPool(**kwargs)
        elif "pool_size" in kwargs and kwargs["pool_size"] != pool.pool_size:
            raise PoolError("Size can not be changed for active pools.")
    return pool.get_connection()


class PooledMySQLConnection:
    """A connection lent by :class:`MySQLConnectionPool`: it behaves as the MySQLConnection it
    holds, except that ``close()`` returns it to the pool and ``config()`` is refused.

    After ``close()`` it holds nothing, so any use raises ``AttributeError``, as with
    mysql-connector.
    """

    def __init__(self, pool: MySQLConnectionPool, cnx: Any) -> None:
        if not isinstance(pool, MySQLConnectionPool):
            raise AttributeError("pool should be a MySQLConnectionPool")
        if not isinstance(cnx, MYSQL_CNX_CLASS):
            raise AttributeError("cnx should be a MySQLConnection")
        self._cnx_pool = pool
        self._cnx: Any = cnx
        self._pid = os.getpid()

    def __enter__(self) -> PooledMySQLConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __getattr__(self, attr: str) -> Any:
        # __dict__, not self._cnx: this runs for a half-built object too, and must not recurse
        return getattr(self.__dict__.get("_cnx"), attr)

    def close(self) -> None:
        """Do not close, but give the connection back to the pool (its session is reset there
        when ``pool_reset_session`` is set)."""
        cnx = self.__dict__.get("_cnx")
        self._cnx = None
        pool = self._cnx_pool
        if cnx is not None and self._pid != os.getpid():
            inherited.append(cnx)  # lent to the parent process: its socket is not ours
            return
        if cnx is not None:
            if not pool._return(cnx):
                pool.add_connection(cnx)  # one the pool did not lend: refused there
            return
        # a second close(): mysql-connector resets "nothing" and adds "nothing" back, which
        # raises AttributeError, or PoolError when its queue is full; keep that
        try:
            if pool.reset_session:
                raise AttributeError("'NoneType' object has no attribute 'reset_session'")
        finally:
            pool.add_connection()

    def __del__(self) -> None:
        try:  # noqa: SIM105 (at interpreter shutdown what this needs may be gone already)
            self._dropped()
        except Exception:
            pass

    def _dropped(self) -> None:
        cnx = self.__dict__.get("_cnx")
        pool = self.__dict__.get("_cnx_pool")
        if cnx is not None and self.__dict__.get("_pid") != os.getpid():
            inherited.append(cnx)
        elif cnx is not None and pool is not None:
            # mysql-connector loses such a connection for good; give it back instead
            reclaimer.defer(functools.partial(pool._return_dropped, cnx))

    @staticmethod
    def config(**kwargs: Any) -> NoReturn:
        """Configuration is done through the pool (``set_config``)."""
        raise PoolError(
            "Configuration for pooled connections should be done through the pool itself"
        )

    @property
    def pool_name(self) -> str:
        """The name of the pool the connection belongs to."""
        return self._cnx_pool.pool_name


class _QueueView:
    """``pool._cnx_queue``: the sizes that code written against mysql-connector reads."""

    def __init__(self, pool: MySQLConnectionPool) -> None:
        self._pool = pool

    @property
    def maxsize(self) -> int:
        return self._pool.pool_size

    def qsize(self) -> int:
        return self._pool._idle()

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return self.qsize() >= self.maxsize


class MySQLConnectionPool:
    """A pool of at most ``pool_size`` MySQL connections, as mysql-connector's, on millpond."""

    def __init__(
        self,
        pool_size: int = 5,
        pool_name: str | None = None,
        pool_reset_session: bool = True,
        *,
        timeout: float | None = None,
        pool_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Validate the size and name; with connection arguments, open ``pool_size``
        connections now. ``timeout`` and ``pool_options`` are millpond extensions."""
        self._pool_size: int = 0
        self._pool_name: str = ""
        self._reset_session = pool_reset_session
        self._set_pool_size(pool_size)
        self._set_pool_name(pool_name or generate_pool_name(**kwargs))
        self._cnx_config: dict[str, Any] = {}
        options = check_pool_options(pool_options)
        if timeout is not None:
            options["timeout"] = timeout
        options.setdefault("name", self._pool_name)
        self._options = options
        self._wait = options.get("timeout")
        self._budget = wait_budget(options, CONNECT_BUDGET)
        self._lock = threading.Lock()
        self._fill_lock = threading.Lock()  # one engine pool built or resized at a time
        # mysql-connector's pool holds the connections added to it (pool_size from the
        # constructor, then add_connection() one by one): that count is the limit here
        self._capacity = 0
        self._reserved = 0
        self._pool: millpond.Pool | None = None
        # lent connections by the engine pool that lent them: set_config() replaces the
        # engine pool, and the old one lives on until its last connection comes back
        self._lent_by: dict[millpond.Pool, int] = {}
        self._lent_raw: dict[int, tuple[Any, millpond.Pool]] = {}
        self._cnx_queue = _QueueView(self)
        reclaimer.start()
        on_fork(self._after_fork_in_child)
        if kwargs:
            self.set_config(**kwargs)
            with self._lock:
                self._capacity = self._pool_size
            self._fill()

    # -- the peer's properties and checks --------------------------------------------------

    @property
    def pool_name(self) -> str:
        """The name of the pool."""
        return self._pool_name

    @property
    def pool_size(self) -> int:
        """The most connections the pool manages."""
        return self._pool_size

    @property
    def reset_session(self) -> bool:
        """Whether a returned connection's session is reset."""
        return self._reset_session

    def _set_pool_size(self, pool_size: int) -> None:
        if pool_size <= 0 or pool_size > CNX_POOL_MAXSIZE:
            raise AttributeError(
                f"Pool size should be higher than 0 and lower or equal to {CNX_POOL_MAXSIZE}"
            )
        self._pool_size = pool_size

    def _set_pool_name(self, pool_name: str) -> None:
        if CNX_POOL_NAMEREGEX.search(pool_name):
            raise AttributeError(f"Pool name '{pool_name}' contains illegal characters")
        if len(pool_name) > CNX_POOL_MAXNAMESIZE:
            raise AttributeError(f"Pool name '{pool_name}' is too long")
        self._pool_name = pool_name

    # -- configuration ---------------------------------------------------------------------

    def set_config(self, **kwargs: Any) -> None:
        """Set the connection arguments. Invalid ones raise ``PoolError`` naming them.

        On a pool that holds connections, connections lent at the time are closed when they
        come back and new ones open with the new arguments: the pool holds the same number
        throughout, as mysql-connector's does by reconnecting them one by one.
        """
        if not kwargs:
            return
        try:
            # the peer's own validation: an unconnected connection checks the arguments
            _connector.connect().config(**kwargs)
        except AttributeError as err:
            raise PoolError(f"Connection configuration not valid: {err}") from err
        with self._lock:
            self._cnx_config = dict(kwargs)
            old = self._pool
            self._pool = None
            lent = self._lent_by.get(old, 0) if old is not None else 0
            if old is not None and not lent:
                del self._lent_by[old]
        if old is None:
            return  # like the peer, set_config() alone opens nothing
        if lent:
            old.resize(min_size=0, max_size=lent)
            old.drain()  # idle connections close now, lent ones when they come back
        else:
            old.close()
        self._fill(wait=False)

    def _adapter(self) -> Any:
        return resolve(_connector, self._cnx_config)

    def _effective(self) -> int:
        """Connections the current engine pool should hold: those lent by retired pools still
        count against the capacity. Call holding the lock."""
        retired = sum(n for p, n in self._lent_by.items() if p is not self._pool)
        return max(self._capacity - retired, 0)

    def _fill(self, wait: bool = True) -> None:
        """Bring the engine pool to the capacity, opening the connections now (``wait``), as
        the peer's ``add_connection`` does."""
        with self._fill_lock:
            self._fill_locked(wait)

    def _fill_locked(self, wait: bool) -> None:
        with self._lock:
            size = self._effective()
            pool = self._pool
        if pool is None:
            pool = open_pool(
                self._adapter(),
                min_size=size if wait else 0,
                max_size=max(size, 1),
                keep_min_size=True,
                options=self._options,
                reset="full" if self._reset_session else "rollback",
                # mysql-connector pings (is_connected) every connection it hands out
                ping_window=0.0,
            )
            with self._lock:
                self._pool = pool
                self._lent_by.setdefault(pool, 0)
            if wait:
                return
        if wait:
            fill(pool, size, self._budget)
        else:
            pool.resize(min_size=size, max_size=max(size, 1))

    # -- lending -----------------------------------------------------------------------------

    def _idle(self) -> int:
        """How many connections mysql-connector's queue would hold now."""
        return max(self._capacity - sum(self._lent_by.values()) - self._reserved, 0)

    def get_connection(self) -> PooledMySQLConnection:
        """A connection from the pool, checked (and reconnected if it died) first; raises
        ``PoolError`` at once when every connection is lent."""
        reclaimer.flush()
        with self._lock:
            pool = self._pool
            growing = pool is not None and self._idle() > 0
            if pool is None or (not growing and self._wait is None):
                raise PoolError(_EXHAUSTED)
            self._reserved += 1
        try:
            cnx = self._borrow(pool, growing)
        finally:
            with self._lock:
                self._reserved -= 1
        with self._lock:
            self._lent_by[pool] = self._lent_by.get(pool, 0) + 1
            self._lent_raw[id(cnx)] = (cnx, pool)
        return PooledMySQLConnection(self, cnx)

    def _borrow(self, pool: millpond.Pool, growing: bool) -> Any:
        budget = self._budget if growing or self._wait is None else float(self._wait)
        try:
            return borrow(pool, budget, growing=growing)
        except (PoolTimeout, TooManyWaiters, PoolClosed) as exc:
            if growing:
                raise PoolError(str(exc)) from exc
            raise PoolError(_EXHAUSTED) from exc
        except _errors.Error as err:
            # a connect here replaces a connection found dead: the peer reconnects it in
            # place, and says so this way when that fails
            raise _errors.InterfaceError(
                f"Can not reconnect to MySQL after 1 attempt(s): {err}"
            ) from err

    def _return(self, cnx: Any) -> bool:
        """Give back a connection this pool lent; False if it did not lend it (or it is back
        already)."""
        with self._lock:
            entry = self._lent_raw.get(id(cnx))
            if entry is None or entry[0] is not cnx:
                return False
            del self._lent_raw[id(cnx)]
            owner = entry[1]
        close_owner = False
        try:
            owner.putconn(cnx)  # reset (pool_reset_session) or rollback, in the engine
        finally:
            with self._lock:
                left = self._lent_by[owner] = self._lent_by[owner] - 1
                if owner is not self._pool and not left:
                    del self._lent_by[owner]
                    close_owner = True
            if close_owner:
                owner.close()
                if self._pool is not None:
                    self._fill(wait=False)  # the retired pool's share of the capacity is free
        return True

    def _return_dropped(self, cnx: Any) -> None:
        if self._return(cnx):
            log.warning(
                "pool %r: a PooledMySQLConnection was garbage-collected without close(); "
                "its connection is back in the pool",
                self._pool_name,
            )

    def add_connection(self, cnx: Any = None) -> None:
        """Add a connection: with none given, open one more (up to ``pool_size``); a
        connection this pool lent is given back. ``PoolError`` when the pool has no
        configuration or already holds ``pool_size`` idle connections."""
        with self._lock:
            if not self._cnx_config:
                raise PoolError("Connection configuration not available")
            if self._idle() >= self._pool_size:
                raise PoolError(_QUEUE_FULL)
            if cnx is not None and not isinstance(cnx, MYSQL_CNX_CLASS):
                raise PoolError("Connection instance not subclass of MySQLConnectionAbstract")
        if cnx is not None:
            if not self._return(cnx):
                raise PoolError(
                    "add_connection(): millpond cannot adopt a connection it did not open; "
                    "call add_connection() without one to open a new connection"
                )
            return
        with self._lock:
            # mysql-connector would hold one connection more than pool_size here, and raise
            # from the close() of a lent one later: the pool stays at pool_size instead
            if self._capacity >= self._pool_size:
                return
            self._capacity += 1
        try:
            self._fill()
        except BaseException:
            with self._lock:
                self._capacity -= 1
                pool, size = self._pool, self._effective()
            if pool is not None:
                pool.resize(min_size=size, max_size=max(size, 1))
            raise

    def _remove_connections(self) -> int:
        """Close the idle connections; return how many (mysql-connector's test helper)."""
        reclaimer.flush()
        with self._lock:
            removed = self._idle()
            self._capacity -= removed
            pool = self._pool
            size = self._effective()
            if pool is not None and not size and not self._lent_by.get(pool):
                self._pool = None
                del self._lent_by[pool]
                pool.close()  # nothing lent: closes at once
            elif pool is not None:
                pool.resize(min_size=size, max_size=max(size, 1))
        return removed

    def _after_fork_in_child(self) -> None:
        # the engine pool starts afresh in a child: what the parent lent is not lent here
        self._lock = threading.Lock()
        self._fill_lock = threading.Lock()
        inherited.append(self._lent_raw)
        self._lent_raw = {}
        self._lent_by = {} if self._pool is None else {self._pool: 0}
        self._reserved = 0

    # -- millpond extensions ----------------------------------------------------------------

    def close(self) -> None:
        """Close the pool: idle connections now, lent ones when they come back."""
        with self._lock:
            self._capacity = 0
            pools = list(self._lent_by)
            if self._pool is not None and self._pool not in pools:
                pools.append(self._pool)
            self._pool = None
        for pool in pools:
            pool.close(timeout=0)

    def stats(self) -> millpond.PoolStats | None:
        """The engine pool's :meth:`millpond.Pool.stats` (None before it holds connections)."""
        pool = self._pool
        return None if pool is None else pool.stats()

    @property
    def millpond_pool(self) -> millpond.Pool | None:
        """The engine pool underneath (None while the pool holds no connection)."""
        return self._pool

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._pool_name!r} pool_size={self._pool_size} "
            f"idle={self._idle()}>"
        )
