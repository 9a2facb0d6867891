"""An exception raised by a signal handler (KeyboardInterrupt, an alarm-based request timeout)
can land in the fast paths of ``Pool.getconn``/``putconn`` at any point where CPython runs
signal handlers: right after a call, and on entering a function. This test lands one at each
such point in turn (a trace function raising at the next instruction) and checks that the
pool's lock is free afterwards, no record is half-moved (every open connection is idle or
lent, exactly once) and the pool goes on serving.

Before the fix, a bare ``lock.acquire()``/``lock.release()`` pair left the lock held forever
when the exception landed between them, and every other thread then blocked for good."""

from __future__ import annotations

import dis
import itertools
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import millpond
from millpond.testing import FakeClock, FakeDriver


class Interrupted(KeyboardInterrupt):
    pass


def _after_call_offsets(code: types.CodeType) -> set[int]:
    """Offsets of instructions that follow a call: where a pending signal's handler runs."""
    ins = list(dis.get_instructions(code))
    return {b.offset for a, b in itertools.pairwise(ins) if a.opname.startswith("CALL")}


@contextmanager
def interrupt_at(codes: set[types.CodeType], point: int | None, seen: list[int]) -> Iterator[None]:
    """Raise ``Interrupted`` at the ``point``-th signal point met inside ``codes`` (None:
    only count them into ``seen``)."""
    offsets = {c: _after_call_offsets(c) for c in codes}

    def trace(frame: types.FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if frame.f_code not in codes:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode" and frame.f_lasti in offsets[frame.f_code]:
            seen.append(frame.f_lasti)
            if point is not None and len(seen) - 1 == point:
                raise Interrupted(f"signal at offset {frame.f_lasti}")
        return trace

    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(None)


def _check(pool: millpond.Pool, driver: FakeDriver) -> None:
    core = pool._core
    assert not pool._lock.locked(), "the pool's lock was left held"
    core.check_invariants()
    idle = [r.key for r in core.idle]
    lent = list(core.lent)
    open_ids = {id(c) for c in driver.open_connections}
    assert sorted(idle + lent) == sorted(open_ids), "a record was lost or is in two places"
    # the pool still serves: a connection is handed out and taken back
    conn = pool.getconn(timeout=2)
    pool.putconn(conn)


def _pool(driver: FakeDriver) -> millpond.Pool:
    # A clock that stands still, and every checkout polling the idle connection's socket:
    # otherwise whether some calls (signal points) happen depends on elapsed time (the socket
    # poll after 1 ms idle, the use-time histogram's call for a use over 100 us), and the
    # count of points varies from run to run on a loaded machine
    pool = millpond.Pool(
        driver, min_size=2, max_size=2, ping_window=3600, timeout=2, clock=FakeClock()
    )
    pool._peek_after = 0.0
    pool.open(wait=True)
    return pool


@pytest.mark.parametrize("path", ["getconn", "putconn"])
def test_a_signal_anywhere_in_the_fast_paths_loses_nothing(path: str) -> None:
    codes = {getattr(millpond.Pool, path).__code__}
    seen: list[int] = []

    def run(point: int | None) -> tuple[millpond.Pool, FakeDriver]:
        driver = FakeDriver()
        pool = _pool(driver)
        lent = pool.getconn() if path == "putconn" else None
        try:
            with interrupt_at(codes, point, seen):
                if path == "getconn":
                    conn = pool.getconn()
                else:
                    pool.putconn(lent)
        except Interrupted:
            pass
        else:
            if path == "getconn":
                pool.putconn(conn)
        return pool, driver

    # count the signal points on the fast path; the first traced call only warms up
    # (Python 3.12 sends no opcode events to a frame on the first traced call of its code)
    for _ in range(2):
        seen.clear()
        pool, _ = run(None)
        pool.close(timeout=1)
    points = len(seen)
    assert points >= 2, seen  # the check is not vacuous
    for point in range(points):
        seen.clear()
        pool, driver = run(point)
        try:
            assert len(seen) == point + 1, "the interruption did not land"
            _check(pool, driver)
        finally:
            pool.close(timeout=1)
