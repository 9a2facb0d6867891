"""The threaded shell: a lock, per-waiter wake-ups, worker threads, the ping watchdog, fork.

Every decision is the core's (``millpond._core``); what both shells share is in
``millpond._shell``. This file holds the thread verbs and the two fast paths, written out
in :meth:`Pool.getconn` and :meth:`Pool.putconn` (twins of the asyncio shell's, checked line
by line by ``tests/test_twins.py``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

from millpond._core.messages import foreign_error, min_size_timeout
from millpond._core.record import ConnRecord, Plan, Waiter
from millpond._core.reset import Step
from millpond._core.stats import PoolStats
from millpond._shell import RESET_TIMEOUT, PoolBase, log
from millpond._sync.borrowed import Borrowed, Transaction
from millpond._sync.watchdog import watchdog
from millpond._sync.workers import Housekeeper, Workers
from millpond.drivers.base import SyncAdapter
from millpond.errors import ConfigError, PoolClosed, PoolTimeout

__all__ = ["Pool"]

_new = object.__new__

_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
#: seconds after fork() before a child's pool starts refilling to min_size
AFTER_FORK_REFILL = 0.05
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
        return self._lock.acquire(timeout=-1 if timeout >= _FOREVER else max(timeout, 0.0))


#: waits this long or longer are waits without a limit: the OS's timers overflow beyond it
_FOREVER = threading.TIMEOUT_MAX


def _wait_on(cond: threading.Condition, left: float) -> None:
    cond.wait(None if left >= _FOREVER else left)


class Pool(PoolBase):
    """A thread-safe pool of DB-API connections.

    ``with pool.connection() as conn`` lends the driver's own connection and takes it back
    clean; ``pool.transaction()`` commits or rolls back; ``getconn``/``putconn`` are the
    explicit pair. Connects and closes run on worker threads, never on a borrower's thread or
    under the pool's lock. The constructor's options are documented on ``__init__``.
    """

    _kind = "Pool"
    _prefix = "pool"
    _numbers: ClassVar[Iterator[int]] = itertools.count(1)
    _adapter: SyncAdapter

    @classmethod
    def _next_number(cls) -> int:
        return next(cls._numbers)

    def _resolve_target(
        self, target: Any, connect_kwargs: Mapping[str, Any] | None, server_pooler: str | None
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

    def _init_shell(self, open: bool | None) -> None:
        if self._reset == "full" and not self._full_reset_ok:
            log.debug("pool %r: driver %s resets by reconnecting", self.name, self._adapter.name)
        self._lock = threading.Lock()
        #: notified when the pool's shape changes (a connect ends, a connection comes back
        #: while closing): open(wait=True) and close() wait on it
        self._changed = threading.Condition(self._lock)
        self._workers = Workers(self.name, self._config.workers)
        self._housekeeper: Housekeeper | None = None
        _live_pools.add(self)
        if open is None or open:
            self.open()

    # -- lifecycle -------------------------------------------------------------------------

    def open(self, wait: bool = False, timeout: float | None = None) -> None:
        """Start the pool: workers open ``min_size`` connections in the background.
        With ``wait=True``, block until they are open: ``ConnectError`` as soon as a connect
        fails, ``PoolTimeout`` if ``timeout`` (default: the pool's) runs out first."""
        budget = self._timeout(timeout)
        with self._lock:
            core = self._core
            errors_before = core.connect_errors  # wait=True fails on this open's connects only
            if core.start(self._clock()):
                self._start_housekeeper()
            plan = core.flush()
        if plan:
            self._carry_out(plan)
        if wait:
            deadline = time.monotonic() + budget
            with self._changed:
                while not core.min_size_reached(errors_before, self._clock()):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise min_size_timeout(core, budget)
                    _wait_on(self._changed, left)

    def _start_housekeeper(self, first_tick: float = 0.0) -> None:
        hk = Housekeeper(self.name, _weak_tick(self), first_tick)
        self._housekeeper = hk
        self._gc_notify = hk.kick

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiters fail with ``PoolClosed``, idle connections close now, lent
        ones when they come back (waiting up to ``timeout`` seconds for them)."""
        budget = self._timeout(timeout)
        with self._lock:
            core = self._core
            if not core.close(PoolClosed(f"pool {self.name!r} was closed while waiting")):
                return
            self._changed.notify_all()  # an open(wait=True) in another thread
            plan = core.flush()
        if plan:
            self._carry_out(plan)
        deadline = time.monotonic() + budget
        with self._changed:
            while core.lent:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._log_closed_in_use()
                    break
                _wait_on(self._changed, left)
        # one deadline for everything: a worker stuck on a silent network does not get the
        # whole budget again
        self._workers.stop(max(0.0, deadline - time.monotonic()))
        if self._housekeeper is not None:
            self._housekeeper.stop(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Pool:
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

    def connection(self, timeout: float | None = None) -> Borrowed:
        """``with pool.connection() as conn:`` lends the driver's own connection; on exit
        uncommitted work is rolled back and the connection goes back to the pool (closed
        instead if the block raised a disconnect)."""
        b = _new(Borrowed)
        b._pool = self
        b._timeout = timeout
        return b

    def transaction(self, timeout: float | None = None) -> Transaction:
        """``with pool.transaction() as conn:`` commits on success, rolls back on error."""
        return Transaction(self, timeout)

    def getconn(self, timeout: float | None = None, *, fail_fast: bool = False) -> Any:
        """Borrow a connection; give it back with :meth:`putconn`.

        ``timeout``: seconds to wait (``None``: the pool's default; ``0``: only an idle
        connection now). ``fail_fast=True``: a connect that fails while this caller waits
        fails this caller with :class:`millpond.ConnectError` at once, even if a return could
        still serve it later (for callers that wait for a connect, not for a return).
        """
        if timeout is not None:
            self._timeout(timeout)
        if self._leak_timeout is None:  # fail_fast matters only once the caller waits
            # ``with``: an exception raised by a signal handler inside the block still
            # releases the lock. Here and in putconn a record moves between idle and lent
            # with no call in between (the points where CPython runs signal handlers), so an
            # interruption never leaves it half-moved (tests/test_signal_safety.py).
            # twin: lend-idle
            core = self._core
            with self._lock:
                idle = core.idle
                if (
                    idle
                ):
                    rec = idle[-1]
                    now = self._clock()
                    # idle records are always of the current generation: drain() retires them
                    idle_for = now - rec.last_used
                    # inside ping_window a connection idle beyond a moment gets a zero-timeout poll
                    # of its socket (no round trip): end-of-file or unread data sends it to a ping
                    if (
                        idle_for < core.ping_window
                        and now < rec.expires
                        and (idle_for < self._peek_after or self._socket_alive(rec.conn))
                    ):
                        del idle[-1]
                        rec.uses += 1
                        rec.lent_at = now
                        core.lent[rec.key] = rec
                        conn = rec.conn
                        rec.conn = None
                        return conn
            # twin: end
        return self._getconn_slow(timeout, fail_fast, sys._getframe(1))

    def _getconn_slow(self, timeout: float | None, fail_fast: bool, frame: Any) -> Any:
        asked = self._clock()
        try:
            return self._checkout(timeout, fail_fast, frame, asked)
        except PoolTimeout:
            self._emit("timeout", duration=self._clock() - asked)
            raise

    def _checkout(self, timeout: float | None, fail_fast: bool, frame: Any, asked: float) -> Any:
        budget = self._timeout(timeout)
        clock = self._clock
        deadline = time.monotonic() + budget
        core = self._core
        retry = False  # after a failed ping: keep our place at the head of the queue
        while True:
            with self._lock:
                try:
                    got = core.admit(clock(), budget, _SyncWaiter, retry, fail_fast)
                finally:
                    plan = core.flush()  # stale idle connections admit retired, if any
            if plan:
                self._carry_out(plan)
            if isinstance(got, ConnRecord):
                rec = got
            else:
                self._emit("wait")
                rec = self._wait(got, deadline, budget)
            conn = rec.conn
            now = clock()
            if self._needs_ping(rec, conn, now) and not self._ping(rec, conn, now, deadline):
                if time.monotonic() >= deadline:
                    with self._lock:
                        raise core.timed_out(budget, clock())
                retry = True
                continue
            with self._lock:
                waited = clock() - asked
                core.waited(waited)
            self._emit("checkout", duration=waited)
            return self._hand_over(rec, frame)

    def _wait(self, waiter: Waiter, deadline: float, budget: float) -> ConnRecord:
        assert isinstance(waiter, _SyncWaiter)
        core = self._core
        try:
            served = waiter.wait(deadline - time.monotonic())
        except BaseException:
            # interrupted (KeyboardInterrupt, a signal handler raising): withdraw, or pass on
            # a connection handed over meanwhile, so the slot is not lost
            with self._lock:
                core.withdraw(waiter, self._clock())
                plan = core.flush()
            if plan:
                self._carry_out(plan)
            raise
        if not served:
            with self._lock:
                error = core.expire(waiter, budget, self._clock())
            if error is not None:
                raise error
            # served (or failed) at the moment we gave up: take what we were handed
        return self._served(waiter)

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
        limit = min(deadline, time.monotonic() + self._config.ping_timeout)
        ok = False
        try:
            self._bounded_ping(conn, limit)
            ok = True
        except Exception as exc:
            self._log_ping_failed(exc)
        finally:  # a BaseException mid-ping discards the connection and propagates
            with self._lock:
                self._core.ping_done(rec, ok, now)
                plan = self._core.flush()
            if plan:
                self._carry_out(plan)
        return ok

    # -- return ----------------------------------------------------------------------------

    def putconn(
        self, conn: Any, discard: bool = False, _error: BaseException | None = None
    ) -> None:
        """Give back a connection from :meth:`getconn`. ``discard=True`` closes it instead.
        A connection returned twice, or to another pool, raises ``ForeignConnection``.
        (``_error``: what was raised inside ``with pool.connection()``; a disconnect
        discards the connection.)"""
        if not (discard or _error is not None or self._reset_always):
            # twin: return-idle
            # straight back idle: a connection of ours, no transaction open, autocommit as
            # the pool left it, no leak reported; anything else takes the slow path
            core = self._core
            rec = core.lent.get(id(conn))
            # ids are reused after a garbage collection: make sure it is the very object we lent
            if (
                rec is not None
                and not rec.resetting
                and not rec.leak_reported
                and (rec.pin is conn or (rec.ref is not None and rec.ref() is conn))
                and not self._status(conn)
                and (rec.autocommit is None or self._get_autocommit(conn) == rec.autocommit)
            ):
                with self._lock:
                    now = self._clock()
                    # drain() and close() expire lent records, so this one test covers them
                    if (
                        not rec.resetting
                        and now < rec.expires
                        and not core.waiters
                        and rec.uses != core.max_uses
                        and len(core.idle) + len(core.lent) <= core.max_size
                        and core.lent.get(rec.key) is rec
                    ):
                        del core.lent[rec.key]
                        rec.conn = conn
                        rec.last_used = now
                        core.idle.append(rec)
                        # use time: a short use (this path's common case) is counted inline; a
                        # longer one pays for a call, small beside the use itself
                        used = now - rec.lent_at
                        h = core.use_time
                        if used <= h.first:
                            h.low += 1
                            h.low_sum += used
                            if used > h.max:
                                h.max = used
                        else:
                            h.add(used)
                        return
            # twin: end
        self._return_slow(conn, discard, _error)

    def _return_slow(self, conn: Any, discard: bool, error: BaseException | None) -> None:
        """A return that needs I/O (a rollback, a reset) or closes the connection."""
        core = self._core
        with self._lock:
            rec = core.lent.get(id(conn))
            if rec is None or not rec.owns(conn):
                raise foreign_error(core, conn)
            core.claim(rec, conn)
        reason: str | None = None
        try:
            steps, reason = self._return_steps(rec, conn, discard, error)
            if steps:
                with self._lock:
                    core.reset_begun(steps)
                self._bounded_steps(rec, conn, steps)
        except Exception as exc:
            with self._lock:
                reason = self._reset_failure(exc, conn)
        except BaseException:  # interrupted mid-reset: the session state is unknown
            reason = "reset_failed"
            raise
        finally:
            with self._lock:
                now = self._clock()
                used = now - rec.lent_at  # before a hand-off to a waiter lends it anew
                core.returned(rec, conn, reason, now)
                if core.closed:
                    self._changed.notify_all()
                plan = core.flush()
            if plan:
                self._carry_out(plan)
        self._emit("checkin", duration=used)
        if rec.leak_reported:
            self._log_leak_returned(rec, now)

    def _bounded_steps(self, rec: ConnRecord, conn: Any, steps: tuple[Step, ...]) -> None:
        """Run the reset steps; a server that stops answering mid-reset gets its socket shut
        down after ``RESET_TIMEOUT`` and the connection is closed instead of returned."""
        token = watchdog.arm(
            time.monotonic() + RESET_TIMEOUT, functools.partial(self._adapter.interrupt, conn)
        )
        try:
            self._run_steps(rec, conn, steps)
        finally:
            interrupted = not watchdog.disarm(token)
        if interrupted:
            raise PoolTimeout(
                f"pool {self.name!r}: reset on return unanswered ({RESET_TIMEOUT:g}s)"
            )

    def _run_steps(self, rec: ConnRecord, conn: Any, steps: tuple[Step, ...]) -> None:
        adapter = self._adapter
        for step in steps:
            if step is Step.ROLLBACK:
                adapter.rollback(conn)
            elif step is Step.FULL_RESET:
                adapter.full_reset(conn)
            elif step is Step.CONFIGURE:
                self._configure(conn)
            elif step is Step.CALLBACK:
                policy = self._reset
                assert callable(policy)
                policy(conn)
            elif rec.autocommit is not None and adapter.get_autocommit(conn) != rec.autocommit:
                adapter.set_autocommit(conn, rec.autocommit)

    def _configure(self, conn: Any) -> None:
        configure = self._config.configure
        if configure is not None:
            configure(conn)
            if self._adapter.status(conn):
                self._adapter.commit(conn)

    # -- background work -------------------------------------------------------------------

    def _carry_out(self, plan: Plan) -> None:
        for w in plan.wakes:
            w.wake()
        workers = self._workers
        for _ in range(plan.opens):
            if workers.stopped:
                break
            workers.connect(self._open_one, self._core.cap)
        for rec in plan.pings:
            workers.submit(functools.partial(self._keepalive_ping, rec))
        for rec, reason in plan.closes:
            if workers.stopped:
                self._close_one(rec, reason)
            else:
                workers.submit(functools.partial(self._close_one, rec, reason))
        self._log_plan(plan)

    def _open_one(self) -> None:
        core = self._core
        with self._lock:
            ticket = core.begin_open(self._clock())
            plan = core.flush()
        if plan:
            self._carry_out(plan)
        if ticket is None:
            return
        try:
            conn = self._adapter.connect()
            autocommit = self._setup(conn)
        except BaseException as exc:
            # a BaseException too (SystemExit from a library, a gevent Timeout): it is a
            # failed connect, or ``opening`` would stay counted forever
            failure = self._connect_failure(exc)
            with self._lock:
                core.open_failed(failure, self._clock(), ticket)
                self._changed.notify_all()
                plan = core.flush()
            if plan:
                self._carry_out(plan)
            self._emit("connect_failed", error=str(failure))
            hk = self._housekeeper
            if hk is not None:
                hk.kick()  # it schedules the retry after the backoff
            return
        with self._lock:
            now = self._clock()
            started = core.connect_started(ticket)
            rec = core.opened(conn, now, ticket)
            rec.autocommit = autocommit
            self._watch(rec, conn)
            self._changed.notify_all()
            plan = core.flush()
        if plan:
            self._carry_out(plan)
        self._emit("connect", duration=None if started is None else now - started)
        hk = self._housekeeper
        if hk is not None and self._config.keepalive is not None:
            hk.kick()  # the new connection's keepalive deadline may come before its sleep ends

    def _keepalive_ping(self, rec: ConnRecord) -> None:
        ok = False
        try:
            self._bounded_ping(rec.conn, time.monotonic() + self._config.ping_timeout)
            ok = True
        except Exception as exc:
            self._log_ping_failed(exc, keepalive=True)
        with self._lock:
            self._core.pinged(rec, ok, self._clock())
            plan = self._core.flush()
        if plan:
            self._carry_out(plan)

    def _setup(self, conn: Any) -> bool | None:
        """Run ``configure`` on a new connection and note its autocommit mode, which every
        reset restores. A failure closes the connection and counts as a failed connect."""
        try:
            self._configure(conn)
            autocommit = self._adapter.get_autocommit(conn)
            if self._limits_due():
                self._check_limits(conn)
            return autocommit
        except BaseException:
            with contextlib.suppress(Exception):
                self._adapter.close(conn)
            raise

    def _check_limits(self, conn: Any) -> None:
        """Read the server's limits on the first new connection, bounded by ping_timeout.
        A failure is logged and ignored, unless it took the connection with it."""
        adapter = self._adapter
        token = watchdog.arm(
            time.monotonic() + self._config.ping_timeout, functools.partial(adapter.interrupt, conn)
        )
        limits = None
        try:
            try:
                limits = adapter.server_limits(conn)
            except Exception as exc:
                if self._limits_failed(exc, conn):
                    adapter.rollback(conn)
        finally:
            interrupted = not watchdog.disarm(token)
        if interrupted:  # it answered just as the watchdog shut its socket down
            raise PoolTimeout(f"pool {self.name!r}: limits query unanswered (ping_timeout)")
        self._report_limits(limits)

    def _close_one(self, rec: ConnRecord, reason: str) -> None:
        conn = rec.conn if rec.conn is not None else rec.pin
        rec.conn = rec.pin = None
        try:
            if conn is not None:
                adapter = self._adapter
                # a goodbye the network never delivers must not hold the slot forever
                token = watchdog.arm(
                    time.monotonic() + self._config.ping_timeout,
                    functools.partial(adapter.interrupt, conn),
                )
                try:
                    adapter.close(conn)
                except Exception as exc:
                    self._log_close_failed(reason, exc)
                finally:
                    watchdog.disarm(token)
        finally:
            with self._lock:
                self._core.close_done(self._clock())
                plan = self._core.flush()
            if plan:
                self._carry_out(plan)
            self._emit("close", reason=reason)

    def _housekeep(self, items: list[object]) -> float:
        with self._lock:
            core = self._core
            now = self._clock()
            if self._collect_garbage(now):
                self._changed.notify_all()  # a close() may be waiting for it
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
        """A frozen snapshot: gauges (size, idle, in_use, waiting, opening) and counters."""
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
        self._emit("drain")  # before the closes it plans
        if plan:
            self._carry_out(plan)

    # -- fork ------------------------------------------------------------------------------

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        _fork_graveyard.extend(self._core.after_fork())
        self._workers = Workers(self.name, self._config.workers)
        if self._core.started and not self._core.closed:
            # refill to min_size in the background, but not before the child's own at-fork
            # and start-up hooks had a moment to size it (integrations.lifecycle does)
            self._start_housekeeper(first_tick=AFTER_FORK_REFILL)


def _weak_tick(pool: Pool) -> Callable[[list[object]], float]:
    """The housekeeper's tick, holding the pool weakly so an unclosed pool can still be
    collected (the housekeeper then stops)."""
    ref = weakref.ref(pool)

    def tick(items: list[object]) -> float:
        p = ref()
        return -1.0 if p is None else p._housekeep(items)

    return tick


def _after_fork_in_child() -> None:
    watchdog.after_fork()
    for pool in list(_live_pools):
        pool._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
