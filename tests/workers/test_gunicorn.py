"""A real ``gunicorn --preload`` serves a WSGI app whose pool is made at import in the master.

The app is ``apps/wsgi_app.py``, the config file ``apps/gunicorn_conf.py`` (the hooks of
``millpond.integrations.gunicorn``). 16 client threads send 200 requests; every response
names the worker process and the backend that served it.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from .conftest import (
    APPS,
    SessionWatch,
    Spawned,
    app_env,
    closed_at_exit,
    free_port,
    parent_session,
    require_module,
    sharing_report,
)

require_module("gunicorn")

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def start_gunicorn(
    spawn: Callable[..., Spawned],
    token: str,
    pg_url: str,
    redis_url: str,
    worker_args: list[str],
    **settings: Any,
) -> tuple[Spawned, str]:
    port = free_port()
    env = app_env(token, pg_url, redis_url, **settings)
    args = [
        sys.executable, "-m", "gunicorn", "--preload",
        "-c", str(APPS / "gunicorn_conf.py"), "-b", f"127.0.0.1:{port}",
        "--graceful-timeout", "10", "--log-level", "warning", *worker_args, "wsgi_app:app",
    ]  # fmt: skip
    server = spawn(args, env, name="gunicorn")
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"gunicorn exited ({server.proc.returncode}):\n{server.output()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            return server, url
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"gunicorn did not answer within 30 s:\n{server.output()}")


def hammer(url: str, count: int, threads: int, sleep: float) -> list[dict[str, Any]]:
    def one(_: int) -> dict[str, Any]:
        with urllib.request.urlopen(f"{url}?sleep={sleep}", timeout=30) as response:
            assert response.status == 200
            out: dict[str, Any] = json.loads(response.read())
            return out

    with ThreadPoolExecutor(threads) as executor:
        return list(executor.map(one, range(count)))


def check_shared_nothing(
    results: list[dict[str, Any]], parent_pid: int, parent_backend: int
) -> set[int]:
    """The workers that answered; no backend served two of them, none served the master."""
    workers = {r["pid"] for r in results}
    assert parent_pid not in workers
    used = sharing_report(results)
    assert all(len(pids) == 1 for pids in used.values()), used
    assert parent_backend not in used
    return workers


def stop_and_check_closed(
    server: Spawned, sessions: SessionWatch, redis_url: str, token: str, workers: set[int]
) -> None:
    """SIGTERM to the master: workers finish, worker_exit and on_exit close every pool."""
    rc = server.stop(signal.SIGTERM, timeout=30)
    assert rc == 0, f"gunicorn exit status {rc}:\n{server.output()}"
    left = sessions.wait_gone()
    assert not left, f"sessions left after gunicorn stopped: {left}"
    # closed by the hooks, before the interpreter's exit: the master's and every worker's
    closed = closed_at_exit(redis_url, token)
    assert closed == dict.fromkeys(workers | {server.pid}, True), closed


def test_preload_sync_workers(
    spawn: Callable[..., Spawned], token: str, pg_url: str, redis_url: str, sessions: SessionWatch
) -> None:
    # the master keeps 2; each sync worker serves one request at a time: 1 connection
    server, url = start_gunicorn(
        spawn, token, pg_url, redis_url, ["-w", "3"],
        min_size=2, max_size=2, child_min_size=1, child_max_size=1,
    )  # fmt: skip
    parent_pid, parent_backend = parent_session(redis_url, token)
    assert parent_pid == server.pid
    results = hammer(url, 200, 16, 0.002)
    sessions.stop()

    assert len(results) == 200
    workers = check_shared_nothing(results, parent_pid, parent_backend)
    assert 2 <= len(workers) <= 3, workers
    assert max(r["sessions"] for r in results) == 1
    for pid in workers:
        assert sessions.max_per_process.get(pid, 0) <= 1, sessions.max_per_process
    assert set(sessions.max_per_process) <= workers | {parent_pid}
    assert sessions.max_total <= 2 + 3 * 1
    # no worker closed the master's session: still the same one, still open
    assert parent_backend in sessions.now().get(parent_pid, [])
    stop_and_check_closed(server, sessions, redis_url, token, workers)


def test_preload_gthread_workers(
    spawn: Callable[..., Spawned], token: str, pg_url: str, redis_url: str, sessions: SessionWatch
) -> None:
    # 2 workers x 4 threads on 2 connections each: requests wait their turn, none fails
    server, url = start_gunicorn(
        spawn, token, pg_url, redis_url, ["-k", "gthread", "-w", "2", "--threads", "4"],
        min_size=1, max_size=4, child_min_size=0, child_max_size=2,
    )  # fmt: skip
    parent_pid, parent_backend = parent_session(redis_url, token)
    results = hammer(url, 200, 16, 0.01)
    sessions.stop()

    assert len(results) == 200
    workers = check_shared_nothing(results, parent_pid, parent_backend)
    assert len(workers) == 2, workers
    assert max(r["sessions"] for r in results) <= 2
    for pid in workers:
        assert sessions.max_per_process.get(pid, 0) <= 2, sessions.max_per_process
    # the threads of a worker share its pool: more than one request per session
    assert len(sharing_report(results)) <= 2 * 2
    assert sessions.max_total <= 1 + 2 * 2
    assert parent_backend in sessions.now().get(parent_pid, [])
    stop_and_check_closed(server, sessions, redis_url, token, workers)


def test_hooks_size_and_close_managed_pools(pg_url: str) -> None:
    """In-process: the hooks, called as gunicorn calls them, act on the managed pools only."""
    import millpond
    from millpond.integrations import gunicorn, lifecycle

    pool = gunicorn.manage(millpond.Pool(pg_url, min_size=1, max_size=3), child_max_size=2)
    bystander = millpond.Pool(pg_url, min_size=0, max_size=1)
    try:
        gunicorn.post_fork(None, None)
        assert pool.stats().max_size == 2 and bystander.stats().max_size == 1
        gunicorn.worker_exit(None, None)
        assert pool.stats().closed and not bystander.stats().closed
        gunicorn.on_exit(None)  # again, on a closed pool: harmless
    finally:
        lifecycle.unmanage(pool)
        pool.close(timeout=2)
        bystander.close(timeout=2)
