"""Drop-in layers for code written against psycopg2.pool, mysql.connector.pooling and DBUtils.

Each layer keeps its peer's names, signatures, return types, exceptions and observable
behaviour, and lends connections from a :class:`millpond.Pool` underneath::

    from millpond.compat import psycopg2 as pool          # was: from psycopg2 import pool
    from millpond.compat import mysql as pooling          # was: from mysql.connector import pooling
    from millpond.compat.dbutils import PooledDB          # was: from dbutils.pooled_db import PooledDB

The layers use millpond's public API only. What they share lives here: opening the engine pool
the way the peers open theirs (synchronously, raising the driver's own error), borrowing under
the peer's own limit, and giving back connections whose proxy was dropped without ``close()``.
See ``docs/migrating.md`` for what stays identical and what could not.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from queue import Empty, SimpleQueue
from typing import Any

import millpond
from millpond.drivers import SyncAdapter
from millpond.errors import ConfigError, ConnectError, PoolTimeout

__all__: list[str] = []

log = logging.getLogger("millpond")

#: seconds a borrower waits for a connection the pool is opening for it, when the user set no
#: ``timeout``: the peers connect on the caller's thread with no bound of their own, so this is
#: only a backstop for a server that accepts TCP and never answers
CONNECT_BUDGET = 30.0

#: the longest a borrower waits for a connect before looking whether one failed meanwhile: the
#: engine fails waiters on a connect error only when nothing else could serve them, but the
#: peers fail the very call whose connect failed
_WATCH_SLICE = 0.2

#: millpond.Pool options a compat pool lets the user set through ``pool_options=``; the sizes,
#: the reset and the ping policy come from the peer's own arguments
POOL_OPTIONS = frozenset(
    {
        "timeout",
        "max_waiting",
        "max_lifetime",
        "max_idle",
        "pre_ping",
        "ping_window",
        "leak_timeout",
        "keepalive",
        "name",
    }
)


def check_pool_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The user's ``pool_options``, refused by name when one is not for a compat pool."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"pool_options must be a mapping of millpond.Pool options, got {options!r}"
        )
    bad = sorted(str(k) for k in options if k not in POOL_OPTIONS)
    if bad:
        raise ConfigError(
            f"pool_options: {', '.join(bad)} cannot be set on a compat pool (the peer's own "
            f"arguments set sizes and resets); it accepts {', '.join(sorted(POOL_OPTIONS))}"
        )
    return dict(options)


# -- connects -------------------------------------------------------------------------------


class ConnectWatch:
    """Counts the engine's failed connects and keeps the last driver error (redacted), so a
    borrower waiting for a connect can fail the way the peer's own connect would."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures = 0
        self.error: BaseException | None = None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            self.error = exc


def watch_connects(adapter: SyncAdapter) -> ConnectWatch:
    """Note every failed connect of ``adapter``.

    Only ``connect`` is wrapped, on the instance: every other method stays the driver
    adapter's own, including any the engine learns to call later.
    """
    watch = ConnectWatch()
    connect = adapter.connect

    def watched() -> Any:
        try:
            return connect()
        except Exception as exc:
            # the engine redacts the same object after this returns; do it first, since a
            # waiting borrower may raise a copy before the engine gets to it
            exc.args = tuple(adapter.redact(a) if isinstance(a, str) else a for a in exc.args)
            watch.failed(exc)
            raise

    setattr(adapter, "connect", watched)  # noqa: B010 (mypy refuses assigning to a method)
    return watch


def driver_error(exc: BaseException) -> BaseException:
    """The driver's own error behind a millpond :class:`ConnectError`, as the peers raise it.

    Several callers may fail on one connect error: each gets its own copy, so tracebacks do
    not pile up on a shared object. A cause that is not a driver error (the engine replaced
    one whose text held a secret) leaves the ConnectError itself.
    """
    cause = exc.__cause__ if isinstance(exc, ConnectError) else exc
    if cause is None or isinstance(cause, millpond.PoolError):
        return exc
    try:
        fresh = copy.copy(cause)
    except Exception:
        return cause
    fresh.__cause__ = cause.__cause__
    return fresh


def open_pool(
    adapter: SyncAdapter,
    *,
    min_size: int,
    max_size: int,
    keep_min_size: bool,
    options: Mapping[str, Any],
    **settings: Any,
) -> millpond.Pool:
    """A started engine pool with ``min_size`` connections already open, as the peers open
    theirs in their constructor; a connect failure raises the driver's error.

    ``keep_min_size=False`` then lets the pool shrink below ``min_size``, as psycopg2 and
    DBUtils do: they open their initial connections once and never top them up.
    Idle and lifetime limits default to off: the peers never close a healthy idle connection
    on their own, and a server's connection count is part of what existing code sees.
    """
    kwargs: dict[str, Any] = {"max_idle": None, "max_lifetime": None}
    kwargs.update(settings)
    kwargs.update(options)
    pool = millpond.Pool(adapter, min_size=min_size, max_size=max_size, open=False, **kwargs)
    try:
        pool.open(wait=True, timeout=float(options.get("timeout", CONNECT_BUDGET)))
        if not keep_min_size and min_size:
            pool.resize(min_size=0)
    except BaseException as exc:
        pool.close(timeout=0)
        if isinstance(exc, ConnectError):
            raise driver_error(exc) from exc
        raise
    return pool


def borrow(pool: millpond.Pool, watch: ConnectWatch, budget: float, *, growing: bool) -> Any:
    """``pool.getconn`` for a caller the peer would not make wait for another borrower.

    ``growing``: the peer's limit leaves this caller a free slot, so the engine either has an
    idle connection or is opening one for it. The wait is then a connect, and a connect that
    fails fails this caller at once with the driver's error, as the peer's synchronous
    connect would, even while other connections are lent. Otherwise it waits its turn in the
    engine's queue for a return (the ``timeout`` extension, DBUtils' ``blocking=True``).
    Raises the driver's error for a failed connect; :class:`PoolTimeout` and
    :class:`millpond.PoolClosed` are the caller's to translate.
    """
    try:
        if not growing:
            return pool.getconn(timeout=budget)
        seen = watch.failures
        deadline = time.monotonic() + budget
        while True:
            left = deadline - time.monotonic()
            try:
                # a slice that runs out gives up the queue place, which costs nothing here: the
                # peer's limit guarantees the caller a connection, not an order
                return pool.getconn(timeout=max(0.0, min(left, _WATCH_SLICE)))
            except PoolTimeout:
                error = watch.error
                if watch.failures != seen and error is not None:
                    raise driver_error(error) from None
                if left <= _WATCH_SLICE:
                    raise
    except ConnectError as exc:
        raise driver_error(exc) from exc


def wait_for_size(pool: millpond.Pool, watch: ConnectWatch, size: int, budget: float) -> None:
    """Block until ``pool`` holds ``size`` connections (after growing ``min_size``), as a
    peer's synchronous ``add_connection`` would; a failed connect raises the driver's error."""
    seen = watch.failures
    deadline = time.monotonic() + budget
    delay = 0.001
    while pool.stats().size < size:
        error = watch.error
        if watch.failures != seen and error is not None:
            raise driver_error(error)
        if time.monotonic() >= deadline:
            raise PoolTimeout(
                f"pool {pool.name!r}: {pool.stats().size} of {size} connections open "
                f"after {budget:g}s"
            )
        time.sleep(delay)  # a rare path (a peer's add_connection): polling is simplest
        delay = min(delay * 2, 0.05)


def wait_budget(options: Mapping[str, Any], default: float = math.inf) -> float:
    """How long a caller may queue for a return: the user's ``timeout`` extension, else
    ``default``."""
    value = options.get("timeout")
    return default if value is None else float(value)


# -- proxies dropped without close() ----------------------------------------------------------


class Reclaimer:
    """Gives back connections whose proxy was garbage-collected without ``close()``.

    DBUtils returns such a connection from ``__del__``. Here a finalizer must not call the
    pool: the garbage collector may run it on any thread, at any allocation, including inside
    the engine's own locked sections. So ``__del__`` only queues the return
    (``SimpleQueue.put`` is safe there); a daemon thread carries it out, and every call into a
    compat pool first runs what is queued and waits for a return in progress, so that
    ``del conn`` followed by a new checkout sees the connection back, as with the peer.
    """

    def __init__(self) -> None:
        self._queue: SimpleQueue[Callable[[], None]] = SimpleQueue()
        self._busy = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (from a pool's constructor: starting one inside ``__del__`` could
        itself deadlock)."""
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                t = threading.Thread(
                    target=self._run, name="millpond-compat-reclaimer", daemon=True
                )
                t.start()
                self._thread = t

    def defer(self, task: Callable[[], None]) -> None:
        self._queue.put(task)

    def flush(self) -> None:
        """Run the queued returns now, on this thread, and wait for one in progress. Call it
        holding no pool lock."""
        if self._thread is None:
            self.start()  # after a fork: the parent's thread does not exist here
        queue = self._queue
        while not queue.empty():  # the common case costs this one check
            try:
                task = queue.get_nowait()
            except Empty:  # the thread took it meanwhile
                break
            self._do(task)
        with self._busy:
            pass

    def _do(self, task: Callable[[], None]) -> None:
        with self._busy:
            try:
                task()
            except Exception:
                log.exception("millpond compat: giving back a dropped connection failed")

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._do(queue.get())

    def _after_fork_in_child(self) -> None:
        # returns the parent queued are the parent's to make: keep them unrun, and alive
        inherited.append(self._queue)
        self._queue = SimpleQueue()
        self._busy = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread = None


reclaimer = Reclaimer()


# -- fork ---------------------------------------------------------------------------------------

#: what a child process inherited from its parent's compat pools (lent connections, queued
#: returns): kept referenced for good, because a driver's finalizer would otherwise say goodbye
#: to the server on the parent's socket. The engine does the same with its own connections.
inherited: list[Any] = []

_forkable: weakref.WeakSet[Any] = weakref.WeakSet()


def on_fork(pool: Any) -> None:
    """Have ``pool._after_fork_in_child()`` run in a forked child: the engine pool forgets
    the parent's connections there, so the layer must forget what it lent too (and renew its
    locks, which another thread may have held at the fork)."""
    _forkable.add(pool)


def _after_fork_in_child() -> None:
    reclaimer._after_fork_in_child()
    for pool in list(_forkable):
        pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
