"""Background threads of the sync pool: connects, closes and pings, and the housekeeper."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from queue import Empty, SimpleQueue

__all__ = ["Housekeeper", "Lane", "Workers"]

log = logging.getLogger("millpond")

Task = Callable[[], None]


#: a background thread with nothing to do for this long (seconds) ends
IDLE_EXIT = 10.0


class Lane:
    """Daemon threads running tasks from one queue, in order. A thread starts when a task
    arrives and none is free, up to ``limit``; a thread idle for ``IDLE_EXIT`` ends. So a
    task never queues behind a hung one while the limit allows another thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._tasks: deque[Task] = deque()
        self._threads: set[threading.Thread] = set()
        self._free = 0
        self._stopped = False

    def submit(self, task: Task, limit: int) -> None:
        with self._cond:
            self._tasks.append(task)
            if self._free >= len(self._tasks):
                self._cond.notify()
            elif len(self._threads) < max(limit, 1):
                t = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._threads.add(t)
                t.start()

    def _run(self) -> None:
        cond = self._cond
        me = threading.current_thread()
        while True:
            with cond:
                if not self._tasks and not self._stopped:
                    self._free += 1
                    cond.wait(IDLE_EXIT)
                    self._free -= 1
                if not self._tasks:
                    self._threads.discard(me)
                    return
                task = self._tasks.popleft()
            try:
                task()
            except BaseException:  # a task must never kill its thread (see _open_one)
                log.exception("background task failed (%s)", self._name)

    def stop(self, deadline: float) -> None:
        """Let queued tasks finish, then end the threads, waiting until ``deadline``
        (``time.monotonic``) at most in all."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            threads = list(self._threads)
        for t in threads:
            if t is not threading.current_thread():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                t.join(min(left, threading.TIMEOUT_MAX))


class Workers:
    """Background threads, so that connects and closes never run on a borrower's thread or
    under the pool's lock. Connects run in parallel up to the demand (the caller passes the
    pool's cap): hung connects never hold back the others. Closes and keepalive pings run in
    a lane of their own (``workers`` threads at most), never behind connects."""

    def __init__(self, name: str, count: int) -> None:
        self._connects = Lane(f"millpond-{name}-connect")
        self._chores = Lane(f"millpond-{name}-worker")
        self._count = count
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    def connect(self, task: Task, limit: int) -> None:
        self._connects.submit(task, limit)

    def submit(self, task: Task) -> None:
        """A close or a ping."""
        self._chores.submit(task, self._count)

    def stop(self, timeout: float) -> None:
        """Let queued tasks finish, then end the threads (waiting up to ``timeout`` in all)."""
        self._stopped = True
        deadline = time.monotonic() + min(timeout, threading.TIMEOUT_MAX)
        self._chores.stop(deadline)
        self._connects.stop(deadline)


class Housekeeper:
    """One daemon thread that runs ``tick`` when a deadline comes or when kicked.

    Kicks travel through a :class:`SimpleQueue` because its ``put`` is safe to call from a
    weakref callback inside the garbage collector, which may run on any thread at any moment,
    including one that holds the pool's lock.
    """

    def __init__(
        self, name: str, tick: Callable[[list[object]], float], first_tick: float = 0.0
    ) -> None:
        self._tick = tick
        self._first_tick = first_tick
        self._queue: SimpleQueue[object] = SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name=f"millpond-{name}-housekeeper", daemon=True
        )
        self._stop = object()
        self._thread.start()

    def kick(self, item: object = None) -> None:
        self._queue.put(item)

    def _run(self) -> None:
        delay = self._first_tick
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
            self._thread.join(min(timeout, threading.TIMEOUT_MAX))
