"""The public contract of ``Pool`` and ``AsyncPool``, option by option, on the fake drivers and
clock: every test runs against both shells (see conftest.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from typing import Any

import pytest

import millpond
from millpond.testing import FakeClock, FakeConnection, FakeDisconnect, FakeError

from .conftest import in_thread, wait_until

# -- sizing ----------------------------------------------------------------------------------


def test_min_size_is_opened_and_connections_are_raw(make_pool: Any, driver: Any) -> None:
    pool = make_pool(min_size=3, max_size=5)
    s = pool.stats()
    assert (s.size, s.idle, s.in_use, s.opening, s.connects) == (3, 3, 0, 0, 3)
    with pool.connection() as conn:
        assert isinstance(conn, FakeConnection)  # the driver's own object, no proxy
        assert pool.stats().in_use == 1
    assert len(driver.open_connections) == 3


def test_grows_to_max_size_then_waits(make_pool: Any) -> None:
    pool = make_pool(min_size=0, max_size=2)
    a, b = pool.getconn(), pool.getconn()
    assert pool.stats().size == 2
    with pytest.raises(millpond.PoolTimeout) as ei:
        pool.getconn(timeout=0)
    msg = str(ei.value)
    assert "size=2" in msg and "in_use=2" in msg and "idle=0" in msg and "waiting=0" in msg
    assert repr(pool.pool.name) in msg
    assert isinstance(ei.value, TimeoutError)
    pool.putconn(a)
    pool.putconn(b)
    assert pool.stats().idle == 2


def test_max_overflow_connections_close_on_return(make_pool: Any, driver: Any) -> None:
    pool = make_pool(min_size=0, max_size=1, max_overflow=2)
    conns = [pool.getconn() for _ in range(3)]
    assert pool.stats().size == 3
    with pytest.raises(millpond.PoolTimeout):
        pool.getconn(timeout=0)
    for c in conns:
        pool.putconn(c)
    wait_until(lambda: len(driver.open_connections) == 1, "overflow closed")
    s = pool.stats()
    assert (s.size, s.idle) == (1, 1)
    assert s.closed_by_reason.get("overflow") == 2


def test_overflow_connection_serves_a_waiter_before_closing(make_pool: Any) -> None:
    pool = make_pool(min_size=0, max_size=1, max_overflow=1)
    a, b = pool.getconn(), pool.getconn()
    t, out = in_thread(lambda: pool.getconn(timeout=5))
    wait_until(lambda: pool.stats().waiting == 1, "queued")
    pool.putconn(b)
    t.join(5)
    assert out["value"] is b
    pool.putconn(a)
    pool.putconn(b)
    assert pool.stats().size == 1


# -- timeouts and queueing -------------------------------------------------------------------


def test_timeout_zero_none_and_negative(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1, timeout=0.05)
    c = pool.getconn(timeout=0)  # idle now: timeout=0 still lends
    with pytest.raises(millpond.PoolTimeout):
        pool.getconn()  # None: the pool's default (0.05 s)
    with pytest.raises(millpond.ConfigError, match="timeout"):
        pool.getconn(timeout=-1)
    pool.putconn(c)
    assert pool.stats().timeouts == 1


def test_max_waiting_sheds_load(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1, max_waiting=1)
    held = pool.getconn()
    t, out = in_thread(lambda: pool.getconn(timeout=5))
    wait_until(lambda: pool.stats().waiting == 1, "first waiter queued")
    with pytest.raises(millpond.TooManyWaiters, match="max_waiting=1"):
        pool.getconn(timeout=5)
    pool.putconn(held)
    t.join(5)
    assert out["value"] is held
    pool.putconn(held)
    assert pool.stats().shed == 1


def test_waiters_are_served_in_arrival_order(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn()
    order: list[int] = []
    threads = []
    for i in range(6):

        def take(i: int = i) -> None:
            c = pool.getconn(timeout=10)
            order.append(i)
            pool.putconn(c)

        t = threading.Thread(target=take, daemon=True)
        t.start()
        threads.append(t)
        wait_until(lambda i=i: pool.stats().waiting == i + 1, f"waiter {i} queued")
    pool.putconn(held)
    for t in threads:
        t.join(10)
    assert order == list(range(6))


def test_a_return_goes_to_the_waiter_not_to_a_newcomer(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn()
    t, out = in_thread(lambda: pool.getconn(timeout=5))
    wait_until(lambda: pool.stats().waiting == 1, "queued")
    pool.putconn(held)
    # the connection was handed over under the lock: a newcomer finds nothing idle
    with pytest.raises(millpond.PoolTimeout):
        pool.getconn(timeout=0)
    t.join(5)
    assert out["value"] is held
    pool.putconn(held)


def test_a_waiter_that_timed_out_loses_nothing(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn()
    with pytest.raises(millpond.PoolTimeout):
        pool.getconn(timeout=0.01)
    pool.putconn(held)
    s = pool.stats()
    assert (s.size, s.idle, s.waiting, s.in_use) == (1, 1, 0, 0)


def test_growth_only_while_demand_persists(make_pool: Any, driver: Any, kind: str) -> None:
    """A spike of waiters on a slow connect: one return serves them all, one after the other,
    without waiting for the connects; connects already under way finish and are kept, and
    the ones not begun by then are called off (none is left counted as opening)."""
    pool = make_pool(min_size=1, max_size=20, workers=2)
    held = pool.getconn()
    began = []
    if kind == "sync":
        gate = threading.Event()

        def slow() -> None:
            began.append(1)
            gate.wait(10)

        driver.on_connect = slow
        release = gate.set
    else:
        agate = asyncio.Event()
        driver.gates["connect"] = agate
        release = lambda: pool.loop.call_soon_threadsafe(agate.set)  # noqa: E731

    def borrow_and_return() -> None:
        conn = pool.getconn(timeout=10)
        pool.putconn(conn)

    threads = [in_thread(borrow_and_return) for _ in range(10)]
    wait_until(lambda: pool.stats().waiting == 10, "ten waiters")
    assert pool.stats().opening == 10  # one connect planned per waiter...
    pool.putconn(held)  # ...but one return serves them all, one after the other
    for t, out in threads:
        t.join(10)
        assert "error" not in out
    release()
    wait_until(lambda: pool.stats().opening == 0, "connects settled")
    s = pool.stats()
    assert s.connects <= 1 + 10
    assert s.size == s.connects and s.idle == s.size  # every connect that ran is kept
    if kind == "sync":
        assert s.connects == 1 + len(began)  # the rest never reached the driver


# -- return path ------------------------------------------------------------------------------


def test_uncommitted_work_is_rolled_back_on_return(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn:
        conn.execute("INSERT")
        assert conn.in_transaction
    assert not conn.in_transaction and conn.rollbacks == 1
    with pool.connection() as again:
        assert again is conn
    assert conn.rollbacks == 1  # nothing to roll back the second time: no round trip
    assert pool.stats().resets == 1


def test_exception_in_block_propagates_and_heals(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pytest.raises(FakeError), pool.connection() as conn:
        conn.execute("FAIL")
    assert not conn.aborted and conn.rollbacks == 1 and not conn.closed
    assert pool.stats().idle == 1


def test_disconnect_inside_block_discards_connection(make_pool: Any, driver: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pytest.raises(FakeDisconnect), pool.connection() as conn:
        conn.broken = True
        conn.execute("SELECT 1")
    wait_until(lambda: pool.stats().idle == 1, "replacement opened")
    with pool.connection() as fresh:
        assert fresh is not conn
    assert pool.stats().closed_by_reason["broken"] == 1


def test_connection_closed_by_user_is_replaced(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    conn.close()
    pool.putconn(conn)
    with pool.connection(timeout=5) as fresh:
        assert fresh is not conn and not fresh.closed


def test_returned_in_aborted_transaction_comes_back_clean(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    with pytest.raises(FakeError):
        conn.execute("FAIL")
    pool.putconn(conn)
    assert not conn.aborted and not conn.in_transaction


def test_putconn_discard(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    pool.putconn(conn, discard=True)
    wait_until(lambda: conn.closed, "discarded connection closed")
    with pool.connection(timeout=5) as fresh:
        assert fresh is not conn
    assert pool.stats().closed_by_reason["discarded"] == 1


def test_returned_twice_or_to_the_wrong_pool(make_pool: Any, new_driver: Any) -> None:
    pool = make_pool(min_size=1, max_size=2)
    other = make_pool(min_size=1, max_size=1, target=new_driver())
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(millpond.ForeignConnection, match="already returned"):
        pool.putconn(conn)
    foreign = other.getconn()
    with pytest.raises(millpond.ForeignConnection, match="not lent by this pool"):
        pool.putconn(foreign)
    other.putconn(foreign)
    with pytest.raises(millpond.ForeignConnection):
        pool.putconn(object())
    # nothing was lost on either side
    assert pool.stats().idle == 1 and other.stats().idle == 1


def test_reset_failure_discards(make_pool: Any, driver: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn:
        conn.execute("INSERT")
        driver.fail_reset.add(conn.number)
    wait_until(lambda: conn.closed, "connection whose rollback failed is closed")
    s = pool.stats()
    assert s.reset_failures == 1 and s.closed_by_reason["reset_failed"] == 1
    with pool.connection(timeout=5) as fresh:
        assert fresh is not conn


@pytest.mark.parametrize("policy", ["rollback", "full", None, "callable"])
def test_reset_policies(make_pool: Any, policy: Any) -> None:
    calls: list[Any] = []
    reset = (lambda c: calls.append(c)) if policy == "callable" else policy
    pool = make_pool(min_size=1, max_size=1, reset=reset)
    with pool.connection() as conn:
        conn.execute("SET role = admin")
    if policy == "full":
        assert conn.session == {} and conn.full_resets == 1
    else:
        assert conn.session == {"role": "admin"}
    if policy is None:
        assert conn.in_transaction  # documented as unsafe: nothing is done
    else:
        assert not conn.in_transaction
    if policy == "callable":
        assert calls == [conn]


def test_autocommit_is_restored_on_return(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn:
        conn.autocommit = True
    assert conn.autocommit is False


def test_transaction_commits_or_rolls_back(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pool.transaction() as conn:
        conn.execute("INSERT")
    assert conn.commits == 1 and not conn.in_transaction
    with pytest.raises(FakeError), pool.transaction() as conn:
        conn.execute("INSERT")
        raise FakeError("boom")
    assert conn.commits == 1 and conn.rollbacks == 1


def test_transaction_begins_explicitly_in_autocommit_mode(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1, configure=lambda c: setattr(c, "autocommit", True))
    with pool.transaction() as conn:
        assert conn.queries == ["BEGIN"]
        conn.execute("INSERT")
    assert conn.commits == 1 and conn.autocommit is True


# -- lifetimes, idle, uses -------------------------------------------------------------------


def test_max_lifetime_retires_on_return_and_when_idle(
    make_pool: Any, clock: FakeClock, driver: Any
) -> None:
    pool = make_pool(min_size=2, max_size=2, max_lifetime=100, max_idle=None)
    a = pool.getconn()
    clock.advance(101)
    pool.putconn(a)  # expired: closed instead of idled
    wait_until(lambda: a.closed, "expired connection closed on return")
    pool.maintain()  # the idle one expired too
    wait_until(lambda: len([c for c in driver.connections if c.closed]) == 2, "idle expired")
    wait_until(lambda: pool.stats().idle == 2, "refilled to min_size")
    assert pool.stats().closed_by_reason["expired"] == 2


def test_lifetime_is_jittered(make_pool: Any, clock: FakeClock) -> None:
    pool = make_pool(min_size=10, max_size=10, max_lifetime=1000)
    expiries = {r.expires for r in pool.pool._core.idle}
    assert len(expiries) > 1
    assert all(clock() + 900 <= e <= clock() + 1000 for e in expiries)


def test_max_idle_closes_above_min_size_only(make_pool: Any, clock: FakeClock) -> None:
    pool = make_pool(min_size=1, max_size=4, max_idle=60)
    conns = [pool.getconn() for _ in range(4)]
    for c in conns:
        pool.putconn(c)
    clock.advance(61)
    pool.maintain()
    wait_until(lambda: sum(c.closed for c in conns) == 3, "three idle ones closed")
    s = pool.stats()
    assert (s.size, s.idle) == (1, 1) and s.closed_by_reason["idle"] == 3


def test_max_uses(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1, max_uses=2)
    first = pool.getconn()
    pool.putconn(first)
    assert pool.getconn() is first
    pool.putconn(first)
    wait_until(lambda: first.closed, "used up")
    with pool.connection(timeout=5) as c:
        assert c is not first


# -- validation ------------------------------------------------------------------------------


def test_pre_ping_inside_and_outside_the_window(
    make_pool: Any, clock: FakeClock, driver: Any
) -> None:
    pool = make_pool(min_size=1, max_size=1, ping_window=0.5)
    with pool.connection() as conn:
        pass
    with pool.connection():
        pass
    assert conn.pings == 0  # used within ping_window: lent without a round trip
    clock.advance(1)
    with pool.connection():
        pass
    assert conn.pings == 1


def test_failed_ping_discards_and_lends_another(
    make_pool: Any, clock: FakeClock, driver: Any
) -> None:
    pool = make_pool(min_size=2, max_size=2)
    bad = driver.connections[1]  # LIFO: the most recently returned is lent first
    driver.fail_ping.add(bad.number)
    clock.advance(1)
    with pool.connection() as conn:
        assert conn is not bad and not conn.closed
    s = pool.stats()
    assert s.ping_failures == 1 and s.closed_by_reason["ping_failed"] == 1


def test_ping_window_zero_pings_every_checkout(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1, ping_window=0)
    for _ in range(3):
        with pool.connection() as conn:
            pass
    assert conn.pings == 3


def test_pre_ping_off_never_pings(make_pool: Any, clock: FakeClock) -> None:
    pool = make_pool(min_size=1, max_size=1, pre_ping=False)
    clock.advance(3600)
    with pool.connection() as conn:
        pass
    assert conn.pings == 0


def test_configure_runs_once_per_connection(make_pool: Any) -> None:
    seen: list[FakeConnection] = []
    pool = make_pool(min_size=2, max_size=2, configure=seen.append)
    for _ in range(5):
        with pool.connection():
            pass
    assert len(seen) == 2 and len({id(c) for c in seen}) == 2


def test_configure_failure_is_a_connect_error(make_pool: Any, driver: Any) -> None:
    def bad(conn: Any) -> None:
        raise FakeError("SET failed")

    pool = make_pool(min_size=1, max_size=1, configure=bad, wait=False)
    with pytest.raises(millpond.ConnectError, match="SET failed"):
        pool.getconn(timeout=5)
    assert all(c.closed for c in driver.connections)


# -- outages ---------------------------------------------------------------------------------


def test_unreachable_server_is_a_connect_error_not_a_timeout(
    make_pool: Any, driver: Any, clock: FakeClock
) -> None:
    driver.fail_connect = FakeDisconnect("could not connect: password=hunter2-secret refused")
    pool = make_pool(min_size=1, max_size=2, wait=False)
    with pytest.raises(millpond.ConnectError) as ei:
        pool.getconn(timeout=10)
    assert "hunter2-secret" not in str(ei.value)
    assert ei.value.__cause__ is not None
    assert "hunter2-secret" not in str(ei.value.__cause__)
    assert "could not connect" in str(ei.value)
    assert "hunter2-secret" not in repr(pool.pool) + repr(pool.stats())
    with pytest.raises(millpond.ConnectError):
        pool.open(wait=True, timeout=10)
    driver.fail_connect = None
    clock.advance(2)  # past the backoff (the pool's clock drives it)
    pool.maintain()  # what the housekeeper does when the backoff runs out
    wait_until(lambda: pool.stats().idle == 1, "recovered by itself")
    with pool.connection(timeout=5):
        pass
    assert pool.stats().connect_errors >= 1


# -- leaks and lost connections --------------------------------------------------------------


def borrow_and_hold(handle: Any) -> Any:
    """Borrow straight from the pool, so this function is the borrower the pool records."""
    if handle.kind == "sync":
        return handle.pool.getconn()

    async def borrow_and_hold_async() -> Any:
        return await handle.pool.getconn()

    return handle.run(borrow_and_hold_async())


def test_leak_warning_with_stack_and_second_line(
    make_pool: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(min_size=1, max_size=1, leak_timeout=10, name="leaky")
    conn = borrow_and_hold(pool)
    clock.advance(11)

    def leaks() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "held for" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="millpond"):
        pool.maintain()
        pool.maintain()  # reported once, not on every pass
        # the background housekeeper may have found the leak first: it logs after leaving
        # the lock, so its warning can still be on its way when these passes return
        wait_until(lambda: bool(leaks()), "leak reported")
    assert len(leaks()) == 1
    message = leaks()[0].getMessage()
    assert "'leaky'" in message and "borrow_and_hold" in message
    with pytest.raises(millpond.PoolTimeout, match=r"oldest borrower .* 11.0s.* borrow_and_hold"):
        pool.getconn(timeout=0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="millpond"):
        pool.putconn(conn)
    assert any("came back" in r.getMessage() for r in caplog.records)
    assert pool.stats().leaks == 1


def test_garbage_collected_connection_gives_its_slot_back(
    make_pool: Any, driver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(min_size=1, max_size=1, leak_timeout=60)
    driver.connections.clear()  # the fake driver's own record would keep it alive
    with caplog.at_level(logging.WARNING, logger="millpond"):
        conn = pool.getconn()
        del conn
        gc.collect()
        wait_until(lambda: pool.stats().lost == 1, "slot recovered")
        with pool.connection(timeout=5):
            pass
    assert any("garbage-collected" in r.getMessage() for r in caplog.records)
    assert pool.stats().closed_by_reason["garbage_collected"] == 1


# -- administration --------------------------------------------------------------------------


def test_resize(make_pool: Any, driver: Any) -> None:
    pool = make_pool(min_size=1, max_size=4)
    conns = [pool.getconn() for _ in range(4)]
    pool.putconn(conns[0])
    pool.putconn(conns[1])
    pool.resize(min_size=1, max_size=2)
    # surplus idle closed at once, surplus lent on return
    wait_until(lambda: pool.stats().size == 2, "idle surplus closed")
    pool.putconn(conns[2])
    pool.putconn(conns[3])
    wait_until(lambda: pool.stats().size == 2, "lent surplus closed on return")
    assert pool.stats().max_size == 2
    pool.resize(min_size=3, max_size=5)
    wait_until(lambda: pool.stats().idle == 3, "grown to the new min_size")
    with pytest.raises(millpond.ConfigError, match="min_size"):
        pool.resize(min_size=6)


def test_drain_replaces_every_connection(make_pool: Any, driver: Any) -> None:
    pool = make_pool(min_size=2, max_size=3)
    lent = pool.getconn()
    old = set(map(id, driver.connections))
    pool.drain()
    wait_until(lambda: pool.stats().idle >= 1, "replacements opened")
    with pool.connection(timeout=5) as c:
        assert id(c) not in old
    pool.putconn(lent)
    wait_until(lambda: lent.closed, "lent old-generation connection closed on return")
    assert pool.stats().closed_by_reason["drained"] == 2


def test_open_false_then_open_wait(make_pool: Any) -> None:
    pool = make_pool(min_size=2, max_size=2, open=False)
    with pytest.raises(millpond.PoolClosed, match="not open"):
        pool.getconn()
    pool.open(wait=True, timeout=5)
    assert pool.stats().idle == 2


def test_close_fails_waiters_and_closes_returns(make_pool: Any, driver: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn()
    t, out = in_thread(lambda: pool.getconn(timeout=10))
    wait_until(lambda: pool.stats().waiting == 1, "queued")
    closer, _ = in_thread(lambda: pool.close(timeout=5))
    t.join(5)
    assert isinstance(out["error"], millpond.PoolClosed)
    pool.putconn(held)
    closer.join(5)
    assert held.closed and not closer.is_alive()
    with pytest.raises(millpond.PoolClosed):
        pool.getconn()
    with pytest.raises(millpond.PoolClosed):
        pool.open()
    assert pool.stats().closed and all(c.closed for c in driver.connections)


def test_context_manager(kind: str, driver: Any, loop: Any) -> None:
    if kind == "sync":
        with millpond.Pool(driver, min_size=1) as pool, pool.connection(timeout=5) as conn:
            assert not conn.closed
        assert conn.closed and pool.stats().closed
        return

    async def scenario() -> Any:
        async with (
            millpond.AsyncPool(driver, min_size=1) as pool,
            pool.connection(timeout=5) as conn,
        ):
            assert not conn.closed
        return pool, conn

    import asyncio

    pool, conn = asyncio.run_coroutine_threadsafe(scenario(), loop).result(10)
    assert conn.closed and pool.stats().closed


def test_stats_is_a_frozen_snapshot(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    s = pool.stats()
    with pytest.raises(AttributeError):
        s.size = 3  # type: ignore[misc]
    assert s.as_dict()["size"] == 1


def test_repr_hides_password(make_pool: Any) -> None:
    pool = make_pool(min_size=0, name="app")
    assert "hunter2" not in repr(pool.pool) and "'app'" in repr(pool.pool)


# -- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"max_size": 0}, "max_size"),
        ({"min_size": 5, "max_size": 2}, "min_size"),
        ({"timeout": -1}, "timeout"),
        ({"max_lifetime": 0}, "max_lifetime"),
        ({"max_idle": -5}, "max_idle"),
        ({"ping_window": -1}, "ping_window"),
        ({"reset": "sometimes"}, "reset"),
        ({"max_waiting": -1}, "max_waiting"),
        ({"max_overflow": 1.5}, "max_overflow"),
        ({"leak_timeout": 0}, "leak_timeout"),
        ({"min_size": "2"}, "min_size"),
    ],
)
def test_config_errors_name_the_option(
    kind: str, driver: Any, kwargs: dict[str, Any], option: str
) -> None:
    cls = millpond.Pool if kind == "sync" else millpond.AsyncPool
    with pytest.raises(millpond.ConfigError, match=option) as ei:
        cls(driver, **kwargs)
    assert isinstance(ei.value, ValueError)


def test_connect_kwargs_with_an_adapter_is_refused(kind: str, driver: Any) -> None:
    cls = millpond.Pool if kind == "sync" else millpond.AsyncPool
    with pytest.raises(millpond.ConfigError, match="connect_kwargs"):
        cls(driver, connect_kwargs={"x": 1})


# -- fork ------------------------------------------------------------------------------------


# the pool's threads are alive at fork() on purpose: that is the case under test (Python 3.12+
# warns about it)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("kind", ["sync"])  # an event loop does not survive fork()
def test_child_after_fork_drops_inherited_connections_without_closing(
    kind: str, make_pool: Any
) -> None:
    pool = make_pool(min_size=2, max_size=2)
    inherited = list(pool.pool._core.idle)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running pytest's teardown
        try:
            with pool.connection(timeout=5) as conn:
                fresh = all(conn is not rec.conn for rec in inherited)
            closed = any(rec.conn is not None and rec.conn.closed for rec in inherited)
            os.write(w, f"{fresh} {closed} {pool.stats().closed_by_reason.get('fork')}".encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    report = os.read(r, 100).decode()
    os.close(r)
    assert report == "True False 2"
    assert pool.stats().idle == 2  # the parent is unaffected


def test_a_disconnect_makes_the_idle_connections_suspect(make_pool: Any, driver: Any) -> None:
    pool = make_pool(min_size=3, max_size=3)
    with pytest.raises(FakeDisconnect), pool.connection() as dead:
        dead.broken = True
        dead.execute("SELECT 1")
    wait_until(lambda: pool.stats().idle == 3, "replacement opened")
    old = [c for c in driver.connections[:3] if c is not dead]
    new = driver.connections[3]
    held = [pool.getconn() for _ in range(3)]
    assert set(held) == {*old, new}
    # within ping_window, yet pinged: they were opened before the connection that died
    assert [c.pings for c in old] == [1, 1] and new.pings == 0
    for c in held:
        pool.putconn(c)


@pytest.mark.parametrize("bad", [-1, float("nan"), "soon"])
def test_invalid_timeout_is_refused_even_when_a_connection_is_idle(
    make_pool: Any, bad: Any
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pytest.raises(millpond.ConfigError, match="timeout"):
        pool.getconn(timeout=bad)
    assert pool.stats().idle == 1


def test_open_wait_fails_at_once_when_the_pool_is_closed(make_pool: Any, driver: Any) -> None:
    pool = make_pool(min_size=1, max_size=1, open=False)
    if pool.kind == "sync":
        gate = threading.Event()
        driver.on_connect = lambda: gate.wait(10)
    else:
        gate = None
        driver.gates["connect"] = asyncio.Event()
    t, out = in_thread(lambda: pool.open(wait=True, timeout=30))
    wait_until(lambda: pool.stats().opening == 1, "connect under way")
    pool.close(timeout=0)
    t.join(10)
    assert not t.is_alive()
    assert isinstance(out.get("error"), millpond.PoolClosed)
    if gate is not None:
        gate.set()


def test_each_waiter_raises_its_own_error(make_pool: Any, driver: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn()
    waiters = [in_thread(lambda: pool.getconn(timeout=10)) for _ in range(2)]
    wait_until(lambda: pool.stats().waiting == 2, "two waiters")
    closer, _ = in_thread(lambda: pool.close(timeout=5))
    errors = []
    for t, out in waiters:
        t.join(10)
        errors.append(out["error"])
    pool.putconn(held)
    closer.join(10)
    assert all(isinstance(e, millpond.PoolClosed) for e in errors)
    assert errors[0] is not errors[1]


def test_concurrent_double_return_resets_once(make_pool: Any, driver: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    conn.execute("INSERT")
    if pool.kind == "sync":
        gate = threading.Event()
        entered = threading.Event()
        real_rollback = driver.rollback

        def slow_rollback(c: Any) -> None:
            entered.set()
            gate.wait(10)
            real_rollback(c)

        driver.rollback = slow_rollback
        first, out1 = in_thread(lambda: pool.putconn(conn))
        entered.wait(10)
        with pytest.raises(millpond.ForeignConnection):
            pool.putconn(conn)
        gate.set()
        first.join(10)
        assert "error" not in out1
    else:
        driver.gates["rollback"] = agate = asyncio.Event()

        async def both() -> list[Any]:
            t1 = asyncio.ensure_future(pool.pool.putconn(conn))
            await driver.entered.setdefault("rollback", asyncio.Event()).wait()
            t2 = asyncio.ensure_future(pool.pool.putconn(conn))
            await asyncio.sleep(0)
            agate.set()
            return await asyncio.gather(t1, t2, return_exceptions=True)

        results = pool.run(both())
        assert results[0] is None
        assert isinstance(results[1], millpond.ForeignConnection)
    assert conn.rollbacks == 1
    wait_until(lambda: pool.stats().idle == 1, "returned once")


def test_keepalive_pings_idle_connections_in_the_background(
    make_pool: Any, driver: Any, clock: FakeClock
) -> None:
    pool = make_pool(min_size=2, max_size=2, keepalive=30)
    conns = list(driver.connections)
    clock.advance(31)
    pool.maintain()
    wait_until(lambda: all(c.pings == 1 for c in conns), "both pinged")
    wait_until(lambda: pool.stats().idle == 2, "back to idle")
    # a dead one is found by the keepalive, not by a borrower
    driver.fail_ping.add(conns[0].number)
    clock.advance(31)
    pool.maintain()
    wait_until(lambda: pool.stats().closed_by_reason.get("keepalive_failed") == 1, "found dead")
    wait_until(lambda: pool.stats().idle == 2, "replaced")
    with pool.connection() as c1, pool.connection() as c2:
        assert conns[0] not in (c1, c2)


def test_full_reset_runs_configure_again(make_pool: Any) -> None:
    pool = make_pool(
        min_size=1, max_size=1, reset="full", configure=lambda c: c.session.update(tz="UTC")
    )
    with pool.connection() as conn:
        conn.execute("SET role = admin")
        assert conn.session == {"tz": "UTC", "role": "admin"}
    assert conn.session == {"tz": "UTC"}  # the borrower's state gone, configure's back


def test_leaks_are_reported_without_waiting_for_other_deadlines(make_pool: Any) -> None:
    """Real clock: the housekeeper must wake for a connection lent after its last pass."""
    pool = make_pool(min_size=1, max_size=1, leak_timeout=0.2, clock=None)
    conn = pool.getconn()
    wait_until(lambda: pool.stats().leaks == 1, "leak reported", limit=3.0)
    pool.putconn(conn)


@pytest.mark.parametrize("kind", ["sync"])  # AsyncPool: see tests/asyncpool (gated ping)
def test_a_ping_that_never_answers_is_interrupted(kind: str, make_pool: Any, driver: Any) -> None:
    pool = make_pool(min_size=1, max_size=1, ping_window=0, ping_timeout=0.1)
    hung = driver.connections[0]
    driver.hang_ping.add(hung.number)
    with pool.connection(timeout=5) as conn:  # the hung one is interrupted and replaced
        assert conn is not hung
    assert hung.broken
    assert pool.stats().closed_by_reason["ping_failed"] == 1


@pytest.mark.parametrize("kind", ["sync"])
def test_a_hung_ping_does_not_outlive_the_callers_deadline(
    kind: str, make_pool: Any, driver: Any
) -> None:
    pool = make_pool(min_size=1, max_size=1, ping_window=0, ping_timeout=30)
    driver.hang_ping.add(driver.connections[0].number)
    driver.on_connect = lambda: driver.hang_ping.update({len(driver.connections) + 1})
    with pytest.raises(millpond.PoolTimeout):
        pool.getconn(timeout=0.2)


def test_open_wait_fails_on_its_own_connects_not_an_older_failure(
    make_pool: Any, driver: Any, clock: FakeClock
) -> None:
    """A connect that failed before ``open(wait=True)`` (before a resize, say) does not fail
    a wait whose own connects succeed; one of its own connects failing still fails it at once
    (compat's ``add_connection`` grows a pool this way)."""
    pool = make_pool(min_size=0, max_size=3, wait=False)
    driver.fail_connect = FakeDisconnect("refused")
    with pytest.raises(millpond.ConnectError):
        pool.getconn(timeout=5, fail_fast=True)
    driver.fail_connect = None
    clock.advance(2)  # past the backoff: the next connects are tried at once
    pool.resize(min_size=2)
    pool.open(wait=True, timeout=10)
    assert pool.stats().size == 2
    driver.fail_connect = FakeDisconnect("refused again")
    pool.resize(min_size=3)
    started = time.monotonic()
    with pytest.raises(millpond.ConnectError, match="refused again"):
        pool.open(wait=True, timeout=20)
    assert time.monotonic() - started < 10  # at once, not after the timeout
