"""The lifecycle helpers in-process: bad input is refused, sizing and closing do what they say."""

from __future__ import annotations

import pytest

import millpond
from millpond.integrations import lifecycle

pytestmark = pytest.mark.postgres


def test_bad_input_is_refused_clearly(pg_url: str) -> None:
    with pytest.raises(TypeError, match=r"manage\(\) takes a millpond.Pool, not AsyncPool"):
        lifecycle.manage(millpond.AsyncPool(pg_url, open=False))  # type: ignore[arg-type]
    with millpond.Pool(pg_url, min_size=0, max_size=2) as pool:
        with pytest.raises(ValueError, match="child_max_size must be an integer >= 1"):
            lifecycle.manage(pool, child_max_size=0)
        with pytest.raises(ValueError, match="child_min_size=3 is larger than child_max_size=2"):
            lifecycle.manage(pool, child_min_size=3, child_max_size=2)
        with pytest.raises(ValueError, match="close_timeout"):
            lifecycle.manage(pool, close_timeout=-1)
        assert pool not in lifecycle.managed()  # nothing half-registered


def test_child_started_sizes_and_close_managed_closes(pg_url: str) -> None:
    pool = millpond.Pool(pg_url, min_size=2, max_size=4)
    try:
        assert lifecycle.manage(pool, child_min_size=0, child_max_size=1) is pool
        assert pool in lifecycle.managed()
        lifecycle.child_started()
        stats = pool.stats()
        assert (stats.min_size, stats.max_size) == (0, 1)
        with pool.connection() as conn:  # still serves
            assert conn.execute("SELECT 1").fetchone()[0] == 1
        lifecycle.close_managed(timeout=2)
        assert pool.stats().closed
    finally:
        lifecycle.unmanage(pool)
        pool.close(timeout=2)
    assert pool not in lifecycle.managed()


def test_celery_signals_drive_the_hooks(pg_url: str) -> None:
    pytest.importorskip("celery")
    from celery import signals

    from millpond.integrations.celery import manage

    pool = millpond.Pool(pg_url, min_size=1, max_size=3)
    try:
        manage(pool, child_max_size=2)
        signals.worker_process_init.send(sender=None)
        assert pool.stats().max_size == 2
        signals.worker_process_shutdown.send(sender=None, pid=0, exitcode=0)
        assert pool.stats().closed
    finally:
        lifecycle.unmanage(pool)
        pool.close(timeout=2)
