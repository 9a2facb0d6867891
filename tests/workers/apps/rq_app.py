"""RQ jobs whose pool is made at import time; also the RQ settings module (``-c rq_app``),
which makes the worker import it before it forks, as the docs recommend."""

from __future__ import annotations

from typing import Any

from common import (
    CHILD_MAX_SIZE,
    CHILD_MIN_SIZE,
    REDIS_URL,
    make_pool,
    query,
    record_closed_at_exit,
    record_parent,
)

from millpond.integrations.rq import manage

pool = manage(make_pool(), child_min_size=CHILD_MIN_SIZE, child_max_size=CHILD_MAX_SIZE)
record_parent(pool)
record_closed_at_exit(pool)


def query_job(sleep: float = 0.0) -> dict[str, Any]:
    return query(pool, sleep)


__all__ = ["REDIS_URL", "pool", "query_job"]
