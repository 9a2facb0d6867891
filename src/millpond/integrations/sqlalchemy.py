"""SQLAlchemy pool classes running on millpond's engine.

::

    from millpond.integrations.sqlalchemy import AsyncMillpondPool, MillpondPool

    engine = create_engine(url, poolclass=MillpondPool, pool_size=5, max_overflow=10,
                           pool_timeout=30, pool_recycle=1800, pool_pre_ping=True)
    engine = create_async_engine(url, poolclass=AsyncMillpondPool, pool_size=5)

Design: what millpond pools here
--------------------------------
Both classes subclass :class:`sqlalchemy.pool.Pool` and implement its subclass protocol
(``_do_get`` / ``_do_return_conn``, as ``QueuePool`` does), so everything above that protocol is
SQLAlchemy's own code, unchanged: the ``_ConnectionFairy`` proxy, pool events, reset on return,
``pool_pre_ping`` through the dialect's ``do_ping``, invalidation, ``info``/``record_info``.

The objects millpond lends are SQLAlchemy's connection records (``ConnectionPoolEntry``), not
raw DBAPI connections. The record is what all of the machinery above hangs on; lending raw
connections would mean building a record per checkout (``info`` lost at every checkin, the
``connect`` event fired at the wrong time) or keeping a side table from connection to record.
So the millpond pool's target is a driver adapter whose ``connect()`` makes a record
(``Pool._create_connection``: the engine's creator, then the ``first_connect`` and ``connect``
events) and whose ``close()`` closes one (the ``close`` event).

Who decides what:

* millpond: sizing (``pool_size`` -> ``max_size``, ``max_overflow``), waiting (strict FIFO,
  bounded by ``pool_timeout``; connects below the limit by ``CONNECT_TIMEOUT``), lifetimes
  (``pool_recycle`` -> ``max_lifetime``, jittered, retired on return or while idle rather than
  at the next checkout), connect backoff while the server is down, fork safety, and the
  opt-in extensions below (leak reports, idle retirement, keepalive, max uses, load shedding).
* SQLAlchemy: the pre-ping, reset on return, events, and invalidation. Its reset runs in
  ``_finalize_fairy`` before the record reaches ``_do_return_conn``, so millpond's own reset is
  off (``reset=None``) and the adapter reports every returned record as idle: one rollback per
  checkin, not two. Its recycle check stays off (``recycle=-1``): millpond retires by age.
* A record that comes back invalidated (no DBAPI connection) is discarded: its slot goes back
  to millpond, which opens a replacement only when someone needs it. The dead record is kept
  aside and reconnected for that replacement, so ``record_info`` survives invalidation and
  recycling as it does in ``QueuePool``. A pool-wide invalidation (a disconnect, a failed
  pre-ping) is SQLAlchemy's: older records reconnect in place at their next checkout, exactly
  as in ``QueuePool``.

Returns from the garbage collector (a ``Connection`` dropped without ``close()``, collected in
a reference cycle) can run inside any allocation, including one made while millpond holds its
lock; that lock is not reentrant (``QueuePool`` uses an ``RLock`` for this very case). Such
returns are handed to a thread (sync) or to the event loop (async) instead of being done in
place.

The async twin
--------------
SQLAlchemy's async engines run the synchronous engine inside greenlets: the pool's
``_do_get`` is called in a greenlet and may wait with ``await_()``. ``AsyncMillpondPool``
awaits a :class:`millpond.AsyncPool` that way; millpond's tasks open and close records inside
``greenlet_spawn`` so that the dialect's connect, the ``connect`` events and ``close`` can
``await_`` the driver. The millpond pool binds to the event loop of the first checkout (an
engine built at import time works); using the engine from another loop raises
``millpond.WrongEventLoop`` at once: ``await engine.dispose()`` first, which gives the engine a
fresh pool (``dispose()`` from a loop other than the pool's drops the old connections without
I/O, since they can only be closed on their own loop).

Extensions
----------
Keyword arguments ``create_engine`` passes straight through to the pool: ``min_size`` (0),
``max_idle`` (None: idle connections are kept, as in ``QueuePool``), ``max_uses`` (0),
``max_waiting`` (0: unbounded), ``leak_timeout`` (None), ``keepalive`` (None). ``pool.stats()``
returns millpond's :class:`millpond.PoolStats`.

Errors
------
A checkout that times out raises :class:`PoolTimeoutError`, a ``sqlalchemy.exc.TimeoutError``
with QueuePool's message shape and error code that is also a :class:`millpond.PoolTimeout`:
code written for either library catches it, and millpond's own error is its ``__cause__``. A
caller shed by ``max_waiting`` gets :class:`TooManyWaitersError` (``sqlalchemy.exc.TimeoutError``
and :class:`millpond.TooManyWaiters`). A failed connect raises the driver's error, which the
engine wraps as it does QueuePool's (``OperationalError``, ``connection_invalidated``). An
invalid pool argument raises :class:`PoolArgumentError` (``sqlalchemy.exc.ArgumentError`` and
:class:`millpond.ConfigError`) from ``create_engine``, naming the argument as ``create_engine``
spells it; QueuePool accepts such values and fails later, or never. ``pool_timeout=None``
waits for a return forever, as in QueuePool.

Differences from QueuePool
--------------------------
* Idle connections are lent most-recently-used first (``pool_use_lifo`` is accepted and has no
  effect): the surplus stays idle long enough for ``max_idle`` to retire it.
* An overflow connection is closed at the first return that finds ``pool_size`` connections
  open; ``QueuePool`` keeps returned connections until ``pool_size`` are *idle* and closes a
  later one, so between "all out" and "all back" ``checkedin()``/``overflow()`` and the
  number of server sessions can be lower here. ``checkedout()`` is the same throughout.
* ``pool_timeout`` bounds the wait for a return, as in ``QueuePool``, and a checkout below the
  limit waits for its connect (``pool_timeout=0`` included) up to ``CONNECT_TIMEOUT`` (30 s)
  where ``QueuePool`` has no bound but the driver's. millpond's deadline covers queue and
  connect alike, so this is decided after it runs out, from whether the pool was below its
  limit: while the pool fills with slow connects, a caller whose slot went to other callers'
  connects in flight waits for them instead of timing out at ``pool_timeout``.
* Connects and closes run in millpond's worker threads (or tasks), so the ``connect``,
  ``first_connect`` and ``close`` events fire there, not in the borrower's thread.
* While connects fail, callers get the last connect error at once until a backoff (at most
  1 s) has passed, instead of each trying to connect.
* ``dispose()`` closes the idle connections (and waits for them to close, up to 5 s); checked
  out ones are closed when they come back rather than kept. ``status()`` goes on counting them
  until then, where ``QueuePool`` forgets them.
* The timeout error says ``MillpondPool limit of size ...`` (the class name) and adds
  millpond's diagnostics (in use, idle, waiting, and with ``leak_timeout`` the oldest borrower).
* With ``leak_timeout``, millpond records the borrower's stack from its own caller, which is
  ``_do_get`` here: the report shows SQLAlchemy's frames first, and through the ORM the
  application's frame can fall outside the 12 frames kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import ConnectionPoolEntry, Pool
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.concurrency import in_greenlet

try:
    from sqlalchemy.util import await_
except ImportError:  # SQLAlchemy 2.0 calls it await_only (2.1 keeps that name, deprecated)
    from sqlalchemy.util import await_only as await_

import millpond
from millpond.drivers import SyncAdapter, TxStatus
from millpond.drivers.async_base import AsyncAdapter
from millpond.errors import (
    ConfigError,
    ConnectError,
    PoolError,
    PoolTimeout,
    TooManyWaiters,
    WrongEventLoop,
)

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import Dialect
    from sqlalchemy.event import _DispatchCommon
    from sqlalchemy.log import _EchoFlagType
    from sqlalchemy.pool.base import (
        _ConnDialect,
        _ConnectionRecord,
        _CreatorFnType,
        _CreatorWRecFnType,
        _ResetStyleArgType,
    )

__all__ = [
    "AsyncMillpondPool",
    "MillpondPool",
    "PoolArgumentError",
    "PoolTimeoutError",
    "TooManyWaitersError",
]

log = logging.getLogger("millpond")

#: stands for "no limit" (``pool_size=0``, ``max_overflow=-1``) in millpond's integer bounds
_UNBOUNDED = 2**31 - 1
#: how long ``dispose()`` waits for the idle connections it closes
DISPOSE_TIMEOUT = 5.0
#: how long a checkout may wait for a connect once ``pool_timeout`` has run out with the pool
#: below its limit (QueuePool's ``pool_timeout`` bounds only the wait for a return)
CONNECT_TIMEOUT = 30.0
#: at most this many invalidated records are kept aside for reuse
_SPARE_CAP = 64

_P = TypeVar("_P", bound="_MillpondPoolBase")


# -- errors: SQLAlchemy's types, and millpond's too ----------------------------------------------


class PoolTimeoutError(sa_exc.TimeoutError, PoolTimeout):
    """A checkout timed out. ``sqlalchemy.exc.TimeoutError`` (what code written for QueuePool
    catches, with QueuePool's message and error code) and :class:`millpond.PoolTimeout` (and so
    the builtin ``TimeoutError``) at once; millpond's own error is chained as ``__cause__``."""


class TooManyWaitersError(sa_exc.TimeoutError, TooManyWaiters):
    """``max_waiting`` callers were already queued: ``sqlalchemy.exc.TimeoutError`` (QueuePool
    has no load shedding, a refusal is its nearest kind of failure) and
    :class:`millpond.TooManyWaiters`."""


class PoolArgumentError(sa_exc.ArgumentError, ConfigError):
    """An invalid pool argument of ``create_engine``: ``sqlalchemy.exc.ArgumentError`` and
    :class:`millpond.ConfigError` (a ``ValueError``). The message names the argument as
    ``create_engine`` spells it (``pool_timeout``, not millpond's ``timeout``)."""


#: millpond's option -> the create_engine argument it comes from, for error messages
_ARGUMENT_NAMES = {
    "timeout": "pool_timeout",
    "max_size": "pool_size",
    "max_lifetime": "pool_recycle",
}


def _argument_error(exc: ConfigError) -> PoolArgumentError:
    text = str(exc)
    option, sep, rest = text.partition("=")
    if sep and option in _ARGUMENT_NAMES:
        text = f"{_ARGUMENT_NAMES[option]}={rest}"
    return PoolArgumentError(text)


def _check_arguments(pool_size: Any, max_overflow: Any, timeout: Any, recycle: Any) -> None:
    """What millpond cannot word in create_engine's terms: the arguments converted here."""
    if not _is_int(pool_size) or pool_size < 0:
        raise PoolArgumentError(f"pool_size={pool_size!r} must be an integer >= 0 (0: no limit)")
    if not _is_int(max_overflow):
        raise PoolArgumentError(
            f"max_overflow={max_overflow!r} must be an integer (negative: no limit)"
        )
    if timeout is not None and not _is_number(timeout):
        raise PoolArgumentError(
            f"pool_timeout={timeout!r} must be a number of seconds, or None to wait forever"
        )
    if not _is_number(recycle):
        raise PoolArgumentError(
            f"pool_recycle={recycle!r} must be a number of seconds (negative: never)"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- returns from inside the garbage collector -----------------------------------------------


class _GcReturns:
    """Knows whether the cyclic garbage collector is running, and returns the records it
    releases from a thread of its own.

    A finalizer runs inside whatever allocation triggered the collection, possibly in a thread
    that holds millpond's (non-reentrant) lock: returning the record there could deadlock. The
    queue is a ``SimpleQueue`` because its ``put`` is safe from finalizers; the thread is
    started from ordinary code (pool construction), never from the collector.
    """

    def __init__(self) -> None:
        self.collecting = False
        self._queue: SimpleQueue[tuple[MillpondPool, ConnectionPoolEntry]] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        gc.callbacks.append(self._phase)

    def _phase(self, phase: str, info: dict[str, int]) -> None:
        self.collecting = phase == "start"

    def start(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._start_lock:  # after fork() the thread is gone: start another
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="millpond-sqlalchemy-returns", daemon=True
                )
                self._thread.start()

    def after_fork_in_child(self) -> None:
        # the parent's thread is gone, its lock may have been held, and what it had queued
        # belongs to connections the child's pools have forgotten
        started = self._thread is not None
        self._start_lock = threading.Lock()
        self._queue = SimpleQueue()
        self._thread = None
        if started:
            self.start()

    def defer(self, pool: MillpondPool, record: ConnectionPoolEntry) -> None:
        self._queue.put((pool, record))

    def _run(self) -> None:
        while True:
            pool, record = self._queue.get()
            try:
                pool._return_now(record)
            except Exception:
                log.exception(
                    "a connection released by the garbage collector could not be returned"
                )
            del pool, record


_gc_returns = _GcReturns()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_gc_returns.after_fork_in_child)


# -- sizing ----------------------------------------------------------------------------------


def _bounds(pool_size: int, max_overflow: int) -> tuple[int, int]:
    """millpond's ``max_size`` and ``max_overflow`` for QueuePool's arguments."""
    if pool_size == 0:  # QueuePool: no limit at all, and every returned connection is kept
        return _UNBOUNDED, 0
    if max_overflow < 0:  # QueuePool: no limit on overflow
        return pool_size, _UNBOUNDED
    return pool_size, max_overflow


def _lifetime(recycle: float) -> float | None:
    if recycle < 0:
        return None
    # recycle=0 makes QueuePool reconnect at every checkout: a lifetime that is always over
    return float(recycle) if recycle > 0 else 1e-9


# -- the driver adapters: connections are SQLAlchemy's connection records --------------------


class _Records:
    """Bookkeeping shared by both adapters: which records millpond owns, and dead records kept
    aside for reuse (so that ``record_info`` outlives a reconnect, as in QueuePool).

    A record that comes back invalidated is put aside as soon as millpond has let go of it,
    so that the connect that replaces it reuses it; millpond's close of it, still on its way,
    is then skipped (it would be a no-op on the dead record, and must not reach the record
    once it is reconnected). ``pending`` holds those closes to skip.
    """

    def __init__(self, pool: _MillpondPoolBase, spare_cap: int) -> None:
        self.pool_ref = weakref.ref(pool)
        self.owned: dict[int, ConnectionPoolEntry] = {}
        self.spare: collections.deque[ConnectionPoolEntry] = collections.deque()
        self.spare_cap = spare_cap
        self.pending: set[int] = set()
        self.changed = threading.Condition()

    def pool(self) -> _MillpondPoolBase:
        pool = self.pool_ref()
        if pool is None:  # only a worker finishing after the pool was dropped gets here
            raise PoolError("the SQLAlchemy pool this connection was for no longer exists")
        return pool

    def take_spare(self) -> _ConnectionRecord | None:
        try:
            return cast("_ConnectionRecord", self.spare.pop())
        except IndexError:
            return None

    def opened(self, record: ConnectionPoolEntry) -> None:
        self.owned[id(record)] = record

    def released(self, record: ConnectionPoolEntry) -> None:
        with self.changed:
            if self.owned.pop(id(record), None) is not None and (
                record.dbapi_connection is None
                and not record.in_use
                and len(self.spare) < self.spare_cap
            ):
                self.spare.append(record)
            self.changed.notify_all()

    def discarded(self, record: ConnectionPoolEntry) -> None:
        """millpond has taken back an invalidated record (and will close it)."""
        with self.changed:
            # not owned any more: its close already ran, and put it aside if there was room
            if self.owned.pop(id(record), None) is None:
                return
            if not record.in_use and len(self.spare) < self.spare_cap:
                self.pending.add(id(record))
                self.spare.append(record)
            self.changed.notify_all()

    def skip_close(self, record: ConnectionPoolEntry) -> bool:
        with self.changed:
            if id(record) in self.pending:
                self.pending.discard(id(record))
                return True
            return False

    def forget(self, record: ConnectionPoolEntry) -> None:
        """A record dropped without a close that is sure to be the last thing done with it:
        it is not kept for reuse (a close of it may still be on its way)."""
        with self.changed:
            self.owned.pop(id(record), None)
            self.changed.notify_all()

    def unsettled(self, size: int) -> bool:
        """Are records still waiting to be closed? (millpond owns ``size`` of them.)"""
        return len(self.owned) > size

    def settle(self, size: Callable[[], int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            target = size()  # millpond's lock is not taken under ours
            with self.changed:
                if not self.unsettled(target):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.05))


def _ping_record(pool: _MillpondPoolBase, record: ConnectionPoolEntry) -> None:
    """millpond's keepalive ping: the dialect's ``do_ping``, then a rollback, because the ping
    may have begun a transaction that must not be waiting for the next borrower."""
    dbapi = record.dbapi_connection
    if dbapi is None:
        raise PoolError("the connection was invalidated")
    dialect = pool._dialect
    do_ping = getattr(dialect, "do_ping", None)
    if do_ping is None:  # a pool built without an engine: the stub dialect cannot ping
        cur = dbapi.cursor()
        try:
            cur.execute("SELECT 1")
        finally:
            cur.close()
    elif not do_ping(dbapi):
        raise PoolError("the dialect's ping failed")
    dbapi.rollback()


class _RecordAdapter(SyncAdapter):
    """millpond's view of a SQLAlchemy pool: a "connection" is a connection record."""

    name = "sqlalchemy"

    def __init__(self, pool: _MillpondPoolBase, spare_cap: int) -> None:
        super().__init__(self.connect, description=_describe(pool))
        self.records = _Records(pool, spare_cap)

    def connect(self) -> ConnectionPoolEntry:
        records = self.records
        pool = records.pool()
        spare = records.take_spare()
        if spare is None:
            record = pool._create_connection()
        else:
            try:
                spare.get_connection()  # reconnects: info cleared, record_info kept
            except BaseException:
                records.spare.append(spare)
                raise
            record = spare
        records.opened(record)
        return record

    def close(self, conn: Any) -> None:
        if self.records.skip_close(conn):
            return
        try:
            conn.close()
        finally:
            self.records.released(conn)

    def is_closed(self, conn: Any) -> bool:
        return conn.dbapi_connection is None

    def ping(self, conn: Any) -> None:
        _ping_record(self.records.pool(), conn)

    def status(self, conn: Any) -> TxStatus:
        # SQLAlchemy reset the connection before returning it: nothing is left to roll back
        return TxStatus.IDLE

    def get_autocommit(self, conn: Any) -> bool | None:
        return None  # SQLAlchemy restores isolation levels and autocommit itself

    def set_autocommit(self, conn: Any, value: bool) -> None:
        pass


class _AsyncRecordAdapter(AsyncAdapter):
    """The async twin: records are made and closed inside ``greenlet_spawn`` so that the
    dialect (and event listeners) can ``await_`` the driver."""

    name = "sqlalchemy-async"

    def __init__(self, pool: _MillpondPoolBase, spare_cap: int) -> None:
        super().__init__(self.connect, description=_describe(pool))
        self.records = _Records(pool, spare_cap)

    async def connect(self) -> ConnectionPoolEntry:
        records = self.records
        pool = records.pool()
        spare = records.take_spare()
        if spare is None:
            record: ConnectionPoolEntry = await greenlet_spawn(pool._create_connection)
        else:
            try:
                await greenlet_spawn(spare.get_connection)
            except BaseException:
                records.spare.append(spare)
                raise
            record = spare
        records.opened(record)
        return record

    async def close(self, conn: Any) -> None:
        if self.records.skip_close(conn):
            return
        try:
            await greenlet_spawn(conn.close)
        finally:
            self.records.released(conn)

    def terminate(self, conn: Any) -> None:
        # outside a greenlet the dialect's terminate drops the connection without waiting;
        # a close that was cut off has already let go of it (dbapi_connection is None)
        try:
            if conn.dbapi_connection is not None:
                conn.invalidate()
        finally:
            self.records.forget(conn)

    def is_closed(self, conn: Any) -> bool:
        return conn.dbapi_connection is None

    async def ping(self, conn: Any) -> None:
        await greenlet_spawn(_ping_record, self.records.pool(), conn)

    def status(self, conn: Any) -> TxStatus:
        return TxStatus.IDLE

    def get_autocommit(self, conn: Any) -> bool | None:
        return None

    async def set_autocommit(self, conn: Any, value: bool) -> None:
        pass


def _describe(pool: Pool) -> str:
    name = getattr(pool._dialect, "name", None)
    return f"sqlalchemy:{name}" if name else "sqlalchemy"


# -- the pools -------------------------------------------------------------------------------


class _MillpondPoolBase(Pool):
    """What the sync and async pools share: arguments, sizing, gauges, errors, recreate."""

    _mp: millpond.Pool | millpond.AsyncPool
    _mp_records: _Records

    def __init__(
        self,
        creator: _CreatorFnType | _CreatorWRecFnType,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float | None = 30.0,
        use_lifo: bool = False,
        recycle: float = -1,
        echo: _EchoFlagType = None,
        logging_name: str | None = None,
        reset_on_return: _ResetStyleArgType = True,
        events: list[tuple[Callable[..., Any], str]] | None = None,
        dialect: _ConnDialect | Dialect | None = None,
        pre_ping: bool = False,
        _dispatch: _DispatchCommon[Pool] | None = None,
        # millpond's extensions; no keyword-only arguments, which create_engine cannot see
        min_size: int = 0,
        max_idle: float | None = None,
        max_uses: int = 0,
        max_waiting: int = 0,
        leak_timeout: float | None = None,
        keepalive: float | None = None,
    ) -> None:
        _check_arguments(pool_size, max_overflow, timeout, recycle)
        # recycle=-1: SQLAlchemy's check at checkout stays off, millpond retires by age
        Pool.__init__(
            self,
            creator,
            recycle=-1,
            echo=echo,
            logging_name=logging_name,
            reset_on_return=reset_on_return,
            events=events,
            dialect=dialect,
            pre_ping=pre_ping,
            _dispatch=_dispatch,
        )
        max_size, overflow = _bounds(pool_size, max_overflow)
        self._pool_size = pool_size
        self._max_overflow = -1 if pool_size == 0 else max_overflow
        self._timeout = timeout
        self._use_lifo = use_lifo
        self._mp_recycle = recycle
        self._mp_extras: dict[str, Any] = {
            "min_size": min_size,
            "max_idle": max_idle,
            "max_uses": max_uses,
            "max_waiting": max_waiting,
            "leak_timeout": leak_timeout,
            "keepalive": keepalive,
        }
        self._mp_options: dict[str, Any] = {
            **self._mp_extras,
            "max_size": max_size,
            "max_overflow": overflow,
            # None: QueuePool waits forever
            "timeout": math.inf if timeout is None else timeout,
            "max_lifetime": _lifetime(recycle),
            "pre_ping": False,  # SQLAlchemy's pre-ping (the dialect's do_ping) does it
            "reset": None,  # SQLAlchemy's reset on return does it
            "name": logging_name,
        }
        self._mp_open = False
        self._mp_cap = max_size + overflow
        self._mp_spare_cap = min(self._mp_cap, _SPARE_CAP)
        try:
            self._mp = self._new_engine_pool()
        except ConfigError as exc:
            raise _argument_error(exc) from exc

    def _new_engine_pool(self) -> millpond.Pool | millpond.AsyncPool:
        raise NotImplementedError

    # -- QueuePool's API -------------------------------------------------------------------

    def recreate(self: _P) -> _P:
        self.logger.info("Pool recreating")
        return type(self)(
            self._creator,
            pool_size=self._pool_size,
            max_overflow=self._max_overflow,
            timeout=self._timeout,
            use_lifo=self._use_lifo,
            recycle=self._mp_recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            pre_ping=self._pre_ping,
            _dispatch=self.dispatch,
            dialect=self._dialect,
            **self._mp_extras,
        )

    def _gauges(self) -> tuple[int, int, int, int]:
        """size, checkedin, overflow, checkedout from one snapshot. A connect in flight counts
        as made and checked out, as QueuePool counts one while its caller is connecting."""
        st = self._mp.stats()
        made = st.size + st.opening
        overflow = made - self._pool_size if self._pool_size else 0
        return self._pool_size, st.idle, overflow, st.in_use + st.opening

    def status(self) -> str:
        size, checkedin, overflow, checkedout = self._gauges()
        # QueuePool's wording, double space included: log parsers and tests match on it
        return (
            f"Pool size: {size}  Connections in pool: {checkedin} "
            f"Current Overflow: {overflow} Current Checked out connections: {checkedout}"
        )

    def size(self) -> int:
        return self._pool_size

    def timeout(self) -> float | None:
        return self._timeout

    def _timeout_text(self) -> str:
        return "None" if self._timeout is None else f"{self._timeout:0.2f}"

    def checkedin(self) -> int:
        return self._gauges()[1]

    def overflow(self) -> int:
        return self._gauges()[2]

    def checkedout(self) -> int:
        return self._gauges()[3]

    # -- millpond's extras -----------------------------------------------------------------

    def stats(self) -> millpond.PoolStats:
        """millpond's snapshot: gauges and counters (timeouts, connects, closes by reason)."""
        return self._mp.stats()

    # -- errors ----------------------------------------------------------------------------

    def _may_connect(self) -> bool:
        """After millpond's deadline: was the pool below its limit? Then QueuePool would have
        been connecting rather than waiting, with no bound but the driver's, and the caller
        goes on waiting for a connect (``pool_timeout=0`` included: never queue, but do
        connect). At the limit it was a genuine wait for a return, and the timeout stands."""
        return self._mp.stats().size < self._mp_cap

    def _checkout_error(self, exc: PoolError, connecting: bool = False) -> BaseException:
        if isinstance(exc, ConnectError) and exc.__cause__ is not None:
            # the driver's own error, so that the engine wraps it (OperationalError,
            # is_disconnect) as it wraps QueuePool's; it is shared by the callers of one
            # backoff period, hence the fresh traceback
            return exc.__cause__.with_traceback(None)
        if isinstance(exc, (PoolTimeout, TooManyWaiters)):
            name = type(self).__name__
            if connecting:  # the limit was not reached: the connect did not finish
                text = (
                    f"{name} could not open a connection within {CONNECT_TIMEOUT:g}s "
                    f"(below its limit of size {self.size()} overflow {self._max_overflow}, "
                    f"timeout {self._timeout_text()}); {exc}"
                )
            else:
                what = (
                    "connection timed out"
                    if isinstance(exc, PoolTimeout)
                    else "too many callers waiting"
                )
                text = (
                    f"{name} limit of size {self.size()} overflow {self.overflow()} reached, "
                    f"{what}, timeout {self._timeout_text()}; {exc}"
                )
            kind = PoolTimeoutError if isinstance(exc, PoolTimeout) else TooManyWaitersError
            error = kind(text, code="3o7r")
            error.__cause__ = exc
            return error
        return exc


class MillpondPool(_MillpondPoolBase):
    """A :class:`sqlalchemy.pool.Pool` on :class:`millpond.Pool`, with QueuePool's arguments:
    ``create_engine(url, poolclass=MillpondPool, pool_size=5, max_overflow=10, ...)``."""

    _is_asyncio = False
    _mp: millpond.Pool

    def _new_engine_pool(self) -> millpond.Pool:
        _gc_returns.start()
        adapter = _RecordAdapter(self, self._mp_spare_cap)
        self._mp_records = adapter.records
        return millpond.Pool(adapter, open=False, **self._mp_options)

    def _do_get(self) -> ConnectionPoolEntry:
        mp = self._mp
        if not self._mp_open:
            mp.open()  # on first use: an engine never used starts no threads
            self._mp_open = True
        try:
            return cast(ConnectionPoolEntry, mp.getconn())
        except PoolTimeout as exc:
            error = self._checkout_error(exc)
            retry = self._may_connect()
        except PoolError as exc:
            error = self._checkout_error(exc)
            retry = False
        if retry:
            try:
                return cast(ConnectionPoolEntry, mp.getconn(CONNECT_TIMEOUT))
            except PoolError as exc:
                error = self._checkout_error(exc, connecting=True)
        raise error  # outside the handler: a shared driver error gets no __context__

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        if _gc_returns.collecting:
            _gc_returns.defer(self, record)
        else:
            self._return_now(record)

    def _return_now(self, record: ConnectionPoolEntry) -> None:
        if record.dbapi_connection is None:
            # invalidated or detached: the slot is given back, the record kept for reuse
            self._mp.putconn(record, True)
            self._mp_records.discarded(record)
        else:
            self._mp.putconn(record)

    def dispose(self) -> None:
        """Close the idle connections now (waiting for them, up to 5 s); checked-out ones
        are closed when they come back. The pool stays usable."""
        if self._mp_open:
            self._mp.drain()
            if not self._mp_records.settle(lambda: self._mp.stats().size, DISPOSE_TIMEOUT):
                log.warning(
                    "pool %r: dispose() gave up waiting for connections to close", self._mp.name
                )
        self.logger.info("Pool disposed. %s", self.status())


class AsyncMillpondPool(_MillpondPoolBase):
    """The async twin, on :class:`millpond.AsyncPool`:
    ``create_async_engine(url, poolclass=AsyncMillpondPool, pool_size=5, ...)``."""

    _is_asyncio = True
    _mp: millpond.AsyncPool

    #: the loop the millpond pool was opened on, and returns scheduled on it
    _mp_loop: asyncio.AbstractEventLoop | None = None
    _mp_tasks: set[asyncio.Task[None]]

    def _new_engine_pool(self) -> millpond.AsyncPool:
        self._mp_loop = None  # a new millpond pool binds to the loop of its first checkout
        self._mp_tasks = set()
        adapter = _AsyncRecordAdapter(self, self._mp_spare_cap)
        self._mp_records = adapter.records
        return millpond.AsyncPool(adapter, open=False, **self._mp_options)

    async def _open(self) -> None:
        await self._mp.open()
        self._mp_loop = asyncio.get_running_loop()
        self._mp_open = True

    def _do_get(self) -> ConnectionPoolEntry:
        if not self._mp_open:
            await_(self._open())
        retry = False
        try:
            return cast(ConnectionPoolEntry, await_(self._mp.getconn()))
        except WrongEventLoop as exc:
            error: BaseException = WrongEventLoop(
                f"{exc}; an engine's pool serves one event loop: "
                "`await engine.dispose()` before using the engine from another loop"
            )
            error.__cause__ = exc
        except PoolTimeout as exc:
            error = self._checkout_error(exc)
            retry = self._may_connect()
        except PoolError as exc:
            error = self._checkout_error(exc)
        if retry:
            try:
                return cast(ConnectionPoolEntry, await_(self._mp.getconn(CONNECT_TIMEOUT)))
            except PoolError as exc:
                error = self._checkout_error(exc, connecting=True)
        raise error

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        if _gc_returns.collecting or not in_greenlet():
            # the garbage collector, or a detach outside the engine: no awaiting here
            self._return_later(record)
            return
        await_(self._put(record))

    async def _put(self, record: ConnectionPoolEntry) -> None:
        if record.dbapi_connection is None:
            await self._mp.putconn(record, True)
            self._mp_records.discarded(record)
        else:
            await self._mp.putconn(record)

    def _return_later(self, record: ConnectionPoolEntry) -> None:
        loop = self._mp_loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop took its connections with it
            loop.call_soon_threadsafe(self._spawn_return, record)

    def _spawn_return(self, record: ConnectionPoolEntry) -> None:
        task = asyncio.ensure_future(self._put(record))
        self._mp_tasks.add(task)
        task.add_done_callback(self._returned_later)

    def _returned_later(self, task: asyncio.Task[None]) -> None:
        self._mp_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "pool %r: a connection could not be returned: %r", self._mp.name, task.exception()
            )

    def dispose(self) -> None:
        """Close the idle connections (waiting for them, up to 5 s); checked-out ones are
        closed when they come back. From another event loop than the pool's, the pool's
        connections are dropped without I/O and the pool starts afresh on the current loop."""
        if self._mp_open:
            if self._mp_loop is not _running_loop():
                log.warning(
                    "pool %r: dispose() from another event loop: its connections belong to "
                    "the loop that opened them and are dropped without being closed",
                    self._mp.name,
                )
                self._mp_open = False
                self._mp_loop = None
                self._mp = self._new_engine_pool()
            else:
                await_(self._drain())
        self.logger.info("Pool disposed. %s", self.status())

    async def _drain(self) -> None:
        await self._mp.drain()
        deadline = time.monotonic() + DISPOSE_TIMEOUT
        while self._mp_records.unsettled(self._mp.stats().size):
            if time.monotonic() >= deadline:
                log.warning(
                    "pool %r: dispose() gave up waiting for connections to close", self._mp.name
                )
                return
            await asyncio.sleep(0.005)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
