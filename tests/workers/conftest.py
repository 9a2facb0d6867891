"""Real worker processes (Celery, RQ, gunicorn) on the real servers.

Every test gets a unique ``token``: Celery queue and Redis key prefix, RQ queue and job ids,
and the prefix of each session's PostgreSQL ``application_name`` (``<token>-<pid>``, set by the
apps in ``apps/`` for the process that opened the session). ``sessions`` watches
``pg_stat_activity`` from outside the workers; ``spawn`` starts a process in its own process
group and always kills the group at teardown. Redis keys and server sessions the test made are
removed at teardown even when it fails.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_server

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"
# a database number of its own, so RQ's shared sets (rq:queues, rq:workers) stay apart from
# anything else on the machine; every key is still removed by name at teardown
REDIS_URL = os.environ.get("MILLPOND_REDIS_URL", "redis://127.0.0.1:6379/11")
BIN = Path(sys.executable).parent


def require_module(name: str) -> Any:
    """Import ``name``; if it is missing, skip the module's tests, or fail them under CI=true
    (CI installs every test extra and must not go green by skipping)."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(name)
    return pytest.importorskip(name)


require_module("psycopg")
require_module("redis")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return require_server(REDIS_URL, 6379, "Redis")


@pytest.fixture
def token(pg_url: str, redis_url: str) -> Iterator[str]:
    """A unique name for this test; its Redis keys and server sessions are removed after it."""
    import psycopg
    import redis

    tok = f"workers_{secrets.token_hex(4)}"
    yield tok
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k for k in client.scan_iter(match=f"*{tok}*", count=1000)]
        # rq worker-pool names its workers with bare uuids: found by the queue they served
        for key in client.scan_iter(match="rq:worker:*", count=1000):
            with contextlib.suppress(redis.ResponseError):  # not a worker hash
                if tok.encode() in (client.hget(key, "queues") or b""):
                    keys.append(key)
        if keys:
            client.delete(*keys)
        for shared in (b"rq:queues", b"rq:workers"):
            members = [m for m in client.smembers(shared) if tok.encode() in m or m in keys]
            if members:
                client.srem(shared, *members)
    finally:
        client.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
            [f"{tok}-%"],
        )


def app_env(token: str, pg_url: str, redis_url: str, **settings: Any) -> dict[str, str]:
    """The environment the apps in ``apps/`` read (see ``apps/common.py``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT / "src"), str(ROOT)])
    env["MILLPOND_TEST_TOKEN"] = token
    env["MILLPOND_TEST_PG_URL"] = pg_url
    env["MILLPOND_TEST_REDIS_URL"] = redis_url
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    for key, value in settings.items():
        env[f"MILLPOND_TEST_{key.upper()}"] = str(value)
    return env


@dataclass
class Spawned:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Ask the process to stop (``sig`` to it alone, as an operator would); the whole group
        is killed if it is not gone within ``timeout``. Its exit status, None if killed."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self.kill()  # what the process left behind in its group (children)
        return self.proc.returncode

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.proc.args} did not finish in {timeout} s:\n{self.output()}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Spawned]]:
    """Start a command in its own process group; every group is killed at teardown."""
    started: list[Spawned] = []

    def start(args: list[str], env: dict[str, str], name: str = "proc") -> Spawned:
        log = tmp_path / f"{name}-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        spawned = Spawned(proc, log)
        started.append(spawned)
        return spawned

    yield start
    for spawned in started:
        spawned.kill()


@dataclass
class SessionWatch:
    """Samples the server's sessions of one test, per opening process, in a thread."""

    pg_url: str
    token: str
    interval: float = 0.02
    max_per_process: dict[int, int] = field(default_factory=dict)
    max_total: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def now(self) -> dict[int, list[int]]:
        """Backend pids of the test's sessions now, by the pid of the process that opened them."""
        import psycopg

        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            return self._read(conn)

    def _read(self, conn: Any) -> dict[int, list[int]]:
        rows = conn.execute(
            "SELECT application_name, pid FROM pg_stat_activity WHERE application_name LIKE %s",
            [f"{self.token}-%"],
        ).fetchall()
        found: dict[int, list[int]] = {}
        for name, backend in rows:
            found.setdefault(int(name.rsplit("-", 1)[1]), []).append(backend)
        return found

    def _run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.pg_url, autocommit=True) as conn:
                while not self._stop.is_set():
                    found = self._read(conn)
                    self.samples += 1
                    self.max_total = max(self.max_total, sum(map(len, found.values())))
                    for pid, backends in found.items():
                        self.max_per_process[pid] = max(
                            self.max_per_process.get(pid, 0), len(backends)
                        )
                    self._stop.wait(self.interval)
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def start(self) -> SessionWatch:
        self._thread = threading.Thread(target=self._run, name="session-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._error is not None:
            raise self._error
        assert self.samples > 0, "the session watch took no sample"

    def wait_gone(self, timeout: float = 15.0) -> dict[int, list[int]]:
        """Wait until the test has no session left on the server; what is left at the end."""
        deadline = time.monotonic() + timeout
        left = self.now()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self.now()
        return left


@pytest.fixture
def sessions(pg_url: str, token: str) -> Iterator[SessionWatch]:
    watch = SessionWatch(pg_url, token).start()
    try:
        yield watch
    finally:
        watch._stop.set()
        if watch._thread is not None:
            watch._thread.join(10)


def parent_session(redis_url: str, token: str, timeout: float = 30.0) -> tuple[int, int]:
    """(pid, backend pid) the app's parent process recorded after using its pool at import."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = client.get(f"{token}:parent")
            if value:
                pid, backend = value.decode().split(":")
                return int(pid), int(backend)
            time.sleep(0.05)
    finally:
        client.close()
    pytest.fail("the worker's parent never recorded its session (did the app import?)")


def closed_at_exit(redis_url: str, token: str) -> dict[int, bool]:
    """pid -> whether that process's pool was closed by the time it exited (the apps that call
    ``common.record_closed_at_exit`` report it)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        prefix = f"{token}:closed:"
        return {
            int(key.decode()[len(prefix) :]): client.get(key) == b"1"
            for key in client.scan_iter(match=f"{prefix}*", count=1000)
        }
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sharing_report(results: list[dict[str, Any]]) -> dict[int, set[int]]:
    """Backend pid -> the OS processes that used it (each must be exactly one)."""
    used: dict[int, set[int]] = {}
    for r in results:
        used.setdefault(r["backend"], set()).add(r["pid"])
    return used
