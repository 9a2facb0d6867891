"""RQ workers: a pool made at import time, in each worker model RQ offers.

::

    # jobs.py
    import millpond
    from millpond.integrations.rq import manage

    pool = manage(millpond.Pool("postgresql://app@db/prod", min_size=0, max_size=2))

    def count_orders() -> int:
        with pool.connection() as conn:
            return conn.execute("SELECT count(*) FROM orders").fetchone()[0]

    # shell: a pool reused by every job of each of 4 processes
    rq worker-pool -n 4 -w millpond.integrations.rq.SimpleWorker -c jobs

What happens, per worker class:

* :class:`SimpleWorker` (no fork; also what ``rq worker-pool`` runs in each of its processes
  when given it): jobs run in the worker process itself, so the pool is really reused from
  job to job. The worker closes every managed pool when it stops. ``worker-pool`` forks its
  processes from the main one: each drops what it inherited, takes the per-child size, and
  opens its own sessions.
* :class:`Worker` (RQ's default model: a work horse forked per job): a pool cannot outlive
  the job, so each horse gets a lazy pool (``min_size=0``: it opens only what the job asks
  for, nothing ahead), never touches the worker's sessions, and closes its sessions before
  the horse exits (RQ ends a horse with ``os._exit()``, which would otherwise drop the
  sockets unannounced). One connect per job that queries: a pool per job horse is no pool.

Both close the worker's own pools at shutdown, before RQ's own teardown: RQ 3.0 with
redis-py 8 can take up to a minute to stop its pub/sub thread (rq/rq#1613), and the database
sessions should not wait for it. A process that made a managed pool and exits normally (the
main process of ``rq worker-pool``) closes it at exit.

``-c jobs`` (RQ's settings module) imports ``jobs.py`` in the worker before it forks; without
it every horse imports the module, and so builds the pool, again.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

from rq import SimpleWorker as _RQSimpleWorker
from rq import Worker as _RQWorker

from millpond import Pool
from millpond.integrations.lifecycle import close_managed, managed
from millpond.integrations.lifecycle import manage as _manage

__all__ = ["SimpleWorker", "Worker", "manage"]

log = logging.getLogger("millpond")

# set in a work horse as it starts: a pool managed from then on (the jobs module imported by
# the horse itself) is made lazy at once, as the inherited ones were
_in_horse = False


def manage(
    pool: Pool,
    *,
    child_min_size: int | None = None,
    child_max_size: int | None = None,
    close_timeout: float = 5.0,
) -> Pool:
    """Look after ``pool`` in RQ's workers: per-process size, closed at the end; returns it.

    ``child_min_size`` / ``child_max_size`` apply in the processes forked from the one that
    made the pool (``worker-pool``'s workers, work horses); a work horse's ``min_size`` is
    always 0. The options are :func:`millpond.integrations.lifecycle.manage`'s.
    """
    _manage(
        pool,
        child_min_size=child_min_size,
        child_max_size=child_max_size,
        close_timeout=close_timeout,
    )
    if _in_horse:
        _make_lazy(pool)
    _close_at_exit()
    return pool


_atexit_registered = False


def _close_at_exit() -> None:
    # for the processes no worker class runs in: ``rq worker-pool``'s main process, which
    # imported the jobs module (``-c``) but only forks and waits; a horse never gets here
    # (os._exit), nor does a worker-pool process (multiprocessing ends it the same way)
    global _atexit_registered
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(close_managed)


def _make_lazy(pool: Pool) -> None:
    if not pool.stats().closed:
        pool.resize(min_size=0)


def _horse_started() -> None:
    global _in_horse
    _in_horse = True
    # the at-fork hooks have sized the pools already; the refill to min_size they scheduled
    # comes 50 ms later, so this is in time to open nothing the job does not ask for
    for pool in managed():
        try:
            _make_lazy(pool)
        except Exception:
            log.exception("pool %r: making it lazy in a work horse failed", pool.name)


class Worker(_RQWorker):
    """RQ's fork-per-job worker, with each horse's pools lazy and closed before it exits.

    ``rq worker -w millpond.integrations.rq.Worker``. Prefer :class:`SimpleWorker` (or
    ``rq worker-pool`` with it) when jobs are trusted not to leak memory or crash the process:
    only there do jobs share connections.
    """

    def main_work_horse(self, *args: Any, **kwargs: Any) -> None:
        _horse_started()
        super().main_work_horse(*args, **kwargs)

    def perform_job(self, *args: Any, **kwargs: Any) -> bool:
        try:
            done: bool = super().perform_job(*args, **kwargs)
        finally:
            # the horse ends in os._exit() right after this: no atexit, no finalizers
            if self.is_horse:
                close_managed()
        return done

    def teardown(self) -> None:
        # pools first: RQ's own teardown talks to Redis and can stall (see the module doc)
        if not self.is_horse:
            close_managed()
        super().teardown()  # type: ignore[no-untyped-call]


class SimpleWorker(_RQSimpleWorker):
    """RQ's worker that runs jobs in its own process: the pool is shared by every job.

    ``rq worker -w millpond.integrations.rq.SimpleWorker``, or ``rq worker-pool -n N -w ...``
    for N such processes. Closes the managed pools when the worker stops.
    """

    def teardown(self) -> None:
        close_managed()
        super().teardown()  # type: ignore[no-untyped-call]
