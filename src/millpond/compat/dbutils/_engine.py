"""What PooledDB and PersistentDB share: the creator read the way DBUtils reads it, and the
engine pool with the bookkeeping of DBUtils' "steady" connections (usage counts, failures,
ping)."""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import millpond
from millpond.compat._reclaim import inherited, reclaimer
from millpond.compat._shared import (
    CONNECT_BUDGET,
    borrow,
    check_pool_options,
    open_pool,
    wait_budget,
)
from millpond.drivers import SyncAdapter
from millpond.drivers.url import resolve

_PING_ERROR = (
    "'ping' must be an integer, an SQL statement, a callable,"
    " or a tuple with an integer and one of the latter."
)
#: the engine needs a bound; DBUtils' maxconnections=0 means none
UNLIMITED = 1 << 30

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


def threadsafety_of(creator: Any) -> int:
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


class Engine:
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
        self.threadsafety = threadsafety_of(creator)
        self.dbapi = _dbapi_of(creator)
        self.failures: Any = failures if failures is not None else _failures_of(self.dbapi)
        self.options = check_pool_options(pool_options)
        self.budget = wait_budget(self.options, CONNECT_BUDGET)
        self.wait = wait_budget(self.options)
        self.max_size = max_size
        self.adapter = _adapter_for(creator, args, dict(kwargs))
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
        return borrow(pool, budget, growing=growing), pool

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
            if len(self.usage) > 2 * (self.max_size if self.max_size < UNLIMITED else 64):
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

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        inherited.append(self.usage)
        self.usage = {}
