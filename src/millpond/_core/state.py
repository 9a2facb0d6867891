"""The pool's state and policy: no I/O, no threads, no clock (``now`` is passed in).

Every method expects the caller to hold the shell's lock (or, in asyncio, to run on the loop).
Methods that decide something the shell must carry out add it to ``self.plan``; the shell takes
it with :meth:`PoolCore.flush` after releasing its lock and does the I/O.

Invariants (checked by :meth:`PoolCore.check_invariants` in tests):

* a record is in exactly one of ``idle`` / ``lent`` / a pending close, or being opened;
* ``size + closing + opening <= cap`` where ``size = len(idle) + len(lent)``: a connection
  being closed still counts (the server still sees its session), so a replacement is not
  opened before the close it replaces has finished. The exception is right after a resize
  down, when lent connections beyond the new cap close as they come back;
* ``idle`` and ``waiters`` are never both non-empty once a call returns (strict hand-off);
* waiters are served in arrival order.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from millpond._config import PoolConfig
from millpond._core import messages
from millpond._core.histogram import Histogram
from millpond._core.record import ConnRecord, Plan, Waiter
from millpond._core.reset import RESETTING, Step
from millpond._core.stats import PoolStats
from millpond.errors import ForeignConnection, PoolClosed, PoolError, TooManyWaiters

__all__ = ["PoolCore"]

#: first retry after a failed connect, and the ceiling of the exponential backoff
BACKOFF_BASE = 0.05
BACKOFF_CAP = 1.0
#: consecutive failed connects after which a caller no longer gets a fresh attempt inside the
#: backoff (the last error is replayed at once instead)
PROBE_FAILURES = 1
#: reasons to close a connection that cast doubt on the others opened before it
SUSPICIOUS = frozenset({"broken", "ping_failed", "keepalive_failed"})
#: the housekeeper wakes at least this often (seconds), whatever the deadlines say
MAX_SLEEP = 30.0


class PoolCore:
    def __init__(self, config: PoolConfig, name: str, rng: random.Random | None = None) -> None:
        self.name = name
        self.rng = rng or random.Random()
        self.idle: deque[ConnRecord] = deque()
        self.lent: dict[int, ConnRecord] = {}
        self.waiters: deque[Waiter] = deque()
        self.opening = 0
        #: connections retired whose close has not finished yet (see ``close_done``)
        self.closing = 0
        #: connects in flight, by the ticket begin_open gave them: when each started (a
        #: timeout tells hung connects apart from a busy pool) and in which generation (one
        #: begun before a drain() may use the old credentials: what it opens is drained)
        self.connecting: dict[int, tuple[float, int]] = {}
        self._tickets = 0
        self.gen = 0
        # a pool is born closed; start() opens it, once
        self.started = False
        self.closed = True
        self.plan = Plan()
        # counters. Checkouts are derived (see ``checkouts``): the hot path only bumps the
        # record's own ``uses``, and this keeps what retired records had
        self.retired_uses = 0
        self.waits = 0
        self.timeouts = 0
        self.shed = 0
        self.connects = 0
        self.connect_errors = 0
        self.pings = 0
        self.ping_failures = 0
        self.resets = 0
        self.reset_failures = 0
        self.leaks = 0
        self.lost = 0
        self.closed_by_reason: dict[str, int] = {}
        # timings. The fast path's checkouts never wait and are not recorded one by one:
        # ``lends`` counts the slow path's, and the difference from ``checkouts`` goes to the
        # lowest wait bucket when stats are read (no clock read, no counter on the fast path)
        self.lends = 0
        self.wait_time = Histogram()
        self.use_time = Histogram()
        self.create_time = Histogram()
        self.failures = 0  # consecutive failed connects
        self.retry_at = -math.inf
        self.last_error: BaseException | None = None
        self.last_error_at: float | None = None
        self.configure(config)

    # -- configuration ---------------------------------------------------------------------

    def configure(self, config: PoolConfig) -> None:
        self.config = config
        self.min_size = config.min_size
        self.max_size = config.max_size
        self.cap = config.cap
        self.max_uses = config.max_uses
        # with pre_ping off nothing is ever pinged on checkout
        self.ping_window = config.ping_window if config.pre_ping else math.inf
        self.max_lifetime = config.max_lifetime
        self.max_idle = config.max_idle
        self.leak_timeout = config.leak_timeout
        self.keepalive = config.keepalive

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.lent)

    @property
    def checkouts(self) -> int:
        # copied first (one C call each): an AsyncPool's stats() may be read from another
        # thread (a metrics exporter) while the loop moves records
        live = sum(r.uses for r in list(self.idle)) + sum(r.uses for r in list(self.lent.values()))
        return self.retired_uses + live

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, now: float) -> bool:
        """Open the pool and plan its first connects. False if it is already open."""
        if self.started:
            if self.closed:
                raise PoolClosed(f"pool {self.name!r} was closed and cannot be opened again")
            return False
        self.started = True
        self.closed = False
        self._grow(now)
        return True

    # -- records ---------------------------------------------------------------------------

    def new_record(self, conn: Any, now: float) -> ConnRecord:
        if self.max_lifetime is None:
            expires = math.inf
        else:
            jitter = self.config.lifetime_jitter * self.rng.random()
            expires = now + self.max_lifetime * (1.0 - jitter)
        return ConnRecord(conn, now, expires, self.gen)

    def lend(self, rec: ConnRecord, now: float) -> None:
        self.lends += 1
        rec.uses += 1
        rec.lent_at = now
        self.lent[rec.key] = rec

    def fresh(self, rec: ConnRecord, now: float) -> bool:
        """May this idle record be lent as it is (not expired, not from a drained generation)?"""
        return now < rec.expires and rec.gen == self.gen

    def retire(self, rec: ConnRecord, reason: str) -> None:
        """Schedule a connection the pool no longer holds anywhere for closing."""
        rec.ref = None  # closing on purpose: the GC watch must not fire
        self.retired_uses += rec.uses
        rec.uses = 0
        self.closed_by_reason[reason] = self.closed_by_reason.get(reason, 0) + 1
        self.closing += 1
        self.plan.closes.append((rec, reason))

    def close_done(self, now: float) -> None:
        """A planned close finished (or failed): its slot is free for a replacement."""
        self.closing -= 1
        self._grow(now)

    def forget(self, rec: ConnRecord, reason: str) -> None:
        """Account for a connection that is gone without a close (collected, or after fork)."""
        rec.ref = None
        rec.conn = None
        rec.pin = None
        self.retired_uses += rec.uses
        rec.uses = 0
        self.closed_by_reason[reason] = self.closed_by_reason.get(reason, 0) + 1

    # -- checkout --------------------------------------------------------------------------

    def take_idle(self, now: float) -> ConnRecord | None:
        """Lend the most recently used fresh idle connection, retiring stale ones on the way."""
        idle = self.idle
        while idle:
            rec = idle.pop()
            if self.fresh(rec, now):
                self.lend(rec, now)
                return rec
            self.retire(rec, "expired" if rec.gen == self.gen else "drained")
        if self.plan.closes:
            self._grow(now)
        return None

    def admit(
        self,
        now: float,
        budget: float,
        make_waiter: Callable[[], Waiter],
        first: bool = False,
        fail_fast: bool = False,
    ) -> ConnRecord | Waiter:
        """A checkout that missed the fast path: an idle connection now, or a queued waiter.
        Raises what the caller must see instead (closed, unreachable, no time to wait, queue
        full). ``first``: keep the head of the queue (its connection failed validation)."""
        rec = self.take_idle(now)
        if rec is not None:
            return rec
        if self.closed:
            raise messages.closed_error(self, self.started)
        if self.unreachable() and self.failures > PROBE_FAILURES and now < self.retry_at:
            raise messages.connect_error(self)
        if budget <= 0:
            if self.unreachable():
                raise messages.connect_error(self)
            self.timeouts += 1
            raise messages.timeout_error(self, budget, now)
        # a caller that can only be served by a connect (the server looked unreachable, or
        # it asked to fail fast) gets a fresh attempt after a single failure rather than that
        # error replayed: it may have been transient, or fixed since. One probe at a time, so
        # callers arriving together share its outcome; after two failures in a row the
        # backoff decides, so a storm of callers does not hammer a dead server.
        probe = (
            (fail_fast or self.unreachable())
            and self.opening == 0
            and (self.failures <= PROBE_FAILURES or now >= self.retry_at)
        )
        waiter = make_waiter()
        waiter.fail_fast = fail_fast
        self.enqueue(waiter, now, first)
        if probe and self.opening == 0 and self._room() > 0 and not self.closed:
            self.opening += 1
            self.plan.opens += 1
        return waiter

    def expire(self, waiter: Waiter, budget: float, now: float) -> PoolError | None:
        """A waiter's deadline passed: withdraw it and say what it raises. None if it was
        served (or failed) at that very moment and must take what it was handed."""
        if not self.cancel(waiter):
            return None
        return self.timed_out(budget, now)

    def timed_out(self, budget: float, now: float) -> PoolError:
        """Count a caller whose deadline ran out; a busy pool and an unreachable server are
        told apart."""
        self.timeouts += 1
        if self.failures:
            return messages.connect_error(self)
        return messages.timeout_error(self, budget, now)

    def withdraw(self, waiter: Waiter, now: float) -> None:
        """A waiter was interrupted (cancelled, a signal): leave the queue, or pass on a
        connection handed to it meanwhile, so no slot is lost."""
        if not self.cancel(waiter) and waiter.rec is not None:
            self.decline(waiter, now)

    def enqueue(self, waiter: Waiter, now: float, first: bool = False) -> None:
        """Queue a caller; raises if the pool is closed or the queue is full. ``first``: the
        caller was already served once but its connection failed validation, so it keeps
        its place at the head of the queue."""
        if self.closed:
            raise PoolClosed(f"pool {self.name!r} is closed")
        mw = self.config.max_waiting
        if mw and len(self.waiters) >= mw:
            self.shed += 1
            raise TooManyWaiters(
                f"pool {self.name!r}: {len(self.waiters)} callers are already waiting "
                f"(max_waiting={mw}); size={self.size}, in_use={len(self.lent)}"
            )
        self.waits += 1
        if first:
            self.waiters.appendleft(waiter)
        else:
            self.waiters.append(waiter)
        self._grow(now)

    def cancel(self, waiter: Waiter) -> bool:
        """Withdraw a waiter that gave up. False if it was already served (or failed) and must
        take, or give back, what it was handed."""
        if waiter.rec is not None or waiter.error is not None:
            return False
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return False
        return True

    def decline(self, waiter: Waiter, now: float) -> None:
        """A waiter was handed a connection it can no longer use (it was cancelled): take the
        connection back and pass it on, so nothing is lost."""
        rec = waiter.rec
        waiter.rec = None
        if rec is not None:
            self.lent.pop(rec.key, None)
            rec.uses -= 1
            self.lends -= 1
            self._place(rec, now)

    def can_serve_without_connect(self) -> bool:
        """Could a return ever satisfy a waiter? (Something is lent or idle.)"""
        return bool(self.lent or self.idle)

    # -- opening ---------------------------------------------------------------------------

    def _demand(self) -> int:
        return max(len(self.waiters), self.min_size - self.size)

    def _room(self) -> int:
        """Connections that may still be opened: closes in flight count against the cap."""
        return self.cap - self.size - self.closing

    def _grow(self, now: float) -> None:
        """Plan connects while demand persists: one per waiter (and up to min_size), within cap,
        and not before the backoff after a failed connect has run out."""
        if self.closed or now < self.retry_at:
            return
        want = min(self._demand(), self._room()) - self.opening
        if want > 0:
            self.opening += want
            self.plan.opens += want

    def begin_open(self, now: float) -> int | None:
        """A worker is about to connect: its ticket, to hand back when the connect ends.
        None (and the slot is released) if the demand that planned it has gone, e.g.
        returns served the waiters first."""
        if self.closed or min(self._demand(), self._room()) < self.opening:
            self.opening -= 1
            return None
        self._tickets += 1
        self.connecting[self._tickets] = (now, self.gen)
        return self._tickets

    def _connect_ended(self, ticket: int) -> bool:
        """Forget a connect in flight; True if a drain() since its start made it stale."""
        self.opening -= 1
        entry = self.connecting.pop(ticket, None)
        return entry is not None and entry[1] != self.gen

    def connect_started(self, ticket: int) -> float | None:
        """When the connect holding ``ticket`` began (None once it has ended)."""
        entry = self.connecting.get(ticket)
        return None if entry is None else entry[0]

    def waited(self, seconds: float) -> None:
        """A slow-path checkout got its connection ``seconds`` after asking."""
        self.wait_time.add(seconds)

    def open_cancelled(self, now: float, ticket: int) -> None:
        """A connect was cut off (cancelled, interrupted) before it finished."""
        self._connect_ended(ticket)
        self._grow(now)

    def opened(self, conn: Any, now: float, ticket: int) -> ConnRecord:
        """A connect succeeded (``ticket``: what ``begin_open`` gave it)."""
        entry = self.connecting.get(ticket)
        if entry is not None:  # connect + configure, timed from begin_open
            self.create_time.add(now - entry[0])
        stale = self._connect_ended(ticket)
        self.connects += 1
        self.failures = 0
        self.retry_at = -math.inf
        rec = self.new_record(conn, now)
        if self.closed:
            self.retire(rec, "closed")
        elif stale:
            self.retire(rec, "drained")
            self._grow(now)
        elif self.size + self.closing >= self.cap:  # resized down while this one connected
            self.retire(rec, "resized")
        elif not self.waiters and self.size >= self.max_size:
            # an overflow connect whose caller gave up (or was served) meanwhile
            self.retire(rec, "overflow")
        else:
            self._place(rec, now)
            self._grow(now)
        return rec

    def open_failed(self, error: BaseException, now: float, ticket: int) -> None:
        """A connect failed. Back off; if nothing but a connect could ever serve the waiters,
        fail them now with ``error`` rather than let them sit out their timeouts."""
        self._connect_ended(ticket)
        self.connect_errors += 1
        self.failures += 1
        self.last_error = error
        self.last_error_at = now
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(self.failures - 1, 16))
        self.retry_at = now + delay * (0.5 + 0.5 * self.rng.random())
        hopeless = self.opening == 0 and not self.can_serve_without_connect()
        if hopeless or any(w.fail_fast for w in self.waiters):
            keep: deque[Waiter] = deque()
            for w in self.waiters:
                if hopeless or w.fail_fast:
                    w.error = error
                    self.plan.wakes.append(w)
                else:
                    keep.append(w)
            self.waiters = keep

    def unreachable(self) -> bool:
        """The last connects failed and nothing is lent or idle that a return could bring:
        a caller would wait for a connect only."""
        return self.failures > 0 and self.opening == 0 and not self.can_serve_without_connect()

    def min_size_reached(self, errors_before: int, now: float) -> bool:
        """For ``open(wait=True)``: True once ``min_size`` connections are open. Raises if
        the pool closed, if a connect failed since the wait began (``errors_before``: the
        ``connect_errors`` count then), or if the server is known unreachable and no connect
        will be tried before the backoff ends. A failure older than the wait, with connects
        under way again (after a resize, say), does not fail it: they may well succeed."""
        if self.size >= self.min_size:
            return True
        if self.closed:
            raise messages.closed_error(self, True)
        if self.failures and (
            self.connect_errors > errors_before or (self.opening == 0 and now < self.retry_at)
        ):
            raise messages.connect_error(self)
        return False

    # -- validation ------------------------------------------------------------------------

    def ping_done(self, rec: ConnRecord, ok: bool, now: float, reason: str = "ping_failed") -> None:
        """A checkout's validation ping finished: a good connection counts as just used, a bad
        one is discarded (``reason``) and replaced if needed."""
        self.pings += 1
        if ok:
            rec.last_used = now
            return
        self.ping_failures += 1
        self.discard(rec, reason, now)

    # -- return ----------------------------------------------------------------------------

    def checkin(self, rec: ConnRecord, now: float, reason: str | None) -> None:
        """Take back a record already removed from ``lent``. ``reason`` says why it must be
        closed instead (broken, reset failed, discarded by the caller)."""
        if reason is None:
            if self.closed:
                reason = "closed"
            elif rec.gen != self.gen:
                reason = "drained"
            elif now >= rec.expires:
                reason = "expired"
            elif self.max_uses and rec.uses >= self.max_uses:
                reason = "max_uses"
            elif self.size >= self.cap:
                # resized down under load: surplus connections close even while callers
                # wait, or a pool shrunk under load would keep its old size until it calms.
                # (Closes in flight are not counted here: they are on their way out already,
                # and counting them would close this one too and open another.)
                reason = "resized"
            elif self.size >= self.max_size and not self.waiters:
                reason = "overflow" if self.size < self.cap else "resized"
        if reason is not None:
            self.retire(rec, reason)
            if reason in SUSPICIOUS:
                self.suspect_idle()
            self._grow(now)
        else:
            self._place(rec, now)

    def claim(self, rec: ConnRecord, conn: Any) -> None:
        """A return that needs I/O (a reset, a close) claims the record first, so a second
        return of the same connection fails instead of resetting it concurrently."""
        if rec.resetting or self.lent.get(rec.key) is not rec:
            raise messages.foreign_error(self, conn)
        rec.resetting = True

    def returned(self, rec: ConnRecord, conn: Any, reason: str | None, now: float) -> None:
        """A claimed return is done: the connection goes back (or is closed for ``reason``)."""
        rec.resetting = False
        if self.lent.pop(rec.key, None) is not rec:
            raise ForeignConnection(f"pool {self.name!r}: this connection is not lent by this pool")
        self.use_time.add(now - rec.lent_at)
        rec.conn = conn
        self.checkin(rec, now, reason)

    def reset_begun(self, steps: tuple[Step, ...]) -> None:
        if RESETTING.intersection(steps):
            self.resets += 1

    def reset_failed(self) -> None:
        self.reset_failures += 1

    def discard(self, rec: ConnRecord, reason: str, now: float) -> None:
        """Close a lent connection (failed ping, broken) and plan a replacement if needed."""
        if self.lent.get(rec.key) is rec:
            del self.lent[rec.key]
        self.retire(rec, reason)
        if reason in SUSPICIOUS:
            self.suspect_idle()
        self._grow(now)

    def suspect_idle(self) -> None:
        """A connection died: the idle ones may have died with it (a server restart, a
        network cut). Each is pinged at its next checkout, whatever ``ping_window`` says."""
        for rec in self.idle:
            rec.last_used = -math.inf

    def collected(self, rec: ConnRecord, now: float) -> bool:
        """A lent connection was garbage-collected: give its slot back. False if it was not
        lent any more (returned or retired meanwhile)."""
        if self.lent.get(rec.key) is not rec:
            return False
        del self.lent[rec.key]
        self.lost += 1
        self.forget(rec, "garbage_collected")
        self._grow(now)
        return True

    def _place(self, rec: ConnRecord, now: float) -> None:
        """Hand a connection to the oldest waiter, or put it idle."""
        rec.last_used = now
        if self.waiters:
            w = self.waiters.popleft()
            self.lend(rec, now)
            w.rec = rec
            self.plan.wakes.append(w)
        else:
            self.idle.append(rec)

    # -- housekeeping ----------------------------------------------------------------------

    def maintain(self, now: float) -> float:
        """Retire expired and long-idle connections, find leaks, top up to min_size.
        Returns how long the housekeeper may sleep before the next deadline."""
        wake = now + MAX_SLEEP
        ka = self.keepalive
        if self.idle:
            keep: deque[ConnRecord] = deque()
            surplus = self.size - self.min_size
            # oldest-returned first: those are the ones a LIFO pool will not need
            for rec in self.idle:
                if not self.fresh(rec, now):
                    self.retire(rec, "expired" if rec.gen == self.gen else "drained")
                    surplus -= 1
                elif (
                    self.max_idle is not None
                    and surplus > 0
                    and now - rec.last_used >= self.max_idle
                ):
                    self.retire(rec, "idle")
                    surplus -= 1
                elif ka is not None and now - rec.last_used >= ka:
                    # borrowed by the housekeeper for a background ping (see pinged); it is
                    # back idle by its next deadline at the latest
                    rec.lent_at = now
                    self.lent[rec.key] = rec
                    self.plan.pings.append(rec)
                    wake = min(wake, now + ka)
                else:
                    keep.append(rec)
                    wake = min(wake, rec.expires)
                    if ka is not None:
                        wake = min(wake, rec.last_used + ka)
                    # a connection kept only because of min_size has no idle deadline
                    if self.max_idle is not None and rec.last_used + self.max_idle > now:
                        wake = min(wake, rec.last_used + self.max_idle)
            self.idle = keep
        lt = self.leak_timeout
        if lt is not None:
            # a connection lent after this pass is due at now + lt at the earliest: waking
            # every lt/4 reports every leak within 1.25 × leak_timeout
            wake = min(wake, now + lt / 4)
            for rec in self.lent.values():
                if rec.leak_reported:
                    continue
                if now - rec.lent_at >= lt:
                    rec.leak_reported = True
                    self.leaks += 1
                    self.plan.leaks.append(rec)
                else:
                    wake = min(wake, rec.lent_at + lt)
        if ka is not None and self.lent:
            # a connection lent now is due for its keepalive ``ka`` after it comes back at the
            # earliest; returns do not wake the housekeeper (they are the hot path)
            wake = min(wake, now + ka)
        self._grow(now)
        if self._demand() > self.opening and now < self.retry_at:
            wake = min(wake, self.retry_at)
        return max(0.001, wake - now)

    def pinged(self, rec: ConnRecord, ok: bool, now: float) -> None:
        """The housekeeper's background ping of an idle connection is done."""
        self.pings += 1
        if not ok:
            self.ping_failures += 1
        if self.lent.get(rec.key) is not rec:
            return
        del self.lent[rec.key]
        if ok:
            self.checkin(rec, now, None)
        else:
            self.retire(rec, "keepalive_failed")
            self.suspect_idle()
            self._grow(now)

    def resize(self, min_size: int | None, max_size: int | None, now: float) -> None:
        config = self.config.resized(min_size, max_size)
        self.configure(config)
        # surplus idle connections close at once; surplus lent ones on return (see checkin)
        while self.idle and self.size > self.max_size:
            self.retire(self.idle.popleft(), "resized")
        self._grow(now)

    def _expire_lent(self) -> None:
        # the shell's fast return path tests only ``expires``: make it fail for these
        for rec in self.lent.values():
            rec.expires = -math.inf

    def drain(self, now: float) -> None:
        """Start a new generation: idle connections close now, lent ones on return."""
        self.gen += 1
        self._expire_lent()
        while self.idle:
            self.retire(self.idle.popleft(), "drained")
        self._grow(now)

    def close(self, error: BaseException) -> bool:
        """Close for good: waiters fail with ``error``, idle connections close now, lent ones
        when they come back. False if it was closed already (a pool never opened cannot be
        opened after this)."""
        if self.closed:
            self.started = True
            return False
        self.closed = True
        self._expire_lent()
        while self.idle:
            self.retire(self.idle.popleft(), "closed")
        while self.waiters:
            w = self.waiters.popleft()
            w.error = error
            self.plan.wakes.append(w)
        return True

    def after_fork(self) -> list[Any]:
        """In a forked child: forget every inherited connection without closing it (its socket
        is the parent's). Returns the connection objects, which the shell must keep alive so
        that no driver finalizer talks on the parent's socket."""
        inherited = []
        for rec in [*self.idle, *self.lent.values()]:
            inherited.append(rec.conn if rec.conn is not None else rec.pin)
            if rec.ref is not None:
                inherited.append(rec.ref())
            self.forget(rec, "fork")
        self.idle.clear()
        self.lent.clear()
        self.waiters.clear()
        self.opening = 0
        self.closing = 0  # the parent's closes: its sessions, not ours
        self.connecting.clear()
        self.plan = Plan()
        self.gen += 1
        return [c for c in inherited if c is not None]

    # -- output ----------------------------------------------------------------------------

    def flush(self) -> Plan | None:
        plan = self.plan
        if not plan:
            return None
        self.plan = Plan()
        return plan

    def oldest_borrower(self, now: float) -> ConnRecord | None:
        if not self.lent:
            return None
        return min(self.lent.values(), key=lambda r: r.lent_at)

    def stats(self) -> PoolStats:
        err = self.last_error
        checkouts = self.checkouts
        return PoolStats(
            name=self.name,
            size=self.size,
            idle=len(self.idle),
            in_use=len(self.lent),
            waiting=len(self.waiters),
            opening=self.opening,
            closing=self.closing,
            min_size=self.min_size,
            max_size=self.max_size,
            max_overflow=self.config.max_overflow,
            closed=self.closed,
            checkouts=checkouts,
            waits=self.waits,
            timeouts=self.timeouts,
            shed=self.shed,
            connects=self.connects,
            connect_errors=self.connect_errors,
            pings=self.pings,
            ping_failures=self.ping_failures,
            resets=self.resets,
            reset_failures=self.reset_failures,
            leaks=self.leaks,
            lost=self.lost,
            closed_by_reason=dict(self.closed_by_reason),
            last_connect_error=None if err is None else f"{type(err).__name__}: {err}",
            last_connect_error_at=self.last_error_at,
            wait_time=self.wait_time.snapshot(extra_zero=checkouts - self.lends),
            use_time=self.use_time.snapshot(),
            create_time=self.create_time.snapshot(),
        )

    def check_invariants(self) -> None:
        """Assert the rules of the design's section 3 (used by tests)."""
        # only a resize down leaves more connections than cap, and then only lent ones
        # (closed as they come back); connects planned before it are called off by
        # begin_open or closed on arrival
        assert self.size <= self.cap or not self.idle, (self.size, self.cap)
        assert self.opening >= 0
        assert self.closing >= 0
        assert len(self.connecting) <= self.opening
        assert not (self.idle and self.waiters), "idle connections while callers wait"
        keys = [r.key for r in self.idle]
        assert len(set(keys)) == len(keys), "a record is idle twice"
        assert not set(keys) & set(self.lent), "a record is both idle and lent"
        if self.closed:
            assert not self.idle and not self.waiters
