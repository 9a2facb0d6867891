"""Instruments for the fault scenarios: a per-call log, a monitor of how many sessions the
server holds for a pool, per-driver server access, and the figures file.

Kept apart from the scenarios so each test reads as "break this, then check that".
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import psycopg
import pymysql

from .pgserver import DisposablePostgres

#: scheduling slack allowed on top of every deadline: the suite runs on a loaded 2-core box
#: where a thread that is due can wait a few hundred milliseconds for the GIL and a core
MARGIN = 0.5


def unique_app(tag: str) -> str:
    """A name no other test (or concurrent session) uses, to count a pool's sessions only."""
    return f"mp-faults-{tag}-{uuid.uuid4().hex[:8]}"


# -- calls ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    error: BaseException | None = None

    @property
    def elapsed(self) -> float:
        return self.ended - self.started

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class CallLog:
    """Every call a scenario makes through the pool, from any thread, with its timing."""

    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def errors(self) -> list[Call]:
        return [c for c in self.snapshot() if not c.ok]

    def max_elapsed(self) -> float:
        return max((c.elapsed for c in self.snapshot()), default=0.0)

    def error_samples(self, width: int = 140) -> dict[str, str]:
        """The first message seen of each kind of error, on one line."""
        samples: dict[str, str] = {}
        for c in self.errors():
            text = " ".join(str(c.error).split())
            samples.setdefault(type(c.error).__name__, text[:width])
        return samples

    def error_kinds(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for c in self.errors():
            name = type(c.error).__name__
            kinds[name] = kinds.get(name, 0) + 1
        return kinds


# -- counting the pool's sessions on the server --------------------------------------------


class Sessions(Protocol):
    """How many sessions the server holds for the pool under test."""

    def __call__(self) -> int: ...

    def wait_for(self, expected: int, timeout: float = 5.0) -> int: ...


class PeakMonitor:
    """Samples ``count()`` in a thread of its own and keeps the highest value seen.

    A sample that fails (the server is down or restarting) is skipped: a server that is down
    holds no sessions, so nothing above the peak can hide in those gaps.
    """

    def __init__(self, count: Callable[[], int], interval: float = 0.02) -> None:
        self._count = count
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-monitor", daemon=True)
        self.peak = 0
        self.samples = 0
        self.failed_samples = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = self._count()
            except Exception:
                self.failed_samples += 1
            else:
                self.samples += 1
                self.peak = max(self.peak, n)
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakMonitor:
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def observe(self, n: int) -> int:
        """Count a sample taken by the test itself: a short scenario can be over between two
        of the monitor's."""
        self.peak = max(self.peak, n)
        return n

    def settle(self, timeout: float = 2.0) -> None:
        """Wait for one more successful sample, so a short scenario is not over before the
        monitor has looked at it even once."""
        seen = self.samples
        deadline = time.monotonic() + timeout
        while self.samples <= seen and time.monotonic() < deadline:
            time.sleep(0.005)


class PgSessions:
    """Counts the client sessions of one ``application_name`` on a disposable server.

    The same query as ``DisposablePostgres.connection_count``, on one persistent connection:
    a fresh connection per sample (50 a second) would load the two cores the scenarios
    measure, and would take a slot at random moments when max_connections is tiny.
    """

    def __init__(self, server: DisposablePostgres, app: str) -> None:
        self.server = server
        self.app = app
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    self.server.url,
                    autocommit=True,
                    connect_timeout=2,
                    application_name="millpond-faults-monitor",
                )
            try:
                row = self._conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE backend_type = 'client backend' AND application_name = %s",
                    (self.app,),
                ).fetchone()
            except psycopg.Error:
                self._conn.close()
                self._conn = None
                raise
            assert row is not None
            return int(row[0])

    def wait_for(self, expected: int, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(psycopg.Error):
                n = self()
                if n == expected or time.monotonic() > deadline:
                    return n
            if time.monotonic() > deadline:
                return -1
            time.sleep(0.02)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def mysql_params(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "database": parts.path.lstrip("/") or None,
    }


def _own_tcp_ports(remote_port: int) -> set[int]:
    """Local ports of this process's TCP sockets to ``remote_port`` (Linux /proc).

    MariaDB has no application_name that a processlist query could filter on (and the shared
    server runs without performance_schema), but it shows each session's client port: the
    ports this process owns pick out the pool's sessions among everyone else's.
    """
    inodes: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[9] in inodes and int(cols[2].rsplit(":", 1)[1], 16) == remote_port:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


class MysqlSessions:
    """Counts the sessions this process holds on the shared MariaDB server, its own
    monitoring connection aside, as the server's processlist shows them."""

    def __init__(self, url: str) -> None:
        self.params = mysql_params(url)
        self._conn: Any = None
        self._lock = threading.Lock()

    def admin(self) -> Any:
        return pymysql.connect(**self.params, connect_timeout=2, read_timeout=5, autocommit=True)

    def __call__(self) -> int:
        with self._lock:
            if self._conn is None:
                self._conn = self.admin()
            try:
                with self._conn.cursor() as cur:
                    cur.execute("SELECT host FROM information_schema.processlist")
                    hosts = [str(r[0]) for r in cur.fetchall()]
            except pymysql.Error:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
                raise
            mine = _own_tcp_ports(int(self.params["port"]))
            mine.discard(int(self._conn._sock.getsockname()[1]))  # the monitor itself
            ports = [h.rpartition(":")[2] for h in hosts]
            return sum(1 for p in ports if p.isdigit() and int(p) in mine)

    def wait_for(self, expected: int, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            n = self()
            if n == expected or time.monotonic() > deadline:
                return n
            time.sleep(0.02)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


# -- queries through any DB-API connection -------------------------------------------------


def scalar(conn: Any, sql: str, params: Any = None) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        row = cur.fetchone()
    finally:
        cur.close()
    return None if row is None else row[0]


# -- waiting -------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.005) -> float | None:
    """Seconds until ``predicate`` held (polled every ``step``), or None after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            return None
        time.sleep(step)
    return time.monotonic() - started


class FirstSuccess:
    """When the server first accepts a session again: a raw driver connect every 10 ms, in a
    thread, from the moment the outage starts. The instant a restart's ``start()`` returns is
    a little late (it polls postmaster.pid); this probe is the other bound on the instant."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                psycopg.connect(
                    self.url, connect_timeout=2, application_name="mp-faults-probe"
                ).close()
            except psycopg.Error:
                self._stop.wait(0.01)
                continue
            self.at = time.monotonic()
            return

    def start(self) -> FirstSuccess:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# -- the figures file ----------------------------------------------------------------------


class Figures:
    """What the scenarios measured, written as JSON for docs/reliability.md."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}

    def record(self, scenario: str, **figures: Any) -> None:
        self.results[scenario] = {
            k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()
        }

    def write(self, path: Path) -> None:
        if not self.results:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        previous: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads(path.read_text()).get("scenarios", {})
        doc = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                # pymysql.__version__ is a MySQLdb-compatibility number, not PyMySQL's own
                **{name: _version(name) for name in _DRIVERS},
            },
            # a run of a single test keeps the figures of the others from the last full run
            "scenarios": {**previous, **self.results},
        }
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


_DRIVERS = ("millpond", "psycopg", "psycopg2-binary", "PyMySQL", "asyncpg")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def figures_path() -> Path:
    env = os.environ.get("MILLPOND_FAULTS_FIGURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "bench-out" / "faults.json"


@contextlib.contextmanager
def timed(log: CallLog) -> Iterator[None]:
    """Record one call (its error too, which is re-raised) in ``log``."""
    started = time.monotonic()
    try:
        yield
    except BaseException as exc:
        log.add(Call(started, time.monotonic(), exc))
        raise
    log.add(Call(started, time.monotonic()))
