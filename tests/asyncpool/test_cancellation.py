"""AsyncPool under cancellation, at each await point, driven by gates in the fake driver (no
sleeps): the connection comes back or is replaced, the cancellation propagates, no slot is lost."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
from typing import Any

import pytest
import pytest_asyncio

import millpond
from millpond.testing import AsyncFakeDriver, FakeClock

pytestmark = pytest.mark.asyncio


async def settle(pool: millpond.AsyncPool, *, idle: int, limit: float = 5.0) -> None:
    """Let background tasks (connects, closes, shielded resets) finish."""
    async def until() -> None:
        while not (pool.stats().idle == idle and pool.stats().opening == 0):
            await asyncio.sleep(0)

    await asyncio.wait_for(until(), limit)


def whole(pool: millpond.AsyncPool, size: int) -> None:
    s = pool.stats()
    assert (s.in_use, s.waiting, s.opening) == (0, 0, 0), s
    assert s.size == s.idle == size, s
    pool._core.check_invariants()


@pytest_asyncio.fixture
async def pool_and_driver() -> Any:
    driver = AsyncFakeDriver()
    pool = millpond.AsyncPool(driver, min_size=1, max_size=1, clock=FakeClock(), timeout=5)
    await pool.open(wait=True, timeout=5)
    yield pool, driver
    await pool.close(timeout=1)


async def test_cancelled_while_queued(pool_and_driver: Any) -> None:
    pool, _driver = pool_and_driver
    held = await pool.getconn()
    task = asyncio.create_task(pool.getconn())
    while pool.stats().waiting != 1:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats().waiting == 0
    await pool.putconn(held)
    whole(pool, 1)


async def test_cancelled_at_the_moment_of_hand_off(pool_and_driver: Any) -> None:
    pool, _driver = pool_and_driver
    held = await pool.getconn()
    first = asyncio.create_task(pool.getconn())
    second = asyncio.create_task(pool.getconn())
    while pool.stats().waiting != 2:
        await asyncio.sleep(0)
    await pool.putconn(held)  # handed to `first`, which has not resumed yet...
    first.cancel()  # ...and is cancelled before it does: it must pass the connection on
    with pytest.raises(asyncio.CancelledError):
        await first
    got = await asyncio.wait_for(second, 5)
    assert got is held
    await pool.putconn(got)
    whole(pool, 1)


async def test_cancelled_during_the_ping(pool_and_driver: Any) -> None:
    pool, driver = pool_and_driver
    pool._core.ping_window = 0  # ping every checkout
    driver.gates["ping"] = gate = asyncio.Event()
    task = asyncio.create_task(pool.getconn())
    await driver.entered.setdefault("ping", asyncio.Event()).wait()
    pinged = driver.connections[0]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pinged in driver.terminated  # mid-ping: dropped, not lent, not returned
    del driver.gates["ping"]
    gate.set()
    await settle(pool, idle=1)
    whole(pool, 1)
    assert pool.stats().closed_by_reason["cancelled"] == 1


async def test_cancelled_inside_the_block(pool_and_driver: Any) -> None:
    pool, driver = pool_and_driver
    entered = asyncio.Event()

    async def work() -> None:
        async with pool.connection() as conn:
            conn.execute("SELECT 1")
            entered.set()
            await asyncio.Event().wait()  # a query that never ends

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # a connection cancelled mid-query may be mid-protocol: it is replaced, not reused
    assert driver.connections[0] in driver.terminated
    await settle(pool, idle=1)
    whole(pool, 1)


async def test_cancelled_during_the_reset_on_return(pool_and_driver: Any) -> None:
    pool, driver = pool_and_driver
    conn = await pool.getconn()
    conn.execute("INSERT")
    driver.gates["rollback"] = gate = asyncio.Event()
    task = asyncio.create_task(pool.putconn(conn))
    await driver.entered.setdefault("rollback", asyncio.Event()).wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats().in_use == 1  # still resetting: counted as in use
    gate.set()  # the shielded reset finishes in the background
    await settle(pool, idle=1)
    whole(pool, 1)
    assert conn.rollbacks == 1 and not conn.closed
    assert await pool.getconn() is conn  # back in the pool, clean
    await pool.putconn(conn)


async def test_a_reset_that_fails_replaces_the_connection(pool_and_driver: Any) -> None:
    pool, driver = pool_and_driver
    conn = await pool.getconn()
    conn.execute("INSERT")
    driver.fail_reset.add(conn.number)
    await pool.putconn(conn)
    await settle(pool, idle=1)
    whole(pool, 1)
    assert conn.closed and pool.stats().reset_failures == 1


async def test_timeout_via_wait_for_leaves_the_pool_whole(pool_and_driver: Any) -> None:
    pool, _driver = pool_and_driver
    held = await pool.getconn()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pool.getconn(), 0.01)
    await pool.putconn(held)
    whole(pool, 1)


async def test_random_cancellation_storm() -> None:
    """Many tasks, a third cancelled at random moments: afterwards all is idle or closed."""
    rng = random.Random(7)
    driver = AsyncFakeDriver()
    pool = millpond.AsyncPool(driver, min_size=2, max_size=5, timeout=30)
    await pool.open(wait=True, timeout=5)

    async def worker(i: int) -> None:
        async with pool.connection() as conn:
            conn.execute("SELECT 1")
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)

    tasks = [asyncio.create_task(worker(i)) for i in range(2000)]
    for _ in range(60):
        await asyncio.sleep(0)
        for t in rng.sample(tasks, 12):
            t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert 0 < cancelled < len(tasks)
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
    await settle(pool, idle=pool.stats().size)
    s = pool.stats()
    assert (s.in_use, s.waiting, s.opening) == (0, 0, 0)
    assert 2 <= s.size <= 5
    assert len(driver.open_connections) == s.size  # nothing open that the pool forgot
    await pool.close()


async def test_unopened_pool_and_wrong_loop() -> None:
    pool = millpond.AsyncPool(AsyncFakeDriver(), min_size=1)
    with pytest.raises(millpond.PoolClosed, match="not open"):
        await pool.getconn()
    await pool.open(wait=True, timeout=5)

    def use_from_another_loop() -> BaseException | None:
        async def use() -> None:
            await pool.getconn()

        try:
            asyncio.run(use())
        except BaseException as exc:
            return exc
        return None

    result: list[BaseException | None] = []
    t = threading.Thread(target=lambda: result.append(use_from_another_loop()))
    t.start()
    t.join(5)
    assert isinstance(result[0], millpond.WrongEventLoop)
    assert "event loop" in str(result[0])
    whole(pool, 1)
    await pool.close()


async def test_garbage_collected_connection_gives_its_slot_back() -> None:
    driver = AsyncFakeDriver()
    pool = millpond.AsyncPool(driver, min_size=1, max_size=1)
    await pool.open(wait=True, timeout=5)
    conn = await pool.getconn()
    driver.connections.clear()
    del conn
    gc.collect()
    got = await pool.getconn(timeout=5)
    assert pool.stats().lost == 1
    await pool.putconn(got)
    await pool.close()


async def test_open_true_is_refused() -> None:
    with pytest.raises(millpond.ConfigError, match="open"):
        millpond.AsyncPool(AsyncFakeDriver(), open=True)


async def test_a_ping_that_never_answers_is_bounded_by_the_deadline() -> None:
    driver = AsyncFakeDriver()
    pool = millpond.AsyncPool(driver, min_size=1, max_size=1, ping_window=0, timeout=0.2)
    await pool.open(wait=True, timeout=5)
    hung = driver.connections[0]
    driver.gates["ping"] = asyncio.Event()  # never set: a blackholed connection
    with pytest.raises(millpond.PoolTimeout):
        await pool.getconn()
    assert hung in driver.terminated
    del driver.gates["ping"]
    await settle(pool, idle=1)
    whole(pool, 1)
    assert pool.stats().closed_by_reason["ping_failed"] == 1
    await pool.close()


class _StuckRecovering(AsyncFakeDriver):
    """A driver whose recovery of a cut-off connection never finishes, and whose abandon
    would wait too (as asyncpg's waits for its cancel request)."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck = asyncio.Event()  # never set
        self.recovering = asyncio.Event()

    async def recover(self, conn: Any) -> bool:
        self.recovering.set()
        await self.stuck.wait()
        return True

    async def abandon(self, conn: Any) -> None:
        await self.stuck.wait()


async def test_close_does_not_wait_out_a_stuck_recovery() -> None:
    """close(timeout) cancels a recovery still running at its deadline: the connection is
    terminated at once, not after a second wait of the driver's own."""
    driver = _StuckRecovering()
    pool = millpond.AsyncPool(driver, min_size=1, max_size=1, timeout=5)
    await pool.open(wait=True)

    async def block() -> None:
        async with pool.connection():
            await asyncio.sleep(30)

    task = asyncio.create_task(block())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(driver.recovering.wait(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pool.close(timeout=0.2)
    assert loop.time() - started < 2  # CLOSE_TIMEOUT (5 s) before the fix
    assert len(driver.terminated) == 1
    stats = pool.stats()
    assert (stats.in_use, stats.lost) == (0, 0), stats


class _Recovering(AsyncFakeDriver):
    async def recover(self, conn: Any) -> bool:
        return True


async def test_a_recovered_connection_is_rolled_back_and_kept() -> None:
    driver = _Recovering()
    pool = millpond.AsyncPool(driver, min_size=1, max_size=1, timeout=5)
    await pool.open(wait=True)
    try:
        async def block() -> None:
            async with pool.connection() as conn:
                conn.execute("SELECT 1")  # a transaction the cut-off left open
                await asyncio.sleep(30)

        task = asyncio.create_task(block())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle(pool, idle=1)
        stats = pool.stats()
        assert (stats.connects, stats.closed_total, stats.resets) == (1, 0, 1), stats
        assert driver.terminated == []
        whole(pool, 1)
    finally:
        await pool.close()
