"""One contract suite for both shells: each test drives a *handle* with blocking methods; the
async handle runs every call on an event loop in a background thread, so the same scenario
(threads queueing, returns handing over, timeouts) runs against ``Pool`` and ``AsyncPool``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import millpond
from millpond.testing import AsyncFakeDriver, FakeClock, FakeDriver


def wait_until(cond: Callable[[], bool], what: str, limit: float = 5.0) -> None:
    """Wait for background work to reach a state (a bound, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.001)


class SyncHandle:
    kind = "sync"

    def __init__(self, pool: millpond.Pool) -> None:
        self.pool = pool

    def open(self, wait: bool = False, timeout: float | None = None) -> None:
        self.pool.open(wait=wait, timeout=timeout)

    def getconn(self, timeout: float | None = None, fail_fast: bool = False) -> Any:
        return self.pool.getconn(timeout, fail_fast=fail_fast)

    def putconn(self, conn: Any, discard: bool = False) -> None:
        self.pool.putconn(conn, discard)

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        with self.pool.connection(timeout) as conn:
            yield conn

    @contextmanager
    def transaction(self, timeout: float | None = None) -> Iterator[Any]:
        with self.pool.transaction(timeout) as conn:
            yield conn

    def stats(self) -> millpond.PoolStats:
        return self.pool.stats()

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        self.pool.resize(min_size, max_size)

    def drain(self) -> None:
        self.pool.drain()

    def close(self, timeout: float = 5.0) -> None:
        self.pool.close(timeout)

    def maintain(self) -> None:
        self.pool._maintain()


class AsyncHandle:
    kind = "async"

    def __init__(self, pool: millpond.AsyncPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def on_loop() -> Any:
            return fn()

        return self.run(on_loop())

    def open(self, wait: bool = False, timeout: float | None = None) -> None:
        self.run(self.pool.open(wait=wait, timeout=timeout))

    def getconn(self, timeout: float | None = None, fail_fast: bool = False) -> Any:
        return self.run(self.pool.getconn(timeout, fail_fast=fail_fast))

    def putconn(self, conn: Any, discard: bool = False) -> None:
        self.run(self.pool.putconn(conn, discard))

    @contextmanager
    def _cm(self, cm: Any) -> Iterator[Any]:
        conn = self.run(cm.__aenter__())
        try:
            yield conn
        except BaseException as exc:
            self.run(cm.__aexit__(type(exc), exc, exc.__traceback__))
            raise
        self.run(cm.__aexit__(None, None, None))

    def connection(self, timeout: float | None = None) -> Any:
        return self._cm(self.pool.connection(timeout))

    def transaction(self, timeout: float | None = None) -> Any:
        return self._cm(self.pool.transaction(timeout))

    def stats(self) -> millpond.PoolStats:
        return self.call(self.pool.stats)  # type: ignore[no-any-return]

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        self.run(self.pool.resize(min_size, max_size))

    def drain(self) -> None:
        self.run(self.pool.drain())

    def close(self, timeout: float = 5.0) -> None:
        self.run(self.pool.close(timeout))

    def maintain(self) -> None:
        self.call(self.pool._maintain)


Handle = SyncHandle | AsyncHandle


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    t = threading.Thread(target=lp.run_forever, daemon=True)
    t.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    t.join(5)


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def driver(kind: str) -> FakeDriver | AsyncFakeDriver:
    if kind == "sync":
        return FakeDriver(password="hunter2-secret")
    return AsyncFakeDriver(password="hunter2-secret")


@pytest.fixture
def new_driver(kind: str) -> Callable[[], FakeDriver | AsyncFakeDriver]:
    return lambda: FakeDriver() if kind == "sync" else AsyncFakeDriver()


@pytest.fixture
def make_pool(
    kind: str, driver: Any, clock: FakeClock, loop: asyncio.AbstractEventLoop
) -> Iterator[Callable[..., Handle]]:
    handles: list[Handle] = []

    def make(**kw: Any) -> Handle:
        kw.setdefault("clock", clock)
        kw.setdefault("timeout", 5.0)
        wait = kw.pop("wait", True)
        start = kw.pop("open", True)
        target = kw.pop("target", driver)
        h: Handle
        if kind == "sync":
            h = SyncHandle(millpond.Pool(target, open=False, **kw))
        else:
            h = AsyncHandle(millpond.AsyncPool(target, **kw), loop)
        handles.append(h)
        if start:
            h.open(wait=wait, timeout=5)
        return h

    yield make
    for h in handles:
        h.close(timeout=0)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out
