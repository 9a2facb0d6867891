"""A real RQ worker (Redis) runs jobs through a pool made at import time in the jobs module.

The jobs are ``apps/rq_app.py``, also given as RQ's settings module (``-c rq_app``) so the
worker imports it, and makes the pool, before it forks: the setup docs/integrations.md
recommends. Job ids, the queue and the worker names carry the test's token.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import (
    SessionWatch,
    Spawned,
    app_env,
    closed_at_exit,
    parent_session,
    require_module,
    sharing_report,
)

require_module("rq")

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def start_worker(
    spawn: Callable[..., Spawned],
    token: str,
    pg_url: str,
    redis_url: str,
    command: list[str],
    worker_class: str,
    **settings: Any,
) -> Spawned:
    env = app_env(token, pg_url, redis_url, **settings)
    args = [
        sys.executable, "-m", "rq.cli", *command,
        "--url", redis_url, "-c", "rq_app",
        "-w", f"millpond.integrations.rq.{worker_class}", "-q", token,
    ]  # fmt: skip
    return spawn(args, env, name=f"rq-{worker_class}")


def run_jobs(redis_url: str, token: str, count: int, sleep: float, worker: Spawned) -> list[Any]:
    """Enqueue ``count`` jobs by name (the test never imports the app) and wait for them."""
    import redis
    from rq import Queue

    conn = redis.Redis.from_url(redis_url)
    try:
        queue = Queue(token, connection=conn)
        jobs = [
            queue.enqueue("rq_app.query_job", sleep, job_id=f"{token}-{i}", result_ttl=600)
            for i in range(count)
        ]
        deadline = time.monotonic() + 50
        pending = list(jobs)
        while pending and time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                pytest.fail(f"the worker exited ({worker.proc.returncode}):\n{worker.output()}")
            pending = [
                j for j in pending if j.get_status(refresh=True) not in ("finished", "failed")
            ]
            time.sleep(0.1)
        failed = [j.id for j in jobs if j.get_status(refresh=True) != "finished"]
        if failed:
            pytest.fail(f"{len(failed)} jobs did not finish, e.g. {failed[:3]}:\n{worker.output()}")
        return [j.return_value() for j in jobs]
    finally:
        conn.close()


def stop_and_check_closed(worker: Spawned, sessions: SessionWatch) -> None:
    """Warm shutdown (SIGTERM); the worker closes its pools, so no session stays behind.

    RQ 3.0 on redis-py 8 sometimes stalls a minute in its own teardown, stopping its pub/sub
    thread (rq/rq#1613), after the pools were closed: then, as an operator would, a second
    SIGTERM (RQ's cold shutdown) ends it, once the workers' sessions are seen gone."""
    os.kill(worker.pid, signal.SIGTERM)
    try:
        worker.proc.wait(10)
    except subprocess.TimeoutExpired:
        # only the main process may still hold a session: the one it made at import
        deadline = time.monotonic() + 10
        while set(sessions.now()) - {worker.pid} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(sessions.now()) <= {worker.pid}, sessions.now()
    rc = worker.stop(signal.SIGTERM, timeout=20)
    assert rc == 0, f"worker exit status {rc}:\n{worker.output()}"
    left = sessions.wait_gone()
    assert not left, f"sessions left after the worker stopped: {left}"


def test_fork_per_job_horses_open_one_lazy_session_each(
    spawn: Callable[..., Spawned], token: str, pg_url: str, redis_url: str, sessions: SessionWatch
) -> None:
    # the worker's pool keeps 2 idle sessions; each horse must open only what its job uses
    worker = start_worker(
        spawn, token, pg_url, redis_url, ["worker"], "Worker", min_size=2, max_size=2
    )
    parent_pid, parent_backend = parent_session(redis_url, token)
    assert parent_pid == worker.pid
    results = run_jobs(redis_url, token, 150, 0.0, worker)
    sessions.stop()

    horses = {r["pid"] for r in results}
    assert len(horses) == 150 and parent_pid not in horses  # a horse per job
    # one session per job, its own: no backend serves two processes, none is the worker's
    used = sharing_report(results)
    assert len(used) == 150 and all(len(pids) == 1 for pids in used.values()), used
    assert parent_backend not in used
    assert max(r["sessions"] for r in results) == 1
    for pid in horses:
        assert sessions.max_per_process.get(pid, 0) <= 1
    # one horse at a time: the worker's 2 and the horse's 1 (its predecessor already closed)
    assert sessions.max_total <= 2 + 1, sessions.max_per_process
    # the worker's own session was never closed by a horse
    assert parent_backend in sessions.now().get(parent_pid, [])
    stop_and_check_closed(worker, sessions)


def test_simple_worker_reuses_its_pool(
    spawn: Callable[..., Spawned], token: str, pg_url: str, redis_url: str, sessions: SessionWatch
) -> None:
    worker = start_worker(
        spawn, token, pg_url, redis_url, ["worker"], "SimpleWorker", min_size=1, max_size=2
    )
    parent_pid, parent_backend = parent_session(redis_url, token)
    results = run_jobs(redis_url, token, 300, 0.0, worker)
    sessions.stop()

    assert {r["pid"] for r in results} == {parent_pid}
    # jobs run one after the other: the session made at import serves all of them
    assert set(sharing_report(results)) == {parent_backend}
    assert sessions.max_total <= 2
    stop_and_check_closed(worker, sessions)
    # closed by the worker's teardown, before the interpreter's exit
    assert closed_at_exit(redis_url, token) == {parent_pid: True}


def test_worker_pool_of_simple_workers_shares_a_pool_per_process(
    spawn: Callable[..., Spawned], token: str, pg_url: str, redis_url: str, sessions: SessionWatch
) -> None:
    # main process: 2 idle; each of the 3 worker processes: lazily up to 1
    worker = start_worker(
        spawn, token, pg_url, redis_url, ["worker-pool", "-n", "3"], "SimpleWorker",
        min_size=2, max_size=2, child_min_size=0, child_max_size=1,
    )  # fmt: skip
    parent_pid, parent_backend = parent_session(redis_url, token)
    assert parent_pid == worker.pid
    results = run_jobs(redis_url, token, 300, 0.002, worker)
    sessions.stop()

    workers = {r["pid"] for r in results}
    assert parent_pid not in workers
    assert 2 <= len(workers) <= 3, workers
    used = sharing_report(results)
    assert all(len(pids) == 1 for pids in used.values()), used
    assert parent_backend not in used
    # the pool is reused: one session per worker process for all of its jobs
    assert len(used) == len(workers)
    for pid in workers:
        assert sessions.max_per_process.get(pid, 0) <= 1
    assert set(sessions.max_per_process) <= workers | {parent_pid}
    assert sessions.max_total <= 2 + 3 * 1
    assert parent_backend in sessions.now().get(parent_pid, [])
    stop_and_check_closed(worker, sessions)


def test_pool_managed_inside_a_horse_is_lazy_at_once(pg_url: str, monkeypatch: Any) -> None:
    """In-process: a jobs module first imported by a work horse manages its pool there."""
    import millpond
    from millpond.integrations import lifecycle
    from millpond.integrations import rq as integration

    monkeypatch.setattr(integration, "_in_horse", True)
    pool = integration.manage(millpond.Pool(pg_url, min_size=2, max_size=3), child_max_size=2)
    try:
        assert pool.stats().min_size == 0
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
    finally:
        lifecycle.unmanage(pool)
        pool.close(timeout=2)
