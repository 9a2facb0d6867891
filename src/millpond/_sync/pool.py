"""The threaded shell around the core: a lock, per-waiter wake-ups and worker threads.

The hot path (an idle, recently used connection out and back in) is written inline in
:meth:`Pool.getconn` and :meth:`Pool._checkin`; everything else goes through the core.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from millpond._config import PoolConfig, ResetPolicy, check_timeout, server_pooler_reset
from millpond._core.messages import (
    borrower_stack,
    closed_error,
    connect_error,
    connect_failure,
    first_line,
    foreign_error,
    format_stack,
    fresh_error,
    timeout_error,
)
from millpond._core.record import ConnRecord, Plan, Waiter
from millpond._core.state import PoolCore
from millpond._core.stats import PoolStats
from millpond._sync.watchdog import watchdog
from millpond._sync.workers import Housekeeper, Workers
from millpond.drivers.base import SyncAdapter, TxStatus
from millpond.errors import (
    ConfigError,
    ForeignConnection,
    PoolClosed,
    PoolError,
    PoolTimeout,
)

__all__ = ["Pool"]

log = logging.getLogger("millpond")
_names = itertools.count(1)
_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
# connections inherited across fork(): kept alive forever in the child, because a driver's
# finalizer would otherwise say goodbye to the server on the parent's socket
_fork_graveyard: list[Any] = []


class _SyncWaiter(Waiter):
    __slots__ = ("_lock",)

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._lock.acquire()

    def wake(self) -> None:
        self._lock.release()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=-1 if timeout == math.inf else max(timeout, 0.0))


class _Borrowed:
    """``with pool.connection() as conn``: a raw connection out, back in on exit.

    The common case (an idle, recently used connection out; a connection back with no
    transaction open) is written out here rather than delegated to ``getconn``/``putconn``:
    the calls saved are a quarter of the pool's cost per checkout. Keep it in step with them.
    """

    __slots__ = ("_conn", "_pool", "_rec", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout

    def __enter__(self) -> Any:
        pool = self._pool
        core = pool._core
        if self._timeout is None and pool._leak_timeout is None:
            lock = pool._lock
            lock.acquire()
            if core.idle:
                rec = core.idle.pop()
                now = pool._clock()
                if now - rec.last_used < core.ping_window and now < rec.expires:
                    rec.uses += 1
                    rec.lent_at = now
                    core.lent[rec.key] = rec
                    core.checkouts += 1
                    self._conn = conn = rec.conn
                    rec.conn = None
                    lock.release()
                    return conn
                core.idle.append(rec)
            lock.release()
        self._conn = conn = pool._getconn_slow(self._timeout, sys._getframe(1))
        return conn

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn = self._conn
        self._conn = None
        pool = self._pool
        if ev is None and not pool._reset_always:
            core = pool._core
            rec = core.lent.get(id(conn))
            if (
                rec is not None
                and not rec.resetting
                and (rec.pin is conn or (rec.ref is not None and rec.ref() is conn))
                and not pool._status(conn)
                and (rec.autocommit is None or pool._adapter.get_autocommit(conn) == rec.autocommit)
            ):
                lock = pool._lock
                lock.acquire()
                now = pool._clock()
                if (
                    not rec.resetting
                    and now < rec.expires
                    and not core.waiters
                    and rec.uses != core.max_uses
                    and len(core.idle) + len(core.lent) <= core.max_size
                    and core.lent.pop(rec.key, None) is rec
                ):
                    rec.conn = conn
                    rec.last_used = now
                    core.idle.append(rec)
                    lock.release()
                    if rec.leak_reported:
                        pool._leak_returned(rec, now)
                    return
                lock.release()
        pool.putconn(conn, False, ev)


class _Transaction:
    """``with pool.transaction() as conn``: commit on success, roll back on an exception."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    def __enter__(self) -> Any:
        pool = self._pool
        self._conn = conn = pool.getconn(self._timeout)
        try:
            if pool._adapter.get_autocommit(conn):
                pool._adapter.begin(conn)
        except BaseException as exc:
            self._conn = None
            pool.putconn(conn, False, exc)
            raise
        return conn

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn = self._conn
        self._conn = None
        pool = self._pool
        if ev is None:
            try:
                pool._adapter.commit(conn)
            except BaseException as exc:
                pool.putconn(conn, False, exc)
                raise
        pool.putconn(conn, False, ev)


class Pool:
    """A thread-safe pool of DB-API connections. See the README for every option."""

    def __init__(
        self,
        target: Any,
        *,
        connect_kwargs: Mapping[str, Any] | None = None,
        min_size: int = 1,
        max_size: int = 10,
        max_overflow: int = 0,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float | None = 1800.0,
        max_idle: float | None = 600.0,
        max_uses: int = 0,
        pre_ping: bool = True,
        ping_window: float = 0.5,
        reset: ResetPolicy = "rollback",
        configure: Callable[[Any], None] | None = None,
        leak_timeout: float | None = None,
        keepalive: float | None = None,
        ping_timeout: float = 5.0,
        name: str | None = None,
        open: bool = True,
        workers: int = 2,
        clock: Callable[[], float] | None = None,
        server_pooler: str | None = None,
    ) -> None:
        config = PoolConfig(
            min_size=min_size,
            max_size=max_size,
            max_overflow=max_overflow,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            max_uses=max_uses,
            pre_ping=pre_ping,
            ping_window=ping_window,
            reset=reset,
            configure=configure,
            leak_timeout=leak_timeout,
            keepalive=keepalive,
            ping_timeout=ping_timeout,
            name=name,
            workers=workers,
            server_pooler=server_pooler,
        )
        self._adapter = _resolve(target, connect_kwargs, server_pooler)
        self.name: str = name if name is not None else f"pool-{next(_names)}"
        reset = server_pooler_reset(config, self.name, log)
        if reset == "full" and not self._adapter.supports_full_reset:
            log.debug("pool %r: driver %s resets by reconnecting", name, self._adapter.name)
        self._config = config
        self._clock: Callable[[], float] = clock or time.monotonic
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._core = PoolCore(config, self.name)
        self._core.closed = True  # until open()
        self._opened = False
        self._workers = Workers(self.name, config.workers)
        self._housekeeper: Housekeeper | None = None
        self._reset = reset
        # "rollback" and None act only when the session is not idle; the others always do
        self._reset_always = reset not in ("rollback", None)
        self._status = self._adapter.status
        self._leak_timeout = leak_timeout
        self._default_timeout = float(timeout)
        self._gc_queue: Callable[[object], None] = lambda _: None
        _live_pools.add(self)
        if open:
            self.open()

    # -- lifecycle -------------------------------------------------------------------------

    def open(self, wait: bool = False, timeout: float | None = None) -> None:
        """Start the pool: workers open ``min_size`` connections in the background.
        With ``wait=True``, block until they are open (``ConnectError`` if the server cannot be
        reached, ``PoolTimeout`` if ``timeout`` runs out first)."""
        with self._lock:
            if self._opened and self._core.closed:
                raise PoolClosed(f"pool {self.name!r} was closed and cannot be opened again")
            if not self._opened:
                self._opened = True
                self._core.closed = False
                hk = Housekeeper(self.name, _weak_tick(self))
                self._housekeeper = hk
                self._gc_queue = hk.kick
                self._core._grow(self._clock())
            plan = self._core.flush()
        if plan:
            self._carry_out(plan)
        if wait:
            self._wait_for_min_size(self._timeout(timeout))

    def _wait_for_min_size(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            core = self._core
            while core.size < core.min_size:
                if core.closed:
                    raise closed_error(core, True)
                if core.down():
                    raise connect_error(core)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolTimeout(
                        f"pool {self.name!r}: {core.size} of min_size={core.min_size} "
                        f"connections open after {timeout:g}s"
                    )
                self._changed.wait(left)

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiters fail with ``PoolClosed``, idle connections close now, lent
        ones when they come back (waiting up to ``timeout`` seconds for them)."""
        timeout = check_timeout("timeout", timeout)
        with self._lock:
            if self._core.closed and self._opened is False:
                self._opened = True  # never opened: now it is closed for good
                return
            if self._core.closed:
                return
            self._core.close(PoolClosed(f"pool {self.name!r} was closed while waiting"))
            self._changed.notify_all()  # an open(wait=True) in another thread
            plan = self._core.flush()
        if plan:
            self._carry_out(plan)
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._core.lent:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "pool %r closed with %d connection(s) still in use; "
                        "they are closed when returned",
                        self.name,
                        len(self._core.lent),
                    )
                    break
                self._changed.wait(left)
        self._workers.stop(timeout)
        if self._housekeeper is not None:
            self._housekeeper.stop(timeout)

    def __enter__(self) -> Pool:
        if not self._opened:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # a pool dropped without close(): end its threads; its connections close with it
        workers = getattr(self, "_workers", None)
        if workers is not None and not workers.stopped:
            workers.stop(0)

    # -- checkout --------------------------------------------------------------------------

    def connection(self, timeout: float | None = None) -> _Borrowed:
        """``with pool.connection() as conn:`` lends the driver's own connection; on exit
        uncommitted work is rolled back and the connection goes back to the pool."""
        return _Borrowed(self, timeout)

    def transaction(self, timeout: float | None = None) -> _Transaction:
        """``with pool.transaction() as conn:`` commits on success, rolls back on error."""
        return _Transaction(self, timeout)

    def getconn(self, timeout: float | None = None) -> Any:
        """Borrow a connection; give it back with :meth:`putconn`."""
        lock = self._lock
        core = self._core
        if timeout is not None:
            check_timeout("timeout", timeout)
        lock.acquire()
        if core.idle:
            rec = core.idle.pop()
            now = self._clock()
            # idle records are always of the current generation: drain() retires them all
            if now - rec.last_used < core.ping_window and now < rec.expires:
                rec.uses += 1
                rec.lent_at = now
                core.lent[rec.key] = rec
                core.checkouts += 1
                conn = rec.conn
                rec.conn = None
                lock.release()
                if self._leak_timeout is not None:
                    rec.leak_reported = False
                    rec.borrower = borrower_stack(sys._getframe(1))
                return conn
            core.idle.append(rec)
        lock.release()
        return self._getconn_slow(timeout, sys._getframe(1))

    def _getconn_slow(self, timeout: float | None, frame: Any) -> Any:
        budget = self._timeout(timeout)
        clock = self._clock
        start = time.monotonic()
        core = self._core
        retry = False  # after a failed ping: keep our place at the head of the queue
        while True:
            waiter: _SyncWaiter | None = None
            error: PoolError | None = None
            with self._lock:
                now = clock()
                rec = core.take_idle(now)
                if rec is None:
                    if core.closed:
                        error = closed_error(core, self._opened)
                    elif core.down() and now < core.retry_at:
                        error = connect_error(self._core)
                    elif budget <= 0:
                        core.timeouts += 1
                        error = timeout_error(core, budget, now)
                    else:
                        waiter = _SyncWaiter()
                        try:
                            core.enqueue(waiter, now, first=retry)
                        except PoolError as exc:
                            error = exc
                plan = core.flush()  # stale idle connections take_idle retired, if any
            if plan:
                self._carry_out(plan)
            if error is not None:
                raise error
            if waiter is not None:
                rec = self._wait(waiter, budget - (time.monotonic() - start), budget)
            assert rec is not None
            conn = rec.conn
            now = clock()
            if now - rec.last_used >= core.ping_window and not self._ping(
                rec, conn, now, start + budget
            ):
                if time.monotonic() - start >= budget:
                    with self._lock:
                        core.timeouts += 1
                        raise timeout_error(core, budget, clock())
                retry = True
                continue
            rec.conn = None
            if self._leak_timeout is not None:
                rec.leak_reported = False
                rec.borrower = borrower_stack(frame)
            return conn

    def _wait(self, waiter: _SyncWaiter, left: float, budget: float) -> ConnRecord:
        core = self._core
        try:
            served = waiter.wait(left)
        except BaseException:
            # interrupted (KeyboardInterrupt, a signal handler raising): withdraw, or pass on
            # a connection handed over meanwhile, so the slot is not lost
            with self._lock:
                if not core.cancel(waiter) and waiter.rec is not None:
                    core.decline(waiter, self._clock())
                plan = core.flush()
            if plan:
                self._carry_out(plan)
            raise
        if not served:
            with self._lock:
                if core.cancel(waiter):
                    core.timeouts += 1
                    if core.failures:
                        raise connect_error(core)
                    raise timeout_error(core, budget, self._clock())
            # served (or failed) at the moment we gave up: take what we were handed
        if waiter.error is not None:
            raise fresh_error(waiter.error)
        rec = waiter.rec
        assert rec is not None
        return rec

    def _bounded_ping(self, conn: Any, deadline: float) -> None:
        """The adapter's ping, interrupted (its socket shut down) if it overruns ``deadline``:
        a server that stops answering must not hold a caller or a worker forever."""
        adapter = self._adapter
        token = watchdog.arm(deadline, functools.partial(adapter.interrupt, conn))
        try:
            adapter.ping(conn)
        finally:
            interrupted = not watchdog.disarm(token)
        if interrupted:  # it answered just as the watchdog struck: the socket is gone anyway
            raise PoolTimeout(f"pool {self.name!r}: ping unanswered (ping_timeout)")

    def _ping(self, rec: ConnRecord, conn: Any, now: float, deadline: float) -> bool:
        """Validate a connection that sat idle for ``ping_window``, within ``ping_timeout``
        and the caller's deadline. On failure discard it."""
        core = self._core
        limit = min(deadline, time.monotonic() + self._config.ping_timeout)
        try:
            self._bounded_ping(conn, limit)
        except BaseException as exc:
            if isinstance(exc, Exception):
                log.info(
                    "pool %r: discarding a connection that failed its ping: %s",
                    self.name,
                    self._adapter.redact(str(exc)),
                )
            with self._lock:
                core.pings += 1
                core.ping_failures += 1
                core.discard(rec, "ping_failed", now)
                plan = core.flush()
            if plan:
                self._carry_out(plan)
            if not isinstance(exc, Exception):
                raise  # interrupted mid-ping: the connection is discarded, the slot given back
            return False
        core.pings += 1  # a racy increment is fine for a counter read under the lock
        rec.last_used = now
        return True

    # -- return ----------------------------------------------------------------------------

    def putconn(
        self, conn: Any, discard: bool = False, _error: BaseException | None = None
    ) -> None:
        """Give back a connection from :meth:`getconn`. ``discard=True`` closes it instead."""
        # _error: what was raised inside ``with pool.connection()`` (a disconnect discards)
        core = self._core
        rec = core.lent.get(id(conn))
        # ids are reused after a garbage collection: make sure it is the very object we lent
        if rec is None or (rec.pin is not conn and (rec.ref is None or rec.ref() is not conn)):
            raise self._foreign(conn)
        if discard or _error is not None or self._reset_always:
            self._return_slow(rec, conn, discard, _error)
            return
        status = self._status(conn)
        ac = rec.autocommit
        if status or (ac is not None and self._adapter.get_autocommit(conn) != ac):
            self._return_slow(rec, conn, False, None)
            return
        lock = self._lock
        lock.acquire()
        if rec.resetting or core.lent.get(rec.key) is not rec:
            lock.release()
            raise self._foreign(conn)
        del core.lent[rec.key]
        rec.conn = conn
        now = self._clock()
        # drain() and close() expire lent records, so this one test covers them too
        if (
            now < rec.expires
            and not core.waiters
            and rec.uses != core.max_uses
            and len(core.idle) + len(core.lent) < core.max_size
        ):
            rec.last_used = now
            core.idle.append(rec)
            lock.release()
        else:
            core.checkin(rec, now, None)
            self._after_checkin()
        if rec.leak_reported:
            self._leak_returned(rec, now)

    def _return_slow(
        self, rec: ConnRecord, conn: Any, discard: bool, error: BaseException | None
    ) -> None:
        """A return that needs I/O (a rollback, a reset) or closes the connection. The record
        is claimed under the lock first, so a second return of the same connection from
        another thread fails at once instead of resetting it concurrently."""
        core = self._core
        lock = self._lock
        with lock:
            if rec.resetting or core.lent.get(rec.key) is not rec:
                raise foreign_error(core, conn)
            rec.resetting = True
        reason: str | None = None
        adapter = self._adapter
        try:
            if discard:
                reason = "discarded"
            elif error is not None and adapter.is_disconnect(error, conn):
                reason = "broken"
            else:
                reason = self._reset_session(conn, self._status(conn))
                ac = rec.autocommit
                if reason is None and ac is not None and adapter.get_autocommit(conn) != ac:
                    adapter.set_autocommit(conn, ac)
        except Exception as exc:
            reason = "broken" if adapter.is_disconnect(exc, conn) else "reset_failed"
            with lock:
                core.reset_failures += 1
        except BaseException:  # interrupted mid-reset: the session state is unknown
            reason = "reset_failed"
            raise
        finally:
            lock.acquire()
            rec.resetting = False
            del core.lent[rec.key]
            rec.conn = conn
            now = self._clock()
            core.checkin(rec, now, reason)
            self._after_checkin()
        if rec.leak_reported:
            self._leak_returned(rec, now)

    def _after_checkin(self) -> None:
        """Finish a slow-path checkin: called holding the lock, releases it."""
        core = self._core
        if core.closed:
            self._changed.notify_all()
        plan = core.flush()
        self._lock.release()
        if plan:
            self._carry_out(plan)

    def _leak_returned(self, rec: ConnRecord, now: float) -> None:
        log.warning(
            "pool %r: a leaked connection came back after %.1fs (borrowed at %s)",
            self.name,
            now - rec.lent_at,
            first_line(rec.borrower),
        )

    def _reset_session(self, conn: Any, status: TxStatus) -> str | None:
        """Apply the reset policy; a string is the reason to discard the connection."""
        if status is TxStatus.BROKEN:
            return "broken"
        policy = self._reset
        if policy is None:
            return None
        adapter = self._adapter
        if policy == "rollback":
            if not status:
                return None  # here only to restore autocommit
            self._core.resets += 1
            adapter.rollback(conn)
        elif policy == "full":
            self._core.resets += 1
            try:
                adapter.full_reset(conn)
            except NotImplementedError:
                return "reset_by_reconnect"
            # a pristine session has lost what configure= set up: set it up again
            configure = self._config.configure
            if configure is not None:
                configure(conn)
                if adapter.status(conn):
                    adapter.commit(conn)
        else:
            if status:
                adapter.rollback(conn)
            assert callable(policy)
            policy(conn)
        return None

    # -- background work -------------------------------------------------------------------

    def _carry_out(self, plan: Plan) -> None:
        for w in plan.wakes:
            w.wake()
        workers = self._workers
        for _ in range(plan.opens):
            if workers.stopped:
                break
            workers.submit(self._open_one)
        for rec in plan.pings:
            workers.submit(functools.partial(self._keepalive_ping, rec))
        for rec, reason in plan.closes:
            if workers.stopped:
                self._close_one(rec, reason)
            else:
                workers.submit(functools.partial(self._close_one, rec, reason))
        for rec in plan.leaks:
            log.warning(
                "pool %r: a connection has been held for %.1fs (leak_timeout=%gs); "
                "borrowed at:\n%s",
                self.name,
                self._clock() - rec.lent_at,
                self._leak_timeout,
                format_stack(rec.borrower),
            )

    def _open_one(self) -> None:
        core = self._core
        with self._lock:
            proceed = core.begin_open(self._clock())
            plan = core.flush()
        if plan:
            self._carry_out(plan)
        if not proceed:
            return
        try:
            conn = self._adapter.connect()
            autocommit = self._setup(conn)
        except Exception as exc:
            ad = self._adapter
            failure = connect_failure(core, ad.description, exc, ad.redact, ad.secrets)
            with self._lock:
                core.open_failed(failure, self._clock())
                self._changed.notify_all()
                plan = core.flush()
            if plan:
                self._carry_out(plan)
            hk = self._housekeeper
            if hk is not None:
                hk.kick()  # it schedules the retry after the backoff
            return
        with self._lock:
            rec = core.opened(conn, self._clock())
            rec.autocommit = autocommit
            self._watch(rec, conn)
            self._changed.notify_all()
            plan = core.flush()
        if plan:
            self._carry_out(plan)
        hk = self._housekeeper
        if hk is not None and self._config.keepalive is not None:
            hk.kick()  # the new connection's keepalive deadline may come before its sleep ends

    def _keepalive_ping(self, rec: ConnRecord) -> None:
        try:
            self._bounded_ping(rec.conn, time.monotonic() + self._config.ping_timeout)
            ok = True
        except Exception as exc:
            ok = False
            log.info("pool %r: an idle connection failed its keepalive ping: %s", self.name,
                     self._adapter.redact(str(exc)))
        with self._lock:
            self._core.pings += 1
            if not ok:
                self._core.ping_failures += 1
            self._core.pinged(rec, ok, self._clock())
            plan = self._core.flush()
        if plan:
            self._carry_out(plan)

    def _setup(self, conn: Any) -> bool | None:
        """Run ``configure`` on a new connection and note its autocommit mode, which every
        reset restores. A failure closes the connection and counts as a failed connect."""
        try:
            if self._config.configure is not None:
                self._config.configure(conn)
                if self._adapter.status(conn):
                    self._adapter.commit(conn)
            return self._adapter.get_autocommit(conn)
        except BaseException:
            with contextlib.suppress(Exception):
                self._adapter.close(conn)
            raise

    def _watch(self, rec: ConnRecord, conn: Any) -> None:
        """Notice a lent connection that is garbage-collected instead of returned."""
        put = self._gc_queue

        def collected(_ref: weakref.ref[Any], rec: ConnRecord = rec) -> None:
            put(rec)

        try:
            rec.ref = weakref.ref(conn, collected)
        except TypeError:
            rec.pin = conn

    def _close_one(self, rec: ConnRecord, reason: str) -> None:
        conn = rec.conn if rec.conn is not None else rec.pin
        rec.conn = rec.pin = None
        if conn is None:
            return
        try:
            self._adapter.close(conn)
        except Exception as exc:
            log.debug("pool %r: closing a connection (%s) failed: %s", self.name, reason,
                      self._adapter.redact(str(exc)))

    def _housekeep(self, items: list[object]) -> float:
        with self._lock:
            core = self._core
            now = self._clock()
            for item in items:
                if isinstance(item, ConnRecord) and core.collected(item, now):
                    self._changed.notify_all()  # a close() may be waiting for it
                    log.warning(
                        "pool %r: a connection was garbage-collected without being returned; "
                        "its slot is recovered. Borrowed at: %s",
                        self.name,
                        first_line(item.borrower)
                        if item.borrower
                        else "unknown (set leak_timeout to record where)",
                    )
            delay = core.maintain(now) if not core.closed else 3600.0
            plan = core.flush()
        if plan:
            self._carry_out(plan)
        return delay

    def _maintain(self) -> None:
        """Run one housekeeping pass now (tests drive it with a fake clock)."""
        self._housekeep([])

    # -- administration --------------------------------------------------------------------

    def stats(self) -> PoolStats:
        with self._lock:
            return self._core.stats()

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change the bounds. Surplus idle connections close at once, surplus lent ones on
        return; a larger ``min_size`` is filled in the background."""
        with self._lock:
            self._core.resize(min_size, max_size, self._clock())  # validates
            self._config = self._core.config
            plan = self._core.flush()
        if plan:
            self._carry_out(plan)

    def drain(self) -> None:
        """Replace every connection: idle ones now, lent ones when they come back. Use after a
        credential rotation or a failover; the pool keeps serving throughout."""
        with self._lock:
            self._core.drain(self._clock())
            plan = self._core.flush()
        if plan:
            self._carry_out(plan)

    # -- errors ----------------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self._default_timeout
        return check_timeout("timeout", timeout)

    def _foreign(self, conn: Any) -> ForeignConnection:
        with self._lock:
            return foreign_error(self._core, conn)

    # -- fork ------------------------------------------------------------------------------

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        _fork_graveyard.extend(self._core.after_fork())
        self._workers = Workers(self.name, self._config.workers)
        if self._opened and not self._core.closed:
            hk = Housekeeper(self.name, _weak_tick(self))
            self._housekeeper = hk
            self._gc_queue = hk.kick
            hk.kick()  # refill to min_size in the background

    def __repr__(self) -> str:
        core = self._core
        state = "closed" if core.closed else "open"
        return (
            f"<millpond.Pool {self.name!r} {self._adapter.name} {self._adapter.description} "
            f"{state} size={core.size} idle={len(core.idle)} in_use={len(core.lent)} "
            f"max_size={core.max_size}>"
        )


def _resolve(
    target: Any, connect_kwargs: Mapping[str, Any] | None, server_pooler: str | None = None
) -> SyncAdapter:
    if isinstance(target, SyncAdapter):
        if connect_kwargs:
            raise ConfigError("connect_kwargs cannot be combined with a driver adapter instance")
        return target
    from millpond.drivers.url import resolve

    adapter: SyncAdapter = resolve(
        target, dict(connect_kwargs) if connect_kwargs else None, server_pooler=server_pooler
    )
    return adapter


def _weak_tick(pool: Pool) -> Callable[[list[object]], float]:
    """The housekeeper's tick, holding the pool weakly so an unclosed pool can still be
    collected (the housekeeper then stops)."""
    ref = weakref.ref(pool)

    def tick(items: list[object]) -> float:
        p = ref()
        return -1.0 if p is None else p._housekeep(items)

    return tick


def _iter_pools() -> Iterator[Pool]:
    return iter(list(_live_pools))


def _after_fork_in_child() -> None:
    watchdog.after_fork()
    for pool in _iter_pools():
        pool._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
