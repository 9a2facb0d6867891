"""gunicorn: server hooks for a pool made at import time, with or without ``--preload``.

::

    # app.py
    import millpond
    from millpond.integrations.gunicorn import manage

    pool = manage(millpond.Pool("postgresql://app@db/prod", max_size=4), child_max_size=1)

    # gunicorn.conf.py
    from millpond.integrations.gunicorn import on_exit, post_fork, worker_exit

With ``--preload`` the master imports ``app.py`` and makes the pool; each worker forked from
it drops the inherited connections without touching their sockets (the master's sessions stay
intact) and opens its own, so no socket is shared. The hooks add what fork safety cannot know:

* :func:`post_fork` (each worker, as it starts): the per-worker size (``child_max_size``; for
  sync workers 1, for gthread the thread count or less);
* :func:`worker_exit` (each worker, as it leaves): closes its pools, waiting up to
  ``close_timeout`` for requests still holding a connection;
* :func:`on_exit` (the master, as it stops): closes the master's own pools.

Without ``--preload`` every worker imports the app itself: the pool is made in the worker, the
hooks still close it at the end, and ``post_fork`` has nothing to size yet (size the pool
itself for one worker).

gunicorn is not imported here: the hooks take whatever gunicorn passes them.
"""

from __future__ import annotations

from typing import Any

from millpond.integrations.lifecycle import child_started, close_managed, manage

__all__ = ["manage", "on_exit", "post_fork", "worker_exit"]


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn ``post_fork``: size the managed pools for this worker."""
    # the at-fork hook has done this already; calling it again is harmless and keeps the hook
    # correct for a pool that was managed differently since (resize is idempotent)
    child_started()


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn ``worker_exit``: close this worker's managed pools."""
    close_managed()


def on_exit(server: Any) -> None:
    """gunicorn ``on_exit``: close the master's managed pools (made there by ``--preload``)."""
    close_managed()
