"""A borrower interrupted inside ``execute`` (a signal handler raising: Celery's soft time
limit, an alarm-based request timeout) leaves its statement running on the server. The
return cancels it and keeps the connection: no replacement session while the old backend
works on for nobody, so the server never sees more than the pool's cap. Real PostgreSQL."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

import millpond

from .conftest import scalar


class Deadline(Exception):
    """What a soft time limit raises inside the borrower's statement."""


def _raise(*_: Any) -> None:
    raise Deadline


@pytest.mark.postgres
@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
@pytest.mark.parametrize("reset", ["rollback", "full"])
def test_a_statement_interrupted_by_a_signal_is_cancelled_and_the_connection_kept(
    pg_url: str, reset: str
) -> None:
    pytest.importorskip("psycopg")
    import psycopg

    tag = f"mp_intr_{time.monotonic_ns() % 10**9}"
    url = "postgresql+psycopg" + pg_url[pg_url.index("://") :]
    pool = millpond.Pool(
        url, min_size=1, max_size=1, reset=reset, connect_kwargs={"application_name": tag}
    )
    old = signal.signal(signal.SIGALRM, _raise)
    try:
        with psycopg.connect(pg_url, autocommit=True) as admin, pool:
            pool.open(wait=True, timeout=10)
            with pytest.raises(Deadline), pool.connection() as conn:
                before = scalar(conn, "SELECT pg_backend_pid()")
                signal.setitimer(signal.ITIMER_REAL, 0.3)
                conn.execute("SELECT pg_sleep(30)")
            started = time.monotonic()
            with pool.connection(timeout=10) as conn:
                assert scalar(conn, "SELECT 1") == 1
                assert scalar(conn, "SELECT pg_backend_pid()") == before  # kept, not replaced
            assert time.monotonic() - started < 10  # not after the 30 s sleep
            stats = pool.stats()
            assert stats.connects == 1 and stats.size == 1
            running = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND query LIKE 'SELECT pg_sleep%%' AND state = 'active'",
                (tag,),
            ).fetchone()
            assert running == (0,)  # the server stopped working for nobody
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
