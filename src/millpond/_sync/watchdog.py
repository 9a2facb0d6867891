"""One process-wide timer thread that interrupts blocking calls which overrun their deadline.

A sync driver's ping blocks in the kernel; when the server stops answering (a hung server, a
network that drops packets) it would block forever. The watchdog calls a function at the
deadline (the driver adapter's ``interrupt``, which shuts the socket down so the blocked call
fails at once). Arming and disarming cost a heap push and a notify: cheap enough for every
ping, which only runs on connections idle longer than ``ping_window``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Watchdog", "watchdog"]

log = logging.getLogger("millpond")


class Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Callable[[], object]] = {}
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, fn: Callable[[], object]) -> int:
        """Call ``fn`` at ``deadline`` (``time.monotonic``) unless disarmed first."""
        with self._cond:
            token = next(self._seq)
            self._armed[token] = fn
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="millpond-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0][1] == token:
                self._cond.notify()  # the new deadline is the earliest
        return token

    def disarm(self, token: int) -> bool:
        """False if it already fired (the call it guarded was interrupted)."""
        with self._cond:
            return self._armed.pop(token, None) is not None

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][1] not in self._armed:
                        heapq.heappop(self._heap)  # disarmed
                    if not self._heap:
                        self._cond.wait(60.0)
                        if not self._heap:
                            self._thread = None
                            return
                        continue
                    deadline, token = self._heap[0]
                    left = deadline - time.monotonic()
                    if left <= 0:
                        heapq.heappop(self._heap)
                        fn = self._armed.pop(token)
                        break
                    # a deadline years away (ping_timeout=1e10) overflows the OS timer
                    self._cond.wait(min(left, 3600.0))
            try:
                fn()
            except Exception:
                log.debug("watchdog: interrupting an overdue call failed", exc_info=True)

    def after_fork(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap.clear()
        self._armed.clear()
        self._thread = None


watchdog = Watchdog()
