"""Deterministic doubles for testing code that uses millpond (and millpond itself).

``FakeClock`` is a monotonic clock that moves only when told. ``FakeDriver`` is a driver adapter
whose connections record what happened to them and fail on command::

    clock = FakeClock()
    driver = FakeDriver()
    pool = millpond.Pool(driver, clock=clock, max_lifetime=60)
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from typing import Any

from millpond.drivers.async_base import AsyncAdapter
from millpond.drivers.base import SyncAdapter, TxStatus

__all__ = [
    "AsyncFakeDriver",
    "FakeClock", "FakeConnection", "FakeDisconnect", "FakeDriver", "FakeError"]


class FakeClock:
    """A monotonic clock for tests: ``clock()`` reads it, ``advance(s)`` moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        with self._lock:
            self._now += seconds


class FakeError(Exception):
    """An ordinary error raised by a fake connection (a failed query)."""


class FakeDisconnect(FakeError):
    """The fake driver's "connection lost" error."""


class FakeConnection:
    """A DB-API-shaped connection that records its life."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False
        self.broken = False
        self.in_transaction = False
        self.aborted = False
        self.autocommit = False
        self.session: dict[str, Any] = {}
        self.rollbacks = 0
        self.commits = 0
        self.pings = 0
        self.full_resets = 0
        self.queries: list[str] = []
        self.unblock = threading.Event()

    def execute(self, sql: str) -> None:
        """Run a pretend statement: any statement opens a transaction unless autocommit."""
        if self.closed or self.broken:
            raise FakeDisconnect("connection lost")
        self.queries.append(sql)
        if sql.upper() == "BEGIN" or not self.autocommit:
            self.in_transaction = True
        if sql.startswith("SET "):
            key, _, value = sql[4:].partition("=")
            self.session[key.strip()] = value.strip()
        if sql == "FAIL":
            self.aborted = True
            raise FakeError("query failed")

    def commit(self) -> None:
        self._alive()
        self.commits += 1
        self.in_transaction = self.aborted = False

    def rollback(self) -> None:
        self._alive()
        self.rollbacks += 1
        self.in_transaction = self.aborted = False

    def close(self) -> None:
        self.closed = True

    def _alive(self) -> None:
        if self.closed or self.broken:
            raise FakeDisconnect("connection lost")

    def __repr__(self) -> str:
        return f"<FakeConnection #{self.number}{' closed' if self.closed else ''}>"


class _FakeSwitches:
    """What the sync and async fake drivers share: their connections and failure switches."""

    def _init_switches(self) -> None:
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self.connections: list[FakeConnection] = []
        self.fail_connect: BaseException | None = None
        self.fail_ping: set[int] = set()
        self.fail_reset: set[int] = set()
        self.hang_ping: set[int] = set()  # sync: these pings block until interrupted
        self.hang_reset: set[int] = set()  # sync: rollbacks and full resets block likewise
        self.on_close: Callable[[], None] | None = None  # sync: called before each close
        self.fail_close: BaseException | None = None  # every close raises this while set
        self.on_connect: Callable[[], None] | None = None

    def _make(self) -> FakeConnection:
        if self.on_connect is not None:
            self.on_connect()
        if self.fail_connect is not None:
            raise self.fail_connect
        conn = FakeConnection(next(self._numbers))
        with self._lock:
            self.connections.append(conn)
        return conn

    @property
    def open_connections(self) -> list[FakeConnection]:
        return [c for c in self.connections if not c.closed]

    def status(self, conn: Any) -> TxStatus:
        if conn.closed or conn.broken:
            return TxStatus.BROKEN
        if conn.aborted:
            return TxStatus.INERROR
        return TxStatus.INTRANS if conn.in_transaction else TxStatus.IDLE

    def is_closed(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    def get_autocommit(self, conn: Any) -> bool | None:
        return bool(conn.autocommit)


class FakeDriver(_FakeSwitches, SyncAdapter):
    """A driver adapter over :class:`FakeConnection` with switches for failures.

    ``fail_connect``: an exception every connect raises while set.
    ``fail_ping`` / ``fail_reset``: connections whose ``number`` is in the set fail that step.
    ``fail_close``: an exception every close raises (after closing) while set.
    ``hang_ping`` / ``hang_reset``: connections whose pings / resets block until interrupted.
    ``on_close``: called before each close (tests use it to block or count).
    ``on_connect``: called before each connect (tests use it to block or count).
    """

    name = "fake"
    supports_full_reset = True
    disconnect_errors = (FakeDisconnect,)

    def __init__(self, password: str | None = None) -> None:
        self._init_switches()
        super().__init__(self._make, description="fake://db", secrets=(password or "",))

    def ping(self, conn: Any) -> None:
        conn.pings += 1
        conn._alive()
        if conn.number in self.hang_ping:  # a server that stopped answering
            conn.unblock.wait(30)
            raise FakeDisconnect("connection interrupted")
        if conn.number in self.fail_ping:
            raise FakeDisconnect("ping failed")

    def close(self, conn: Any) -> None:
        if self.on_close is not None:
            self.on_close()
        conn.close()
        if self.fail_close is not None:
            raise self.fail_close

    def _hang(self, conn: Any) -> None:
        if conn.number in self.hang_reset:  # a server that stopped answering mid-reset
            conn.unblock.wait(30)
            raise FakeDisconnect("connection interrupted")

    def interrupt(self, conn: Any) -> bool:
        conn.broken = True
        conn.unblock.set()
        return True

    def full_reset(self, conn: Any) -> None:
        conn._alive()
        self._hang(conn)
        if conn.number in self.fail_reset:
            raise FakeError("reset failed")
        conn.rollback()
        conn.session.clear()
        conn.full_resets += 1

    def rollback(self, conn: Any) -> None:
        self._hang(conn)
        if conn.number in self.fail_reset:
            raise FakeError("rollback failed")
        conn.rollback()

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN")

    def set_autocommit(self, conn: Any, value: bool) -> None:
        conn.autocommit = value


class AsyncFakeDriver(_FakeSwitches, AsyncAdapter):
    """The async twin of :class:`FakeDriver`, over the same :class:`FakeConnection`.

    ``gates``: name -> ``asyncio.Event``; an operation of that name ("connect", "ping",
    "rollback", "full_reset", "close", "commit") waits for its event to be set, after setting
    ``entered[name]``, so a test can cancel a task at exactly that await point.
    """

    name = "fake-async"
    supports_full_reset = True
    disconnect_errors = (FakeDisconnect,)

    def __init__(self, password: str | None = None) -> None:
        self._init_switches()
        super().__init__(self._new, description="fake+async://db", secrets=(password or "",))
        self.gates: dict[str, asyncio.Event] = {}
        self.entered: dict[str, asyncio.Event] = {}
        self.terminated: list[FakeConnection] = []

    async def _gate(self, op: str) -> None:
        gate = self.gates.get(op)
        if gate is not None:
            self.entered.setdefault(op, asyncio.Event()).set()
            await gate.wait()

    async def _new(self) -> FakeConnection:
        await self._gate("connect")
        return self._make()

    async def close(self, conn: Any) -> None:
        await self._gate("close")
        conn.close()
        if self.fail_close is not None:
            raise self.fail_close

    def terminate(self, conn: Any) -> None:
        self.terminated.append(conn)
        conn.close()

    async def ping(self, conn: Any) -> None:
        await self._gate("ping")
        conn.pings += 1
        conn._alive()
        if conn.number in self.fail_ping:
            raise FakeDisconnect("ping failed")

    async def rollback(self, conn: Any) -> None:
        await self._gate("rollback")
        if conn.number in self.fail_reset:
            raise FakeError("rollback failed")
        conn.rollback()

    async def full_reset(self, conn: Any) -> None:
        await self._gate("full_reset")
        conn._alive()
        if conn.number in self.fail_reset:
            raise FakeError("reset failed")
        conn.rollback()
        conn.session.clear()
        conn.full_resets += 1

    async def set_autocommit(self, conn: Any, value: bool) -> None:
        conn.autocommit = value

    async def begin(self, conn: Any) -> Any:
        if conn.autocommit:
            conn.execute("BEGIN")
        return None

    async def commit(self, conn: Any, token: Any = None) -> None:
        await self._gate("commit")
        conn.commit()

    async def rollback_transaction(self, conn: Any, token: Any = None) -> None:
        await self.rollback(conn)
