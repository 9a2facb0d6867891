"""Celery workers: a pool made at import time works in every worker model.

::

    # tasks.py
    import millpond
    from millpond.integrations.celery import manage

    pool = manage(millpond.Pool("postgresql://app@db/prod", max_size=2))

    @app.task
    def count_orders() -> int:
        with pool.connection() as conn:
            return conn.execute("SELECT count(*) FROM orders").fetchone()[0]

What happens, per pool (``-P``):

* ``prefork`` (the default): the main process imports ``tasks.py`` and makes the pool; each
  child forked from it drops the inherited connections without touching their sockets and
  opens its own, so no socket is shared and no child closes a connection of the main process.
  ``worker_process_init`` applies the per-child size (``child_max_size``) and
  ``worker_process_shutdown`` closes the child's pool; ``worker_shutdown`` closes the main
  process's. The server sees at most ``(concurrency + 1) x max_size`` sessions (the ``+ 1`` is
  the main process, which holds ``min_size`` idle connections unless ``min_size=0``).
* ``threads``, ``gevent``, ``eventlet``, ``solo``: one process; the pool is shared by every
  task of the worker: size it to the concurrency (or less, and tasks wait their turn, first
  come first served). ``worker_shutdown`` closes it.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from millpond import Pool
from millpond.integrations.lifecycle import child_started, close_managed
from millpond.integrations.lifecycle import manage as _manage

__all__ = ["manage"]


def manage(
    pool: Pool,
    *,
    child_min_size: int | None = None,
    child_max_size: int | None = None,
    close_timeout: float = 5.0,
) -> Pool:
    """Look after ``pool`` in Celery's worker: per-child size, closed at shutdown; returns it.

    The options are :func:`millpond.integrations.lifecycle.manage`'s. Safe to call at import
    time, before the worker starts, and in a process that never becomes a worker (a client that
    only sends tasks): the hooks then never fire.
    """
    _manage(
        pool,
        child_min_size=child_min_size,
        child_max_size=child_max_size,
        close_timeout=close_timeout,
    )
    connect_signals()
    return pool


def connect_signals() -> None:
    """Connect the hooks to Celery's signals (idempotent; :func:`manage` calls it)."""
    signals.worker_process_init.connect(_child_init, weak=False, dispatch_uid=_UID + "init")
    signals.worker_process_shutdown.connect(_shutdown, weak=False, dispatch_uid=_UID + "child")
    signals.worker_shutdown.connect(_shutdown, weak=False, dispatch_uid=_UID + "main")


_UID = "millpond.integrations.celery."


def _child_init(**_: Any) -> None:
    child_started()


def _shutdown(**_: Any) -> None:
    close_managed()
