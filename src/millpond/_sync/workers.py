"""Background threads of the sync pool: connectors/closers, and the housekeeper."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue

__all__ = ["Housekeeper", "Workers"]

log = logging.getLogger("millpond")

Task = Callable[[], None]


class Workers:
    """A few daemon threads that open and close connections, started on first use, so that
    connects and closes never run on a borrower's thread or under the pool's lock."""

    def __init__(self, name: str, count: int) -> None:
        self._name = name
        self._count = count
        self._queue: SimpleQueue[Task | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self._start_lock = threading.Lock()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def submit(self, task: Task) -> None:
        if len(self._threads) < self._count:
            self._start()
        self._queue.put(task)

    def _start(self) -> None:
        with self._start_lock:
            while len(self._threads) < self._count and not self._stopped:
                t = threading.Thread(
                    target=self._run, name=f"millpond-{self._name}-worker", daemon=True
                )
                t.start()
                self._threads.append(t)

    def _run(self) -> None:
        q = self._queue
        while True:
            task = q.get()
            if task is None:
                return
            try:
                task()
            except Exception:  # a task must never kill its worker
                log.exception("pool %r: background task failed", self._name)

    def stop(self, timeout: float) -> None:
        """Let queued tasks finish, then end the threads (waiting up to ``timeout``)."""
        self._stopped = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)


class Housekeeper:
    """One daemon thread that runs ``tick`` when a deadline comes or when kicked.

    Kicks travel through a :class:`SimpleQueue` because its ``put`` is safe to call from a
    weakref callback inside the garbage collector, which may run on any thread at any moment,
    including one that holds the pool's lock.
    """

    def __init__(self, name: str, tick: Callable[[list[object]], float]) -> None:
        self._tick = tick
        self._queue: SimpleQueue[object] = SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name=f"millpond-{name}-housekeeper", daemon=True
        )
        self._stop = object()
        self._thread.start()

    def kick(self, item: object = None) -> None:
        self._queue.put(item)

    def _run(self) -> None:
        delay = 0.0
        while True:
            items: list[object] = []
            with contextlib.suppress(Empty):
                items.append(self._queue.get(timeout=delay) if delay > 0 else self._queue.get_nowait())
            while True:  # batch everything already queued
                try:
                    items.append(self._queue.get_nowait())
                except Empty:
                    break
            if any(i is self._stop for i in items):
                return
            try:
                delay = self._tick([i for i in items if i is not None])
            except Exception:
                log.exception("housekeeping failed")
                delay = 1.0
            if delay < 0:  # the pool is gone
                return

    def stop(self, timeout: float) -> None:
        self._queue.put(self._stop)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
