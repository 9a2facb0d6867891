"""Pools in worker processes: size them per child, close them when the worker stops.

A :class:`millpond.Pool` made at import time in a parent process already works in every
child forked from it: after ``fork()`` the child forgets the inherited connections without
touching their sockets (the parent's sessions stay intact) and opens its own. What fork
safety cannot know is the worker model around it, and that is what these helpers are for:

* **sizing per child**: the pool at import is sized for one process; the server sees
  ``processes x max_size`` sessions (plus the parent's own). ``manage(pool, child_max_size=2)``
  resizes the pool in every child as it starts.
* **closing at shutdown**: a worker process that exits without closing its pool leaves the
  server to notice the dropped sockets; :func:`close_managed` says goodbye properly.

The framework modules (``millpond.integrations.celery``, ``.rq``, ``.gunicorn``) call
:func:`child_started` and :func:`close_managed` from the framework's own hooks; this module is
for other process managers (``multiprocessing``, a hand-written pre-fork server)::

    pool = lifecycle.manage(millpond.Pool(url, max_size=4), child_max_size=2)
    # in each child, first thing:    lifecycle.child_started()
    # in each process, at its end:   lifecycle.close_managed()
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from millpond import Pool

__all__ = ["child_started", "close_managed", "manage", "managed", "unmanage"]

log = logging.getLogger("millpond")


@dataclass(frozen=True)
class _Sizing:
    child_min_size: int | None
    child_max_size: int | None
    close_timeout: float


_lock = threading.Lock()
# strong references on purpose: a managed pool is a process-wide resource the worker closes at
# its end, even if the module that made it dropped its name
_managed: dict[int, tuple[Pool, _Sizing]] = {}


def manage(
    pool: Pool,
    *,
    child_min_size: int | None = None,
    child_max_size: int | None = None,
    close_timeout: float = 5.0,
) -> Pool:
    """Have the worker hooks look after ``pool``; returns it (``pool = manage(Pool(...))``).

    ``child_min_size`` / ``child_max_size``: the pool's bounds in each child process (``None``
    keeps the pool's own). ``close_timeout``: how long closing waits for connections still lent
    out at shutdown. Managing a pool twice replaces its settings.
    """
    if not isinstance(pool, Pool):
        raise TypeError(
            f"manage() takes a millpond.Pool, not {type(pool).__name__}: worker processes run "
            "synchronous tasks (an AsyncPool lives and dies with its event loop)"
        )
    for name, value, low in (
        ("child_min_size", child_min_size, 0),
        ("child_max_size", child_max_size, 1),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < low
        ):
            raise ValueError(f"{name} must be an integer >= {low} or None, got {value!r}")
    if child_min_size is not None and child_max_size is not None and child_min_size > child_max_size:
        raise ValueError(
            f"child_min_size={child_min_size} is larger than child_max_size={child_max_size}"
        )
    if (
        isinstance(close_timeout, bool)
        or not isinstance(close_timeout, int | float)
        or close_timeout < 0
    ):
        raise ValueError(f"close_timeout must be a number of seconds >= 0, got {close_timeout!r}")
    with _lock:
        _managed[id(pool)] = (pool, _Sizing(child_min_size, child_max_size, float(close_timeout)))
    return pool


def unmanage(pool: Pool) -> None:
    """Stop looking after ``pool`` (no error if it was not managed)."""
    with _lock:
        _managed.pop(id(pool), None)


def managed() -> list[Pool]:
    """The pools the worker hooks look after, in the order they were managed."""
    with _lock:
        return [pool for pool, _ in _managed.values()]


def child_started() -> None:
    """Call first thing in a new child process: applies each managed pool's per-child size.

    The pool itself needs nothing else: it already dropped what it inherited at ``fork()``.
    """
    with _lock:
        entries = list(_managed.values())
    for pool, sizing in entries:
        if sizing.child_min_size is None and sizing.child_max_size is None:
            continue
        if pool.stats().closed:
            continue
        current = pool.stats()
        max_size = sizing.child_max_size if sizing.child_max_size is not None else current.max_size
        min_size = sizing.child_min_size if sizing.child_min_size is not None else current.min_size
        pool.resize(min_size=min(min_size, max_size), max_size=max_size)
        log.debug("pool %r sized %d..%d in process %d", pool.name, min_size, max_size, os.getpid())


def close_managed(timeout: float | None = None) -> None:
    """Close every managed pool of this process (``timeout``: each pool's ``close_timeout``).

    A failure to close one pool is logged and does not keep the others open: this runs while a
    worker is going away.
    """
    with _lock:
        entries = list(_managed.values())
    for pool, sizing in entries:
        try:
            pool.close(sizing.close_timeout if timeout is None else timeout)
        except Exception:
            log.exception("pool %r: closing at worker shutdown failed", pool.name)


def _after_fork_in_child() -> None:
    # another thread of the parent may have held the lock at the fork: it never lets go here
    global _lock
    _lock = threading.Lock()
    # size the child's pools at once, in the fork itself: a worker's own start-up hook
    # (Celery's worker_process_init) comes later, after the pool has begun refilling to the
    # parent's min_size
    try:
        child_started()
    except Exception:
        log.exception("sizing the pools of a new child process failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
