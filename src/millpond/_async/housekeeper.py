"""The asyncio shell's housekeeper task, and how a garbage-collector callback wakes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from millpond._async.borrowed import bounded

if TYPE_CHECKING:
    from millpond._async.pool import AsyncPool

__all__ = ["housekeep_loop", "thread_safe_kick"]

log = logging.getLogger("millpond")


def thread_safe_kick(loop: asyncio.AbstractEventLoop, kick: asyncio.Event) -> Callable[[], None]:
    """Wake the housekeeper from a weakref callback: any thread, maybe inside the garbage
    collector, so only a thread-safe call onto the loop."""

    def notify() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(kick.set)

    return notify


async def housekeep_loop(ref: weakref.ref[AsyncPool], kick: asyncio.Event) -> None:
    """Runs housekeeping at each deadline or kick; holds the pool weakly so an unclosed pool
    can still be collected."""
    while True:
        pool = ref()
        if pool is None:
            return
        try:
            delay = pool._housekeep()
        except Exception:
            log.exception("pool %r: housekeeping failed", pool.name)
            delay = 1.0
        del pool
        kick.clear()
        with contextlib.suppress(TimeoutError):
            await bounded(kick.wait(), delay)
