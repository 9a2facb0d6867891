"""What every worker app of these tests shares: the pool made at import, named per process.

The apps are configured through environment variables set by the tests (``conftest.py``):
``MILLPOND_TEST_TOKEN`` (unique per test: queue names, Redis keys and PostgreSQL
``application_name`` start with it), ``MILLPOND_TEST_PG_URL``, ``MILLPOND_TEST_MAX_SIZE``,
``MILLPOND_TEST_MIN_SIZE``, ``MILLPOND_TEST_CHILD_MIN_SIZE`` and ``MILLPOND_TEST_CHILD_MAX_SIZE`` (optional) and ``MILLPOND_TEST_REDIS_URL``.
"""

from __future__ import annotations

import os
from typing import Any

import millpond

TOKEN = os.environ["MILLPOND_TEST_TOKEN"]
PG_URL = os.environ["MILLPOND_TEST_PG_URL"]
REDIS_URL = os.environ.get("MILLPOND_TEST_REDIS_URL", "")
MIN_SIZE = int(os.environ.get("MILLPOND_TEST_MIN_SIZE", "1"))
MAX_SIZE = int(os.environ.get("MILLPOND_TEST_MAX_SIZE", "2"))


def _optional(name: str) -> int | None:
    value = os.environ.get(f"MILLPOND_TEST_{name}")
    return int(value) if value else None


CHILD_MIN_SIZE = _optional("CHILD_MIN_SIZE")
CHILD_MAX_SIZE = _optional("CHILD_MAX_SIZE")


def name_session(conn: Any) -> None:
    """Each session carries the pid of the process that opened it, so the server side of the
    test can count sessions per process in ``pg_stat_activity``."""
    conn.execute("SELECT set_config('application_name', %s, false)", [f"{TOKEN}-{os.getpid()}"])
    conn.commit()


def make_pool() -> millpond.Pool:
    return millpond.Pool(
        PG_URL, min_size=MIN_SIZE, max_size=MAX_SIZE, timeout=20, configure=name_session, name=TOKEN
    )


def query(pool: millpond.Pool, sleep: float = 0.0) -> dict[str, Any]:
    """One unit of work: which process, which backend, how many sessions this process has."""
    with pool.connection() as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        sessions = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = current_setting('application_name')"
        ).fetchone()[0]
        if sleep:
            conn.execute("SELECT pg_sleep(%s)", [sleep])
    return {"pid": os.getpid(), "backend": backend, "sessions": sessions}


def record_parent(pool: millpond.Pool) -> None:
    """Use the pool in the parent at import, as tutorials do, and tell the test which backend
    served it: the test checks that this session outlives every child."""
    import redis

    with pool.connection() as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    redis.Redis.from_url(REDIS_URL).set(f"{TOKEN}:parent", f"{os.getpid()}:{backend}", ex=600)


def record_closed_at_exit(pool: millpond.Pool) -> None:
    """At interpreter exit (after the framework's own shutdown hooks), tell the test whether
    the pool of this process was already closed: what the integrations' hooks are for."""
    import atexit

    def record() -> None:
        import redis

        closed = "1" if pool.stats().closed else "0"
        redis.Redis.from_url(REDIS_URL).set(f"{TOKEN}:closed:{os.getpid()}", closed, ex=600)

    atexit.register(record)


__all__ = [
    "CHILD_MAX_SIZE",
    "CHILD_MIN_SIZE",
    "REDIS_URL",
    "TOKEN",
    "make_pool",
    "query",
    "record_closed_at_exit",
    "record_parent",
]
