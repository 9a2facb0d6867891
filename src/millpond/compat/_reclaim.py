"""Connections whose proxy was dropped without ``close()``, and fork: what a compat pool
lent or queued is the parent's, never to be touched in a child."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

log = logging.getLogger("millpond")

#: the longest a checkout waits for dropped connections being given back; each return is
#: bounded on its own (the engine's reset watchdog), this is the backstop
FLUSH_WAIT = 30.0


class Reclaimer:
    """Gives back connections whose proxy was garbage-collected without ``close()``.

    DBUtils returns such a connection from ``__del__``. Here a finalizer must not call the
    pool: the garbage collector may run it on any thread, at any allocation, including inside
    the engine's own locked sections. So ``__del__`` only queues the return (``SimpleQueue.put``
    and ``deque.append`` take no lock a finalizer could deadlock on); a daemon thread carries
    it out, and every call into a compat pool first runs what is queued and waits for the
    returns still in progress, so that ``del conn`` followed by a new checkout sees the
    connection back, as with the peer.
    """

    def __init__(self) -> None:
        self._queue: SimpleQueue[Callable[[], None]] = SimpleQueue()
        # one token per return queued and not finished, whoever runs it: the thread may have
        # taken a task off the queue and not begun it, which the queue alone cannot tell
        self._unfinished: deque[None] = deque()
        self._finished = threading.Condition()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (from a pool's constructor: starting one inside ``__del__`` could
        itself deadlock)."""
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                t = threading.Thread(
                    target=self._run, name="millpond-compat-reclaimer", daemon=True
                )
                t.start()
                self._thread = t

    def defer(self, task: Callable[[], None]) -> None:
        self._unfinished.append(None)
        self._queue.put(task)

    def flush(self) -> None:
        """Run the queued returns now, on this thread, and wait for those in progress (at
        most ``FLUSH_WAIT``: a return is itself bounded). Call it holding no pool lock."""
        if not self._unfinished:  # the common case costs this one check
            return
        if self._thread is None:
            self.start()  # after a fork: the parent's thread does not exist here
        queue = self._queue
        while not queue.empty():
            try:
                task = queue.get_nowait()
            except Empty:  # the thread took it meanwhile
                break
            self._do(task)
        with self._finished:
            self._finished.wait_for(lambda: not self._unfinished, FLUSH_WAIT)

    def _do(self, task: Callable[[], None]) -> None:
        try:
            task()
        except Exception:
            log.exception("millpond compat: giving back a dropped connection failed")
        finally:
            with self._finished:
                self._unfinished.pop()
                self._finished.notify_all()

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._do(queue.get())

    def after_fork_in_child(self) -> None:
        # returns the parent queued are the parent's to make: keep them unrun, and alive
        inherited.append(self._queue)
        self._queue = SimpleQueue()
        self._unfinished = deque()
        self._finished = threading.Condition()
        self._start_lock = threading.Lock()
        self._thread = None


reclaimer = Reclaimer()


# -- fork ---------------------------------------------------------------------------------------

#: what a child process inherited from its parent's compat pools (lent connections, queued
#: returns): kept referenced for good, because a driver's finalizer would otherwise say goodbye
#: to the server on the parent's socket. The engine does the same with its own connections.
inherited: list[Any] = []

#: what each live compat pool does in a forked child; weak, so a pool is not kept alive by it
_after_fork: list[weakref.WeakMethod[Callable[[], None]]] = []


def on_fork(after_fork_in_child: Callable[[], None]) -> None:
    """Run a compat pool's bound method ``after_fork_in_child`` in a forked child: the engine
    pool forgets the parent's connections there, so the layer must forget what it lent too
    (and renew its locks, which another thread may have held at the fork)."""
    _after_fork[:] = [ref for ref in _after_fork if ref() is not None]
    _after_fork.append(weakref.WeakMethod(after_fork_in_child))


def _after_fork_in_child() -> None:
    reclaimer.after_fork_in_child()
    for ref in list(_after_fork):
        method = ref()
        if method is not None:
            method()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
