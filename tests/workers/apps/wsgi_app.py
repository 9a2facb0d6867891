"""A WSGI app whose pool is made at import time (in gunicorn's master with ``--preload``).

``GET /?sleep=S``: one query through the pool, answered as JSON by ``common.query``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from common import (
    CHILD_MAX_SIZE,
    CHILD_MIN_SIZE,
    make_pool,
    query,
    record_closed_at_exit,
    record_parent,
)

from millpond.integrations.gunicorn import manage

pool = manage(make_pool(), child_min_size=CHILD_MIN_SIZE, child_max_size=CHILD_MAX_SIZE)
record_parent(pool)
record_closed_at_exit(pool)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    sleep = float(parse_qs(environ.get("QUERY_STRING", "")).get("sleep", ["0"])[0])
    body = json.dumps(query(pool, sleep)).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
