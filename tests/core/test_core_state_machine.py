"""The core, driven at random through checkouts, returns, failures, timeouts, resizes and drains
with a fake clock, against the rules of the design's section 3."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from millpond._config import PoolConfig
from millpond._core.record import ConnRecord, Waiter
from millpond._core.state import PoolCore
from millpond.errors import ConnectError, PoolClosed, PoolTimeout, TooManyWaiters


class Conn:
    def __init__(self, n: int) -> None:
        self.n = n


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.numbers = 0
        self.core: PoolCore | None = None
        self.held: dict[int, ConnRecord] = {}  # records lent to simulated borrowers
        self.pinging: dict[int, ConnRecord] = {}  # idle records out for a keepalive ping
        self.queue: list[Waiter] = []  # our own view of who is waiting, in arrival order
        self.planned = 0  # opens the core asked for that no worker has finished
        self.closed_keys: set[int] = set()
        self.closes: list[ConnRecord] = []  # planned closes no worker has finished
        self.shrunk = False  # a resize lowered the cap: lent surplus may exceed it for a while
        self.all_conns: list[Conn] = []  # keep objects alive so ids stay unique

    # -- setup -----------------------------------------------------------------------------

    @rule(
        min_size=st.integers(0, 3),
        extra=st.integers(0, 3),
        overflow=st.integers(0, 2),
        max_waiting=st.integers(0, 4),
        max_uses=st.integers(0, 3),
        lifetime=st.sampled_from([None, 5.0, 50.0]),
        max_idle=st.sampled_from([None, 3.0, 30.0]),
        seed=st.integers(0, 2**16),
        keepalive=st.sampled_from([None, 2.0]),
    )
    @precondition(lambda self: self.core is None)
    def start(
        self,
        min_size: int,
        extra: int,
        overflow: int,
        max_waiting: int,
        max_uses: int,
        lifetime: float | None,
        max_idle: float | None,
        seed: int,
        keepalive: float | None,
    ) -> None:
        cfg = PoolConfig(
            min_size=min_size,
            max_size=max(1, min_size + extra),
            max_overflow=overflow,
            max_waiting=max_waiting,
            max_uses=max_uses,
            max_lifetime=lifetime,
            max_idle=max_idle,
            leak_timeout=10.0,
            keepalive=keepalive,
        )
        self.core = PoolCore(cfg, "sm", random.Random(seed))
        self.core.start(self.now)
        self.apply()

    # -- helpers ---------------------------------------------------------------------------

    def apply(self) -> None:
        """Carry out the core's plan as a shell would, checking FIFO service on the way."""
        core = self.core
        assert core is not None
        plan = core.flush()
        if plan is None:
            return
        self.planned += plan.opens
        for rec in plan.pings:
            assert rec.key in core.lent and rec not in core.idle
            self.pinging[rec.key] = rec
        for rec, _reason in plan.closes:
            assert rec.key not in core.lent and rec not in core.idle
            self.closed_keys.add(rec.key)
            self.closes.append(rec)
        for w in plan.wakes:
            if w.rec is None and w.fail_fast:
                # a fail-fast waiter fails on a connect error wherever it stands
                assert w.error is not None and w in self.queue
                self.queue.remove(w)
                continue
            # strict FIFO: the one woken is the oldest still waiting
            assert self.queue and self.queue[0] is w, "a waiter was overtaken"
            self.queue.pop(0)
            if w.rec is not None:
                assert w.error is None
                self.held[w.rec.key] = w.rec
            else:
                assert w.error is not None

    # -- rules -----------------------------------------------------------------------------

    @rule(fail_fast=st.booleans(), budget=st.sampled_from([0.0, 5.0]))
    @precondition(lambda self: self.core is not None)
    def checkout(self, fail_fast: bool, budget: float) -> None:
        core = self.core
        assert core is not None
        idle_before = len(core.idle)
        try:
            got = core.admit(self.now, budget, Waiter, fail_fast=fail_fast)
        except (PoolClosed, TooManyWaiters, PoolTimeout, ConnectError):
            assert not core.closed or not core.idle
        else:
            if isinstance(got, ConnRecord):
                assert not self.queue, "barging: an idle connection was taken while others wait"
                self.held[got.key] = got
            else:
                assert idle_before == 0 or not core.idle, "queued although a connection is idle"
                assert budget > 0, "a caller that may not wait was queued"
                self.queue.append(got)
        self.apply()

    @rule(data=st.data())
    @precondition(lambda self: self.core is not None and self.queue)
    def waiter_gives_up(self, data: st.DataObject) -> None:
        core = self.core
        assert core is not None
        w = data.draw(st.sampled_from(self.queue))
        assert core.cancel(w)
        self.queue.remove(w)
        self.apply()

    @rule(ok=st.booleans(), drained_meanwhile=st.booleans())
    @precondition(lambda self: self.core is not None and self.planned > 0)
    def worker_connects(self, ok: bool, drained_meanwhile: bool) -> None:
        core = self.core
        assert core is not None
        self.planned -= 1
        ticket = core.begin_open(self.now)
        if ticket is None:
            self.apply()
            return
        if drained_meanwhile:  # a credential rotation while this connect was under way
            core.drain(self.now)
            self.apply()
        if ok:
            conn = Conn(self.numbers)
            self.numbers += 1
            self.all_conns.append(conn)
            rec = core.opened(conn, self.now, ticket)
            if drained_meanwhile:
                assert rec not in core.idle and rec.key not in core.lent, "a stale connect kept"
        else:
            core.open_failed(RuntimeError("refused"), self.now, ticket)
        self.apply()

    @rule(data=st.data())
    @precondition(lambda self: self.core is not None and self.closes)
    def worker_closes(self, data: st.DataObject) -> None:
        core = self.core
        assert core is not None
        self.closes.remove(data.draw(st.sampled_from(self.closes)))
        core.close_done(self.now)
        self.apply()

    @rule(data=st.data(), reason=st.sampled_from([None, None, None, "broken", "discarded"]))
    @precondition(lambda self: self.core is not None and self.held)
    def checkin(self, data: st.DataObject, reason: str | None) -> None:
        core = self.core
        assert core is not None
        key = data.draw(st.sampled_from(sorted(self.held)))
        rec = self.held.pop(key)
        assert core.lent.pop(rec.key) is rec
        core.checkin(rec, self.now, reason)
        self.apply()

    @rule(data=st.data())
    @precondition(lambda self: self.core is not None and self.held)
    def ping_fails(self, data: st.DataObject) -> None:
        core = self.core
        assert core is not None
        key = data.draw(st.sampled_from(sorted(self.held)))
        rec = self.held.pop(key)
        core.discard(rec, "ping_failed", self.now)
        self.apply()

    @rule(data=st.data())
    @precondition(lambda self: self.core is not None and self.held)
    def garbage_collected(self, data: st.DataObject) -> None:
        core = self.core
        assert core is not None
        key = data.draw(st.sampled_from(sorted(self.held)))
        rec = self.held.pop(key)
        assert core.collected(rec, self.now)
        assert not core.collected(rec, self.now), "a slot was given back twice"
        self.apply()

    @rule(data=st.data(), ok=st.booleans())
    @precondition(lambda self: self.core is not None and self.pinging)
    def keepalive_ping_done(self, data: st.DataObject, ok: bool) -> None:
        core = self.core
        assert core is not None
        key = data.draw(st.sampled_from(sorted(self.pinging)))
        rec = self.pinging.pop(key)
        core.pinged(rec, ok, self.now)
        self.apply()

    @rule(dt=st.sampled_from([0.1, 1.0, 4.0, 20.0]))
    @precondition(lambda self: self.core is not None)
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule()
    @precondition(lambda self: self.core is not None)
    def housekeeping(self) -> None:
        core = self.core
        assert core is not None
        delay = core.maintain(self.now)
        assert delay > 0
        self.apply()
        # once the housekeeper has run, nobody waits while the pool could still grow for them,
        # unless the backoff after a failed connect holds growth back (it wakes then)
        starved = core._room() > core.opening and core.opening < len(self.queue)
        if not core.closed and starved:
            assert self.now < core.retry_at, "callers wait while the pool could grow for them"
            assert delay <= core.retry_at - self.now + 1e-9, "the retry after backoff is lost"

    @rule(min_size=st.integers(0, 3), extra=st.integers(0, 3))
    @precondition(lambda self: self.core is not None)
    def resize(self, min_size: int, extra: int) -> None:
        core = self.core
        assert core is not None
        cap = core.cap
        core.resize(min_size, max(1, min_size + extra), self.now)
        self.shrunk = self.shrunk or core.cap < cap
        self.apply()

    @rule()
    @precondition(lambda self: self.core is not None)
    def drain(self) -> None:
        core = self.core
        assert core is not None
        old = core.gen
        core.drain(self.now)
        assert all(r.gen > old for r in core.idle)
        self.apply()

    @rule()
    @precondition(lambda self: self.core is not None and not self.core.closed)
    def close(self) -> None:
        core = self.core
        assert core is not None
        core.close(PoolClosed("closed"))
        self.apply()
        assert not self.queue

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def rules_hold(self) -> None:
        core = self.core
        if core is None:
            return
        core.check_invariants()
        assert core.opening == self.planned, (core.opening, self.planned)
        assert set(core.lent) == set(self.held) | set(self.pinging), "a lent connection is lost"
        idle_keys = {r.key for r in core.idle}
        assert not idle_keys & self.closed_keys, "a closed connection is idle"
        assert not set(core.lent) & self.closed_keys, "a closed connection is lent"
        assert [w for w in core.waiters] == self.queue
        assert core.size <= core.cap or not core.idle
        assert core.closing == len(self.closes)
        # rule 1: the server never sees more sessions than the cap, closes in flight included
        # (only a resize down may leave lent surplus above it, closed as it comes back)
        if not self.shrunk:
            assert core.size + core.closing + core.opening <= core.cap, (
                core.size, core.closing, core.opening, core.cap)

    def teardown(self) -> None:
        core: Any = self.core
        if core is not None and not core.closed:
            core.close(PoolClosed("closed"))
            self.apply()


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
