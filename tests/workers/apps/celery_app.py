"""A Celery app whose pool is made at import time in the worker's main process."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from common import CHILD_MAX_SIZE, CHILD_MIN_SIZE, REDIS_URL, TOKEN, make_pool, query, record_parent

from millpond.integrations.celery import manage

app = Celery(TOKEN, broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    broker_transport_options={"global_keyprefix": f"{TOKEN}:"},
    result_backend_transport_options={"global_keyprefix": f"{TOKEN}:"},
    task_default_queue=TOKEN,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)

pool = manage(make_pool(), child_min_size=CHILD_MIN_SIZE, child_max_size=CHILD_MAX_SIZE)
record_parent(pool)


@app.task(name="millpond_test.query")
def query_task(sleep: float = 0.0) -> dict[str, Any]:
    return query(pool, sleep)


@app.task(name="millpond_test.interrupted")
def interrupted_task(seconds: float) -> str:
    try:
        query(pool, seconds)
    except SoftTimeLimitExceeded:
        return "interrupted"
    return "finished"
