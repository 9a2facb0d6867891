"""The reclaimer gives back connections whose proxy was dropped without close(): a checkout
right after ``del conn`` must see the connection back, whoever carries the return out."""

from __future__ import annotations

import threading
import time
from queue import SimpleQueue
from typing import Any

from millpond.compat._reclaim import Reclaimer


class _SlowHandOver(SimpleQueue[Any]):
    """The reclaimer thread has taken a task off the queue and not begun it yet: the moment
    a flush used to miss (seen on Python 3.13, where threads switch at other points)."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        item = super().get(block, timeout)
        time.sleep(0.2)
        return item


def test_flush_waits_for_a_return_taken_but_not_begun() -> None:
    reclaimer = Reclaimer()
    reclaimer._queue = _SlowHandOver()
    reclaimer.start()
    done: list[str] = []
    reclaimer.defer(lambda: done.append("given back"))
    deadline = time.monotonic() + 5
    while not reclaimer._queue.empty():  # the thread holds the task now
        assert time.monotonic() < deadline
        time.sleep(0.001)
    reclaimer.flush()
    assert done == ["given back"]


def test_flush_runs_queued_returns_on_the_calling_thread() -> None:
    reclaimer = Reclaimer()  # no thread started: flush starts it, and runs what is queued
    ran_on: list[str] = []
    reclaimer.defer(lambda: ran_on.append(threading.current_thread().name))
    reclaimer.flush()
    assert len(ran_on) == 1


def test_a_failing_return_is_logged_and_does_not_wedge_flush(caplog: Any) -> None:
    reclaimer = Reclaimer()

    def broken() -> None:
        raise RuntimeError("server gone")

    reclaimer.defer(broken)
    reclaimer.flush()
    reclaimer.flush()  # nothing left unfinished
    assert "giving back a dropped connection failed" in caplog.text
