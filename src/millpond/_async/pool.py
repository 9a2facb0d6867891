"""The asyncio shell around the core: futures for waiters, tasks for background work.

Code between two ``await`` points is atomic on the event loop, so the shell takes no lock: every
core call and the hand-off that follows it happen in one step. The hot path (an idle, recently
used connection out and back in) awaits nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from queue import Empty, SimpleQueue
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
from millpond.drivers.async_base import AsyncAdapter
from millpond.drivers.base import TxStatus
from millpond.errors import ConfigError, PoolError, WrongEventLoop

__all__ = ["AsyncPool"]

log = logging.getLogger("millpond")
_names = itertools.count(1)
_get_running_loop = asyncio.get_running_loop

#: how long a reset on return (rollback, full reset) may take before the connection is
#: terminated instead, and how long a polite close may take
RESET_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0

if sys.version_info >= (3, 11):

    async def _bounded(aw: Awaitable[Any], seconds: float) -> Any:
        async with asyncio.timeout(seconds):
            return await aw

else:  # pragma: no cover - Python 3.10

    async def _bounded(aw: Awaitable[Any], seconds: float) -> Any:
        return await asyncio.wait_for(aw, seconds)


_CUT_OFF = (asyncio.CancelledError, asyncio.TimeoutError, TimeoutError)


class _AsyncWaiter(Waiter):
    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[None]) -> None:
        super().__init__()
        self.fut = fut

    def wake(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)


class _AsyncBorrowed:
    """``async with pool.connection() as conn``.

    The common case (an idle, recently used connection out; one back with no transaction
    open) runs here without awaiting another coroutine; keep it in step with
    ``AsyncPool.getconn``/``putconn``.
    """

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: AsyncPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        pool = self._pool
        core = pool._core
        if (
            core.idle
            and self._timeout is None
            and pool._leak_timeout is None
            and _get_running_loop() is pool._loop
        ):
            rec = core.idle.pop()
            now = pool._clock()
            if now - rec.last_used < core.ping_window and now < rec.expires:
                rec.uses += 1
                rec.lent_at = now
                core.lent[rec.key] = rec
                core.checkouts += 1
                self._conn = conn = rec.conn
                rec.conn = None
                return conn
            core.idle.append(rec)
        self._conn = conn = await pool.getconn(self._timeout)
        return conn

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn = self._conn
        self._conn = None
        pool = self._pool
        if ev is None and not pool._reset_always:
            rec = pool._core.lent.get(id(conn))
            if (
                rec is not None
                and not rec.resetting
                and (rec.pin is conn or (rec.ref is not None and rec.ref() is conn))
                and not pool._status(conn)
                and (rec.autocommit is None or pool._adapter.get_autocommit(conn) == rec.autocommit)
                and _get_running_loop() is pool._loop
            ):
                pool._checkin(rec, conn, None)
                return
        await pool.putconn(conn, False, ev)


class _AsyncTransaction:
    """``async with pool.transaction() as conn``: the driver's own way of beginning,
    committing on success and rolling back on an exception."""

    __slots__ = ("_conn", "_pool", "_timeout", "_token")

    def __init__(self, pool: AsyncPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None
        self._token: Any = None

    async def __aenter__(self) -> Any:
        pool = self._pool
        self._conn = conn = await pool.getconn(self._timeout)
        try:
            self._token = await pool._adapter.begin(conn)
        except BaseException as exc:
            self._conn = None
            await pool.putconn(conn, False, exc)
            raise
        return conn

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, token = self._conn, self._token
        self._conn = self._token = None
        pool = self._pool
        adapter = pool._adapter
        if isinstance(ev, _CUT_OFF):
            # the block was cancelled or timed out, maybe mid-query: a ROLLBACK could wait on
            # a connection that will never answer; putconn drops the connection instead
            await pool.putconn(conn, False, ev)
            return
        try:
            if ev is None:
                await adapter.commit(conn, token)
            else:
                await _bounded(adapter.rollback_transaction(conn, token), RESET_TIMEOUT)
        except BaseException as exc:
            await pool.putconn(conn, False, exc)
            if ev is None or not isinstance(exc, Exception):
                raise  # a commit failure, or a cancellation arriving during the rollback
            return  # the block's own exception is the one the caller needs to see
        await pool.putconn(conn, False, ev)


class AsyncPool:
    """An asyncio pool of connections. No I/O happens in ``__init__``: open it with
    ``await pool.open()`` or ``async with AsyncPool(...) as pool``."""

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
        configure: Callable[[Any], Any] | None = None,
        leak_timeout: float | None = None,
        keepalive: float | None = None,
        ping_timeout: float = 5.0,
        name: str | None = None,
        open: bool = False,
        workers: int = 2,
        clock: Callable[[], float] | None = None,
        server_pooler: str | None = None,
    ) -> None:
        if open:
            raise ConfigError(
                "open=True: an AsyncPool does no I/O in __init__; "
                "open it with `await pool.open()` or `async with AsyncPool(...)`"
            )
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
        self.name: str = name if name is not None else f"async-pool-{next(_names)}"
        reset = server_pooler_reset(config, self.name, log)
        self._config = config
        self._clock: Callable[[], float] = clock or time.monotonic
        self._core = PoolCore(config, self.name)
        self._core.closed = True  # until open()
        self._opened = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connecting: asyncio.Semaphore | None = None
        self._kick: asyncio.Event | None = None
        self._returned: asyncio.Event | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._gc_queue: SimpleQueue[ConnRecord] = SimpleQueue()
        self._reset = reset
        self._reset_always = reset not in ("rollback", None)
        self._status = self._adapter.status
        self._leak_timeout = leak_timeout
        self._default_timeout = float(timeout)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, wait: bool = False, timeout: float | None = None) -> None:
        """Bind the pool to the running event loop and start filling it to ``min_size``."""
        loop = _get_running_loop()
        if self._opened:
            if self._core.closed:
                raise closed_error(self._core, True)
            self._check_loop(loop)
        else:
            self._opened = True
            self._loop = loop
            self._connecting = asyncio.Semaphore(self._config.workers)
            self._kick = asyncio.Event()
            self._returned = asyncio.Event()
            self._core.closed = False
            self._core._grow(self._clock())
            self._housekeeper = loop.create_task(
                _housekeep_loop(weakref.ref(self), self._kick), name=f"millpond-{self.name}"
            )
            self._carry_out_pending()
        if wait:
            await self._wait_for_min_size(self._timeout(timeout))

    async def _wait_for_min_size(self, budget: float) -> None:
        core = self._core
        deadline = time.monotonic() + budget
        while core.size < core.min_size:
            if core.closed:
                raise closed_error(core, True)
            if core.down():
                raise connect_error(core)
            left = deadline - time.monotonic()
            if left <= 0:
                raise timeout_error(core, budget, self._clock())
            assert self._returned is not None
            self._returned.clear()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await _bounded(self._returned.wait(), min(left, 0.05))

    async def close(self, timeout: float = 5.0) -> None:
        """Close: waiters fail with ``PoolClosed``, idle connections close now, lent ones when
        returned (waiting up to ``timeout``); background tasks end."""
        timeout = check_timeout("timeout", timeout)
        core = self._core
        if not self._opened:
            self._opened = True
            return
        if core.closed:
            return
        loop = _get_running_loop()
        self._check_loop(loop)
        core.close(closed_error(core, True))
        self._carry_out_pending()
        deadline = time.monotonic() + timeout
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
            assert self._returned is not None
            self._returned.clear()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await _bounded(self._returned.wait(), left)
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _done, still = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
            for t in still:
                t.cancel()

    async def __aenter__(self) -> AsyncPool:
        if not self._opened:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- checkout --------------------------------------------------------------------------

    def connection(self, timeout: float | None = None) -> _AsyncBorrowed:
        return _AsyncBorrowed(self, timeout)

    def transaction(self, timeout: float | None = None) -> _AsyncTransaction:
        return _AsyncTransaction(self, timeout)

    async def getconn(self, timeout: float | None = None) -> Any:
        core = self._core
        if timeout is not None:
            check_timeout("timeout", timeout)
        if core.idle and _get_running_loop() is self._loop:
            rec = core.idle.pop()
            now = self._clock()
            if now - rec.last_used < core.ping_window and now < rec.expires:
                rec.uses += 1
                rec.lent_at = now
                core.lent[rec.key] = rec
                core.checkouts += 1
                conn = rec.conn
                rec.conn = None
                if self._leak_timeout is not None:
                    rec.leak_reported = False
                    rec.borrower = borrower_stack(sys._getframe(1))
                return conn
            core.idle.append(rec)
        return await self._getconn_slow(timeout, sys._getframe(1))

    async def _getconn_slow(self, timeout: float | None, frame: Any) -> Any:
        loop = _get_running_loop()
        budget = self._timeout(timeout)
        core = self._core
        if not self._opened or core.closed:
            raise closed_error(core, self._opened)
        self._check_loop(loop)
        clock = self._clock
        deadline = time.monotonic() + budget
        retry = False  # after a failed ping: keep our place at the head of the queue
        while True:
            waiter: _AsyncWaiter | None = None
            error: PoolError | None = None
            now = clock()
            rec = core.take_idle(now)
            if rec is None:
                if core.closed:
                    error = closed_error(core, True)
                elif core.down() and now < core.retry_at:
                    error = connect_error(core)
                elif budget <= 0:
                    core.timeouts += 1
                    error = timeout_error(core, budget, now)
                else:
                    waiter = _AsyncWaiter(loop.create_future())
                    try:
                        core.enqueue(waiter, now, first=retry)
                    except PoolError as exc:
                        error = exc
            self._carry_out_pending()
            if error is not None:
                raise error
            if waiter is not None:
                rec = await self._wait(waiter, deadline, budget)
            assert rec is not None
            conn = rec.conn
            now = clock()
            if now - rec.last_used >= core.ping_window and not await self._ping(
                rec, conn, now, deadline
            ):
                if time.monotonic() >= deadline:
                    core.timeouts += 1
                    raise timeout_error(core, budget, clock())
                retry = True
                continue
            rec.conn = None
            if self._leak_timeout is not None:
                rec.leak_reported = False
                rec.borrower = borrower_stack(frame)
            return conn

    async def _wait(self, waiter: _AsyncWaiter, deadline: float, budget: float) -> ConnRecord:
        core = self._core
        assert self._loop is not None
        handle = None
        if deadline != math.inf:
            left = deadline - time.monotonic()
            handle = self._loop.call_later(max(left, 0.0), self._expire, waiter, budget)
        try:
            await waiter.fut
        except asyncio.CancelledError:
            # cancelled while queued, or after being handed a connection but before resuming:
            # withdraw, or pass the connection on — never keep or lose it
            if not core.cancel(waiter) and waiter.rec is not None:
                core.decline(waiter, self._clock())
            self._carry_out_pending()
            raise
        finally:
            if handle is not None:
                handle.cancel()
        if waiter.error is not None:
            raise fresh_error(waiter.error)
        rec = waiter.rec
        assert rec is not None
        return rec

    def _expire(self, waiter: _AsyncWaiter, budget: float) -> None:
        """The deadline of a queued waiter: withdraw it and fail its future (atomic on the
        loop, so it cannot race with a hand-off)."""
        if waiter.fut.done() or not self._core.cancel(waiter):
            return
        core = self._core
        core.timeouts += 1
        if core.failures:
            waiter.fut.set_exception(connect_error(core))
        else:
            waiter.fut.set_exception(timeout_error(core, budget, self._clock()))

    async def _ping(self, rec: ConnRecord, conn: Any, now: float, deadline: float) -> bool:
        """Validate a connection within what is left of the caller's deadline (a ping that
        does not answer in time counts as dead). On failure discard it."""
        core = self._core
        adapter = self._adapter
        try:
            left = max(deadline - time.monotonic(), 0.0)
            await _bounded(adapter.ping(conn), min(left, self._config.ping_timeout))
        except asyncio.CancelledError:
            # the connection may be mid-protocol: drop it, give the slot back, propagate
            adapter.terminate(conn)
            core.discard(rec, "cancelled", self._clock())
            self._carry_out_pending()
            raise
        except Exception as exc:  # a timeout included
            log.info(
                "pool %r: discarding a connection that failed its ping: %s",
                self.name,
                adapter.redact(str(exc)) or type(exc).__name__,
            )
            core.pings += 1
            core.ping_failures += 1
            with contextlib.suppress(Exception):
                adapter.terminate(conn)  # it may be mid-protocol after a timeout
            core.discard(rec, "ping_failed", now)
            self._carry_out_pending()
            return False
        core.pings += 1
        rec.last_used = now
        return True

    # -- return ----------------------------------------------------------------------------

    async def putconn(
        self, conn: Any, discard: bool = False, _error: BaseException | None = None
    ) -> None:
        """Give back a connection from :meth:`getconn`; ``discard=True`` closes it instead."""
        core = self._core
        rec = core.lent.get(id(conn))
        if (
            rec is None
            or rec.resetting
            or (rec.pin is not conn and (rec.ref is None or rec.ref() is not conn))
        ):
            raise foreign_error(core, conn)
        if _get_running_loop() is not self._loop:
            self._check_loop(_get_running_loop())
        reason: str | None = None
        if discard:
            reason = "discarded"
        elif _error is not None and self._adapter.is_disconnect(_error, conn):
            reason = "broken"
            self._adapter.terminate(conn)
        elif isinstance(_error, _CUT_OFF):
            # a query cut off by a cancellation or timeout can leave the connection
            # mid-protocol (an unread reply): drop it rather than trust a rollback. The slot
            # stays counted (and claimed) until the driver has let go of it.
            rec.resetting = True
            self._spawn(self._abandon(rec, conn))
            return
        else:
            status = self._status(conn)
            ac = rec.autocommit
            if (
                status
                or self._reset_always
                or (ac is not None and self._adapter.get_autocommit(conn) != ac)
            ):
                # the reset runs in its own task, so a cancellation of the caller cannot cut
                # it off halfway; the caller still sees the cancellation. The claim makes a
                # second return of the same connection fail instead of resetting it again.
                rec.resetting = True
                task = self._spawn(self._reset_then_checkin(rec, conn, status))
                await asyncio.shield(task)
                return
        self._checkin(rec, conn, reason)

    async def _abandon(self, rec: ConnRecord, conn: Any) -> None:
        adapter = self._adapter
        try:
            await _bounded(adapter.abandon(conn), CLOSE_TIMEOUT)
        except BaseException:
            with contextlib.suppress(Exception):
                adapter.terminate(conn)
        rec.resetting = False
        self._checkin(rec, conn, "cancelled")

    async def _reset_then_checkin(self, rec: ConnRecord, conn: Any, status: TxStatus) -> None:
        reason: str | None = None
        adapter = self._adapter
        try:
            reason = await _bounded(self._reset_session(rec, conn, status), RESET_TIMEOUT)
        except (TimeoutError, asyncio.TimeoutError):
            reason = "reset_timeout"
        except asyncio.CancelledError:
            reason = "cancelled"
        except Exception as exc:
            reason = "broken" if adapter.is_disconnect(exc, conn) else "reset_failed"
            self._core.reset_failures += 1
        if reason is not None:
            with contextlib.suppress(Exception):
                adapter.terminate(conn)
        rec.resetting = False
        self._checkin(rec, conn, reason)

    async def _reset_session(self, rec: ConnRecord, conn: Any, status: TxStatus) -> str | None:
        if status is TxStatus.BROKEN:
            return "broken"
        adapter = self._adapter
        policy = self._reset
        if policy is not None:
            self._core.resets += 1
            if policy == "rollback":
                await adapter.rollback(conn)
            elif policy == "full":
                try:
                    await adapter.full_reset(conn)
                except NotImplementedError:
                    return "reset_by_reconnect"
                # a pristine session has lost what configure= set up: set it up again
                await self._setup(conn)
            else:
                if status:
                    await adapter.rollback(conn)
                assert callable(policy)
                result: Any = policy(conn)
                if hasattr(result, "__await__"):
                    await result
        ac = rec.autocommit
        if ac is not None and adapter.get_autocommit(conn) != ac:
            await adapter.set_autocommit(conn, ac)
        return None

    def _checkin(self, rec: ConnRecord, conn: Any, reason: str | None) -> None:
        core = self._core
        if core.lent.pop(rec.key, None) is not rec:
            raise foreign_error(core, conn)
        rec.conn = conn
        now = self._clock()
        if (
            reason is None
            and now < rec.expires
            and not core.waiters
            and rec.uses != core.max_uses
            and len(core.idle) + len(core.lent) < core.max_size
        ):
            rec.last_used = now
            core.idle.append(rec)
        else:
            core.checkin(rec, now, reason)
            if core.closed and self._returned is not None:
                self._returned.set()
            self._carry_out_pending()
        if rec.leak_reported:
            log.warning(
                "pool %r: a leaked connection came back after %.1fs (borrowed at %s)",
                self.name,
                now - rec.lent_at,
                first_line(rec.borrower),
            )

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
        for rec in plan.leaks:
            log.warning(
                "pool %r: a connection has been held for %.1fs (leak_timeout=%gs); "
                "borrowed at:\n%s",
                self.name,
                self._clock() - rec.lent_at,
                self._leak_timeout,
                format_stack(rec.borrower),
            )

    async def _open_one(self) -> None:
        core = self._core
        assert self._connecting is not None
        async with self._connecting:
            if not core.begin_open(self._clock()):
                self._carry_out_pending()
                return
            adapter = self._adapter
            conn = None
            try:
                conn = await adapter.connect()
                autocommit = await self._setup(conn)
            except asyncio.CancelledError:
                if conn is not None:
                    adapter.terminate(conn)
                core.opening -= 1
                raise
            except Exception as exc:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        adapter.terminate(conn)
                failure = connect_failure(core, adapter.description, exc, adapter.redact, adapter.secrets)
                core.open_failed(failure, self._clock())
                self._carry_out_pending()
                self._notify()
                return
            rec = core.opened(conn, self._clock())
            rec.autocommit = autocommit
            self._watch(rec, conn)
            self._carry_out_pending()
            self._notify()

    async def _keepalive_ping(self, rec: ConnRecord) -> None:
        adapter = self._adapter
        try:
            await _bounded(adapter.ping(rec.conn), self._config.ping_timeout)
            ok = True
        except asyncio.CancelledError:
            adapter.terminate(rec.conn)
            self._core.pinged(rec, False, self._clock())
            self._carry_out_pending()
            raise
        except Exception as exc:  # a timeout included: an unanswered ping means dead
            ok = False
            log.info("pool %r: an idle connection failed its keepalive ping: %s", self.name,
                     adapter.redact(str(exc)))
            with contextlib.suppress(Exception):
                adapter.terminate(rec.conn)
        core = self._core
        core.pings += 1
        if not ok:
            core.ping_failures += 1
        core.pinged(rec, ok, self._clock())
        self._carry_out_pending()

    def _notify(self) -> None:
        if self._returned is not None:
            self._returned.set()
        if self._kick is not None:
            self._kick.set()  # the housekeeper schedules retries after a failure

    async def _setup(self, conn: Any) -> bool | None:
        configure = self._config.configure
        if configure is not None:
            result: Any = configure(conn)
            if hasattr(result, "__await__"):
                await result
            if self._adapter.status(conn):
                await self._adapter.commit(conn)
        return self._adapter.get_autocommit(conn)

    def _watch(self, rec: ConnRecord, conn: Any) -> None:
        queue = self._gc_queue
        loop = self._loop
        kick = self._kick

        def collected(_ref: weakref.ref[Any], rec: ConnRecord = rec) -> None:
            # may run inside the garbage collector, on any thread: no I/O, no loop state
            queue.put(rec)
            if loop is not None and kick is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(kick.set)

        try:
            rec.ref = weakref.ref(conn, collected)
        except TypeError:
            rec.pin = conn

    async def _close_one(self, rec: ConnRecord, reason: str) -> None:
        conn = rec.conn if rec.conn is not None else rec.pin
        rec.conn = rec.pin = None
        if conn is None:
            return
        adapter = self._adapter
        try:
            await _bounded(adapter.close(conn), CLOSE_TIMEOUT)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                adapter.terminate(conn)
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.debug("pool %r: closing a connection (%s) failed: %s", self.name, reason, exc)

    def _housekeep(self) -> float:
        core = self._core
        now = self._clock()
        while True:
            try:
                rec = self._gc_queue.get_nowait()
            except Empty:
                break
            if core.collected(rec, now):
                log.warning(
                    "pool %r: a connection was garbage-collected without being returned; "
                    "its slot is recovered. Borrowed at: %s",
                    self.name,
                    first_line(rec.borrower)
                    if rec.borrower
                    else "unknown (set leak_timeout to record where)",
                )
        delay = core.maintain(now) if not core.closed else 3600.0
        self._carry_out_pending()
        return delay

    def _maintain(self) -> None:
        """Run one housekeeping pass now (tests drive it with a fake clock)."""
        self._housekeep()

    # -- administration --------------------------------------------------------------------

    def stats(self) -> PoolStats:
        return self._core.stats()

    async def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        self._check_loop(_get_running_loop())
        self._core.resize(min_size, max_size, self._clock())
        self._config = self._core.config
        self._carry_out_pending()

    async def drain(self) -> None:
        self._check_loop(_get_running_loop())
        self._core.drain(self._clock())
        self._carry_out_pending()

    # -- helpers ---------------------------------------------------------------------------

    def _check_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None:
            raise closed_error(self._core, False)
        if loop is not self._loop:
            raise WrongEventLoop(
                f"pool {self.name!r} was opened on event loop {self._loop!r} and cannot be "
                f"used from another loop ({loop!r}); open one pool per event loop"
            )

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self._default_timeout
        return check_timeout("timeout", timeout)

    def __repr__(self) -> str:
        core = self._core
        state = "closed" if core.closed else "open"
        return (
            f"<millpond.AsyncPool {self.name!r} {self._adapter.name} "
            f"{self._adapter.description} {state} size={core.size} idle={len(core.idle)} "
            f"in_use={len(core.lent)} max_size={core.max_size}>"
        )


async def _housekeep_loop(ref: weakref.ref[AsyncPool], kick: asyncio.Event) -> None:
    """Runs housekeeping at each deadline or kick; holds the pool weakly so an unclosed pool
    can still be collected."""
    while True:
        pool = ref()
        if pool is None:
            return
        try:
            delay = pool._housekeep()
        except Exception:
            log.exception("pool %r: housekeeping failed", pool.name)
            delay = 1.0
        del pool
        kick.clear()
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await _bounded(kick.wait(), delay)


def _resolve(
    target: Any, connect_kwargs: Mapping[str, Any] | None, server_pooler: str | None = None
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
