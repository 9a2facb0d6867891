"""The asyncio shell: futures for waiters, tasks for background work, loop binding.

Every decision is the core's (``millpond._core``); what both shells share is in
``millpond._shell``. Code between two ``await`` points is atomic on the event loop, so this
shell takes no lock. The two fast paths, :meth:`AsyncPool._lend_idle` and
:meth:`AsyncPool._return_idle`, await nothing; they are twins of the fast paths written out in
the threaded shell's ``getconn``/``putconn``, checked line by line by ``tests/test_twins.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import sys
import time
import weakref
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any, ClassVar

from millpond._async.borrowed import CUT_OFF, RESET_TIMEOUT, Borrowed, Transaction, bounded
from millpond._async.housekeeper import housekeep_loop, thread_safe_kick
from millpond._core.messages import closed_error, foreign_error, min_size_timeout
from millpond._core.record import ConnRecord, Plan, Waiter
from millpond._core.reset import Step
from millpond._core.stats import PoolStats
from millpond._shell import PoolBase, log
from millpond.drivers.async_base import AsyncAdapter
from millpond.errors import ConfigError, PoolClosed, PoolTimeout, WrongEventLoop

__all__ = ["AsyncPool"]

_get_running_loop = asyncio.get_running_loop
_new = object.__new__

#: how long a polite close may take before the connection is terminated
CLOSE_TIMEOUT = 5.0


class _AsyncWaiter(Waiter):
    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[None]) -> None:
        super().__init__()
        self.fut = fut

    def wake(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)


class AsyncPool(PoolBase):
    """An asyncio pool of connections, bound to the event loop that opens it.

    No I/O happens in the constructor: open it with ``await pool.open()`` or
    ``async with AsyncPool(...) as pool``. The options are those of ``Pool`` (documented on
    ``__init__``); ``configure`` and ``reset`` callables may be coroutine functions.
    """

    _kind = "AsyncPool"
    _prefix = "async-pool"
    _numbers: ClassVar[Iterator[int]] = itertools.count(1)
    _adapter: AsyncAdapter

    @classmethod
    def _next_number(cls) -> int:
        return next(cls._numbers)

    def _check_open(self, open: bool | None) -> None:
        if open:
            raise ConfigError(
                "open=True: an AsyncPool does no I/O in __init__; "
                "open it with `await pool.open()` or `async with AsyncPool(...)`"
            )

    def _resolve_target(
        self, target: Any, connect_kwargs: Mapping[str, Any] | None, server_pooler: str | None
    ) -> AsyncAdapter:
        if isinstance(target, AsyncAdapter):
            if connect_kwargs:
                raise ConfigError("connect_kwargs cannot be combined with a driver adapter instance")
            return target
        from millpond.drivers.async_url import resolve_async

        adapter: AsyncAdapter = resolve_async(
            target, dict(connect_kwargs) if connect_kwargs else None, server_pooler=server_pooler
        )
        return adapter

    def _init_shell(self, open: bool | None) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: a connect that takes longer than a caller may wait is abandoned (None: never)
        self._connect_bound: float | None = (
            None if self._default_timeout == math.inf else max(self._default_timeout, 1.0)
        )
        #: wakes the housekeeper early (a connect failed, a connection was collected)
        self._kick: asyncio.Event | None = None
        #: set when the pool's shape changes (a connect ends, a connection comes back while
        #: closing): open(wait=True) and close() wait on it
        self._changed: asyncio.Event | None = None
        self._housekeeper: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, wait: bool = False, timeout: float | None = None) -> None:
        """Bind the pool to the running event loop and start filling it to ``min_size``.
        With ``wait=True``, return once they are open: ``ConnectError`` as soon as a connect
        fails, ``PoolTimeout`` if ``timeout`` (default: the pool's) runs out first."""
        budget = self._timeout(timeout)
        loop = _get_running_loop()
        core = self._core
        errors_before = core.connect_errors  # wait=True fails on this open's connects only
        if core.start(self._clock()):
            self._loop = loop
            self._kick = kick = asyncio.Event()
            self._changed = asyncio.Event()
            self._gc_notify = thread_safe_kick(loop, kick)
            self._housekeeper = loop.create_task(
                housekeep_loop(weakref.ref(self), kick), name=f"millpond-{self.name}"
            )
            self._carry_out_pending()
        else:
            self._check_loop(loop)
        if wait:
            changed = self._changed
            assert changed is not None
            deadline = time.monotonic() + budget
            while not core.min_size_reached(errors_before, self._clock()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise min_size_timeout(core, budget)
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await bounded(changed.wait(), left)

    async def close(self, timeout: float = 5.0) -> None:
        """Close: waiters fail with ``PoolClosed``, idle connections close now, lent ones when
        returned (waiting up to ``timeout``); background tasks end."""
        budget = self._timeout(timeout)
        core = self._core
        if core.started and not core.closed:
            self._check_loop(_get_running_loop())
        if not core.close(PoolClosed(f"pool {self.name!r} was closed while waiting")):
            return
        self._notify()
        self._carry_out_pending()
        deadline = time.monotonic() + budget
        changed = self._changed
        assert changed is not None
        while core.lent:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "pool %r closed with %d connection(s) still in use; "
                    "they are closed when returned",
                    self.name,
                    len(core.lent),
                )
                break
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await bounded(changed.wait(), left)
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        await self._end_tasks(deadline)

    async def _end_tasks(self, deadline: float) -> None:
        """Let background tasks finish until ``deadline``, then cancel the rest and await
        them too: no task of this pool outlives close() (a task destroyed while pending
        would skip its bookkeeping and warn at exit)."""
        tasks = [t for t in self._tasks if not t.done()]
        if self._housekeeper is not None:
            tasks.append(self._housekeeper)
        if not tasks:
            return
        left = deadline - time.monotonic()
        if left > 0:
            _done, still = await asyncio.wait(tasks, timeout=None if left == math.inf else left)
        else:
            still = {t for t in tasks if not t.done()}
        for t in still:
            t.cancel()
        if still:
            # a cancelled close terminates its connection at once; nothing here awaits I/O
            await asyncio.wait(still, timeout=CLOSE_TIMEOUT)

    async def __aenter__(self) -> AsyncPool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- checkout --------------------------------------------------------------------------

    def connection(self, timeout: float | None = None) -> Borrowed:
        """``async with pool.connection() as conn:`` lends the driver's own connection; on
        exit uncommitted work is rolled back and the connection goes back to the pool."""
        b = _new(Borrowed)
        b._pool = self
        b._timeout = timeout
        return b

    def transaction(self, timeout: float | None = None) -> Transaction:
        """``async with pool.transaction() as conn:`` begins in the driver's own way,
        commits on success and rolls back on an exception."""
        return Transaction(self, timeout)

    async def getconn(self, timeout: float | None = None, *, fail_fast: bool = False) -> Any:
        """Borrow a connection; give it back with :meth:`putconn`. ``timeout`` and
        ``fail_fast`` as for :meth:`millpond.Pool.getconn`."""
        if timeout is not None:
            self._timeout(timeout)
        if self._leak_timeout is None:  # fail_fast matters only once the caller waits
            conn = self._lend_idle()
            if conn is not None:
                return conn
        return await self._getconn_slow(timeout, fail_fast, sys._getframe(1))

    def _lend_idle(self) -> Any:
        """The fast checkout: the most recently returned idle connection, if it is fresh
        enough to skip its ping. None sends the caller down the slow path."""
        # twin: lend-idle
        core = self._core
        idle = core.idle
        if (
            idle
            and _get_running_loop() is self._loop  # twin: async-only
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
        return None

    async def _getconn_slow(self, timeout: float | None, fail_fast: bool, frame: Any) -> Any:
        asked = self._clock()
        try:
            return await self._checkout(timeout, fail_fast, frame, asked)
        except PoolTimeout:
            self._emit("timeout", duration=self._clock() - asked)
            raise

    async def _checkout(
        self, timeout: float | None, fail_fast: bool, frame: Any, asked: float
    ) -> Any:
        loop = _get_running_loop()
        budget = self._timeout(timeout)
        core = self._core
        if core.started and not core.closed:
            self._check_loop(loop)
        clock = self._clock
        deadline = time.monotonic() + budget
        retry = False  # after a failed ping: keep our place at the head of the queue

        def make_waiter() -> Waiter:
            return _AsyncWaiter(loop.create_future())

        while True:
            try:
                got = core.admit(clock(), budget, make_waiter, retry, fail_fast)
            finally:
                self._carry_out_pending()  # stale idle connections admit retired, if any
            if isinstance(got, ConnRecord):
                rec = got
            else:
                self._emit("wait")
                rec = await self._wait(got, deadline, budget)
            conn = rec.conn
            now = clock()
            if self._needs_ping(rec, conn, now) and not await self._ping(rec, conn, now, deadline):
                if time.monotonic() >= deadline:
                    raise core.timed_out(budget, clock())
                retry = True
                continue
            waited = clock() - asked
            core.waited(waited)
            self._emit("checkout", duration=waited)
            return self._hand_over(rec, frame)

    async def _wait(self, waiter: Waiter, deadline: float, budget: float) -> ConnRecord:
        assert isinstance(waiter, _AsyncWaiter) and self._loop is not None
        core = self._core
        handle = None
        if deadline != float("inf"):
            left = deadline - time.monotonic()
            handle = self._loop.call_later(max(left, 0.0), self._expire, waiter, budget)
        try:
            await waiter.fut
        except asyncio.CancelledError:
            # cancelled while queued, or after being handed a connection but before resuming:
            # withdraw, or pass the connection on — never keep or lose it
            core.withdraw(waiter, self._clock())
            self._carry_out_pending()
            raise
        finally:
            if handle is not None:
                handle.cancel()
        return self._served(waiter)

    def _expire(self, waiter: _AsyncWaiter, budget: float) -> None:
        """The deadline of a queued waiter (atomic on the loop: it cannot race a hand-off)."""
        if waiter.fut.done():
            return
        error = self._core.expire(waiter, budget, self._clock())
        if error is not None:
            waiter.fut.set_exception(error)

    async def _ping(self, rec: ConnRecord, conn: Any, now: float, deadline: float) -> bool:
        """Validate a connection within what is left of the caller's deadline (a ping that
        does not answer in time counts as dead). On failure discard it."""
        core = self._core
        adapter = self._adapter
        try:
            left = max(deadline - time.monotonic(), 0.0)
            await bounded(adapter.ping(conn), min(left, self._config.ping_timeout))
        except asyncio.CancelledError:
            # the connection may be mid-protocol: as for a query cut off, recover or drop it
            # in the background (the slot stays counted until then), and propagate
            core.claim(rec, conn)
            self._spawn(self._abandon(rec, conn))
            raise
        except Exception as exc:  # a timeout included
            self._log_ping_failed(exc)
            with contextlib.suppress(Exception):
                adapter.terminate(conn)  # it may be mid-protocol after a timeout
            core.ping_done(rec, False, now)
            self._carry_out_pending()
            return False
        core.ping_done(rec, True, now)
        return True

    # -- return ----------------------------------------------------------------------------

    async def putconn(
        self, conn: Any, discard: bool = False, _error: BaseException | None = None
    ) -> None:
        """Give back a connection from :meth:`getconn`; ``discard=True`` closes it instead.
        A connection returned twice, or to another pool, raises ``ForeignConnection``."""
        if discard or _error is not None or self._reset_always or not self._return_idle(conn):
            await self._return_slow(conn, discard, _error)

    def _return_idle(self, conn: Any) -> bool:
        """The fast return. False: take the slow path (it decides whether the connection is
        foreign, needs a reset or must close)."""
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
            and _get_running_loop() is self._loop  # twin: async-only
        ):
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
                return True
        # twin: end
        return False

    async def _return_slow(self, conn: Any, discard: bool, error: BaseException | None) -> None:
        """A return that needs I/O (a rollback, a reset) or closes the connection."""
        core = self._core
        adapter = self._adapter
        rec = core.lent.get(id(conn))
        if rec is None or rec.resetting or not rec.owns(conn):
            raise foreign_error(core, conn)
        self._check_loop(_get_running_loop())
        if not discard and isinstance(error, CUT_OFF) and not adapter.is_disconnect(error, conn):
            # a query cut off by a cancellation or timeout can leave the connection
            # mid-protocol (an unread reply): drop it rather than trust a rollback. The slot
            # stays counted (and claimed) until the driver has let go of it.
            core.claim(rec, conn)
            self._spawn(self._abandon(rec, conn))
            return
        steps, reason = self._return_steps(rec, conn, discard, error)
        core.claim(rec, conn)
        if steps:
            # the reset runs in its own task, so a cancellation of the caller cannot cut it
            # off halfway; the caller still sees the cancellation
            core.reset_begun(steps)
            await asyncio.shield(self._spawn(self._reset_then_return(rec, conn, steps)))
            return
        if reason == "broken":
            adapter.terminate(conn)
        self._finish_return(rec, conn, reason)

    async def _abandon(self, rec: ConnRecord, conn: Any) -> None:
        """A connection whose query was cut off: kept when the driver can bring it back to a
        known state (then reset as any return), else dropped. A connect costs far more than
        waiting out a cancel the driver has already sent (issue 11, item 7)."""
        adapter = self._adapter
        recovered = False
        if self._reset is not None:  # without a reset, a recovered session would stay dirty
            try:
                recovered = await bounded(adapter.recover(conn), CLOSE_TIMEOUT)
            except asyncio.CancelledError:
                # close() ran out of time for background work: let go at once, as below
                with contextlib.suppress(Exception):
                    adapter.terminate(conn)
                self._finish_return(rec, conn, "cancelled")
                return
            except Exception:
                recovered = False
        if recovered:
            steps, reason = self._return_steps(rec, conn, False, None)
            if reason is None:
                if steps:
                    self._core.reset_begun(steps)
                    await self._reset_then_return(rec, conn, steps)
                else:
                    self._finish_return(rec, conn, None)
                return
        try:
            await bounded(adapter.abandon(conn), CLOSE_TIMEOUT)
        except BaseException:
            with contextlib.suppress(Exception):
                adapter.terminate(conn)
        self._finish_return(rec, conn, "cancelled")

    async def _reset_then_return(self, rec: ConnRecord, conn: Any, steps: tuple[Step, ...]) -> None:
        reason: str | None = None
        try:
            await bounded(self._run_steps(rec, conn, steps), RESET_TIMEOUT)
        except TimeoutError:
            reason = "reset_timeout"
        except asyncio.CancelledError:
            reason = "cancelled"
        except NotImplementedError:
            reason = "reset_by_reconnect"
        except Exception as exc:
            reason = self._reset_failure(exc, conn)
        if reason is not None:
            with contextlib.suppress(Exception):
                self._adapter.terminate(conn)
        self._finish_return(rec, conn, reason)

    async def _run_steps(self, rec: ConnRecord, conn: Any, steps: tuple[Step, ...]) -> None:
        adapter = self._adapter
        for step in steps:
            if step is Step.ROLLBACK:
                await adapter.rollback(conn)
            elif step is Step.FULL_RESET:
                await adapter.full_reset(conn)
            elif step is Step.CONFIGURE:
                await self._configure(conn)
            elif step is Step.CALLBACK:
                policy = self._reset
                assert callable(policy)
                result: Any = policy(conn)
                if hasattr(result, "__await__"):
                    await result
            elif rec.autocommit is not None and adapter.get_autocommit(conn) != rec.autocommit:
                await adapter.set_autocommit(conn, rec.autocommit)

    def _finish_return(self, rec: ConnRecord, conn: Any, reason: str | None) -> None:
        core = self._core
        now = self._clock()
        used = now - rec.lent_at  # before a hand-off to a waiter lends it anew
        core.returned(rec, conn, reason, now)
        if core.closed:
            self._notify()
        self._carry_out_pending()
        self._emit("checkin", duration=used)
        if rec.leak_reported:
            self._log_leak_returned(rec, now)

    # -- background work -------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _carry_out_pending(self) -> None:
        plan = self._core.flush()
        if plan:
            self._carry_out(plan)

    def _carry_out(self, plan: Plan) -> None:
        for w in plan.wakes:
            w.wake()
        for _ in range(plan.opens):
            self._spawn(self._open_one())
        for rec in plan.pings:
            self._spawn(self._keepalive_ping(rec))
        for rec, reason in plan.closes:
            self._spawn(self._close_one(rec, reason))
        self._log_plan(plan)

    async def _open_one(self) -> None:
        # connects run in parallel, as many as the core plans (up to the cap), each bounded
        # by the pool's timeout: a hung connect never holds back the others
        core = self._core
        ticket = core.begin_open(self._clock())
        if ticket is None:
            self._carry_out_pending()
            return
        adapter = self._adapter
        conn = None
        try:
            async with asyncio.timeout(self._connect_bound):
                conn = await adapter.connect()
                autocommit = await self._setup(conn)
        except asyncio.CancelledError:
            if conn is not None:
                adapter.terminate(conn)
            core.open_cancelled(self._clock(), ticket)
            self._carry_out_pending()
            raise
        except BaseException as exc:
            if conn is not None:
                with contextlib.suppress(Exception):
                    adapter.terminate(conn)
            failure = self._connect_failure(exc)
            core.open_failed(failure, self._clock(), ticket)
            self._carry_out_pending()
            self._notify()
            self._emit("connect_failed", error=str(failure))
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: the loop's to handle, once counted
            return
        now = self._clock()
        started = core.connect_started(ticket)
        rec = core.opened(conn, now, ticket)
        rec.autocommit = autocommit
        self._watch(rec, conn)
        self._carry_out_pending()
        self._notify()
        self._emit("connect", duration=None if started is None else now - started)

    async def _keepalive_ping(self, rec: ConnRecord) -> None:
        adapter = self._adapter
        core = self._core
        ok = False
        try:
            await bounded(adapter.ping(rec.conn), self._config.ping_timeout)
            ok = True
        except asyncio.CancelledError:
            adapter.terminate(rec.conn)
            core.pinged(rec, False, self._clock())
            self._carry_out_pending()
            raise
        except Exception as exc:  # a timeout included: an unanswered ping means dead
            self._log_ping_failed(exc, keepalive=True)
            with contextlib.suppress(Exception):
                adapter.terminate(rec.conn)
        core.pinged(rec, ok, self._clock())
        self._carry_out_pending()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
        if self._kick is not None:
            self._kick.set()  # the housekeeper schedules retries after a failure

    async def _setup(self, conn: Any) -> bool | None:
        await self._configure(conn)
        autocommit = self._adapter.get_autocommit(conn)
        if self._limits_due():
            await self._check_limits(conn)
        return autocommit

    async def _check_limits(self, conn: Any) -> None:
        """Read the server's limits on the first new connection, bounded by ping_timeout.
        A failure is logged and ignored, unless it took the connection with it (a timeout
        does: the query was cut off mid-way)."""
        adapter = self._adapter
        limits = None
        async with asyncio.timeout(self._config.ping_timeout):
            try:
                limits = await adapter.server_limits(conn)
            except Exception as exc:
                if self._limits_failed(exc, conn):
                    await adapter.rollback(conn)
        self._report_limits(limits)

    async def _configure(self, conn: Any) -> None:
        configure = self._config.configure
        if configure is not None:
            result: Any = configure(conn)
            if hasattr(result, "__await__"):
                await result
            if self._adapter.status(conn):
                await self._adapter.commit(conn)

    async def _close_one(self, rec: ConnRecord, reason: str) -> None:
        conn = rec.conn if rec.conn is not None else rec.pin
        rec.conn = rec.pin = None
        try:
            if conn is not None:
                await self._close_conn(conn, reason)
        finally:
            self._core.close_done(self._clock())
            self._carry_out_pending()
            self._emit("close", reason=reason)

    async def _close_conn(self, conn: Any, reason: str) -> None:
        adapter = self._adapter
        try:
            await bounded(adapter.close(conn), CLOSE_TIMEOUT)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                adapter.terminate(conn)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._log_close_failed(reason, exc)

    def _housekeep(self) -> float:
        core = self._core
        now = self._clock()
        if self._collect_garbage(now):
            self._notify()  # a close() may be waiting for it
        delay = core.maintain(now) if not core.closed else 3600.0
        self._carry_out_pending()
        return delay

    def _maintain(self) -> None:
        """Run one housekeeping pass now (tests drive it with a fake clock)."""
        self._housekeep()

    # -- administration --------------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A frozen snapshot: gauges (size, idle, in_use, waiting, opening) and counters."""
        return self._core.stats()

    async def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change the bounds. Surplus idle connections close at once, surplus lent ones on
        return; a larger ``min_size`` is filled in the background."""
        self._check_loop(_get_running_loop())
        self._core.resize(min_size, max_size, self._clock())
        self._config = self._core.config
        self._carry_out_pending()

    async def drain(self) -> None:
        """Replace every connection: idle ones now, lent ones when they come back."""
        self._check_loop(_get_running_loop())
        self._core.drain(self._clock())
        self._emit("drain")  # before the closes it plans
        self._carry_out_pending()

    def _check_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None:
            raise closed_error(self._core, False)
        if loop is not self._loop:
            raise WrongEventLoop(
                f"pool {self.name!r} was opened on event loop {self._loop!r} and cannot be "
                f"used from another loop ({loop!r}); open one pool per event loop"
            )
