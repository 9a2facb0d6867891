"""Tests of the fault-injection fixtures themselves: the proxy's modes seen by real drivers
(psycopg 3 and PyMySQL), and the disposable server's stop / restart / kill / max_connections.

Anything that could block is run with a deadline, so a broken fixture fails a test instead of
hanging the session.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pymysql
import pytest

from .pgserver import DisposablePostgres
from .proxy import FaultProxy, Mode

APP = "millpond-faults-test"


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    """Threads for calls that are expected to block; never waited on at teardown, so a call
    that does hang cannot hang the session (the proxy's teardown unblocks it anyway)."""
    pool = ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def elapsed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def pg_connect(url: str, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
    kwargs.setdefault("connect_timeout", 5)
    return psycopg.connect(url, autocommit=True, application_name=APP, **kwargs)


def pg_select_one(conn: psycopg.Connection[tuple[Any, ...]]) -> Any:
    row = conn.execute("SELECT 1").fetchone()
    return None if row is None else row[0]


def mysql_connect(mysql_url: str, port: int, **kwargs: Any) -> pymysql.Connection[Any]:
    parts = urlsplit(mysql_url)
    kwargs.setdefault("connect_timeout", 5)
    kwargs.setdefault("read_timeout", 5)
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/") or None,
        **kwargs,
    )


def mysql_select_one(conn: pymysql.Connection[Any]) -> Any:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        row = cur.fetchone()
    return None if row is None else row[0]


# -- the proxy in front of PostgreSQL ----------------------------------------------------


@pytest.mark.postgres
def test_pg_query_through_proxy(fresh_pg: DisposablePostgres, pg_proxy: FaultProxy) -> None:
    with pg_connect(fresh_pg.url_at(pg_proxy.port)) as conn:
        assert pg_select_one(conn) == 1
        assert pg_proxy.active_connections == 1
        assert fresh_pg.connection_count(APP) == 1
    assert eventually(lambda: pg_proxy.active_connections == 0)
    assert fresh_pg.wait_connection_count(0, APP) == 0


@pytest.mark.postgres
def test_pg_reset_all_breaks_open_connection(
    fresh_pg: DisposablePostgres, pg_proxy: FaultProxy
) -> None:
    url = fresh_pg.url_at(pg_proxy.port)
    with pg_connect(url) as conn:
        assert pg_select_one(conn) == 1
        pg_proxy.reset_all()
        assert pg_proxy.active_connections == 0
        with pytest.raises(psycopg.OperationalError):
            pg_select_one(conn)
    # The server side was reset too, so its backend goes away rather than idling forever.
    assert fresh_pg.wait_connection_count(0, APP) == 0
    # reset_all is an action, not a mode: new connections are still accepted.
    with pg_connect(url) as conn:
        assert pg_select_one(conn) == 1


@pytest.mark.postgres
def test_pg_refuse_new_fails_connect_fast(
    fresh_pg: DisposablePostgres, pg_proxy: FaultProxy
) -> None:
    url = fresh_pg.url_at(pg_proxy.port)
    with pg_connect(url) as existing:
        pg_proxy.refuse_new()
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            pg_connect(url)
        assert time.monotonic() - started < 1.0
        assert pg_select_one(existing) == 1  # only new connections are refused
        pg_proxy.pass_through()
        with pg_connect(url) as conn:
            assert pg_select_one(conn) == 1


@pytest.mark.postgres
def test_pg_blackhole_times_out_connect_and_stalls_queries(
    fresh_pg: DisposablePostgres, pg_proxy: FaultProxy, background: ThreadPoolExecutor
) -> None:
    url = fresh_pg.url_at(pg_proxy.port)
    with pg_connect(url) as existing:
        pg_proxy.blackhole()
        # psycopg raises connect_timeout values below 2 s to 2 s.
        attempt = background.submit(pg_connect, url, connect_timeout=1)
        stalled = background.submit(pg_select_one, existing)
        with pytest.raises(psycopg.OperationalError):
            attempt.result(timeout=4)
        assert not stalled.done()
        # A healed network delivers what was held back.
        pg_proxy.pass_through()
        assert stalled.result(timeout=3) == 1


@pytest.mark.postgres
def test_pg_delay_adds_latency(fresh_pg: DisposablePostgres, pg_proxy: FaultProxy) -> None:
    with pg_connect(fresh_pg.url_at(pg_proxy.port)) as conn:
        baseline = min(elapsed(lambda: pg_select_one(conn)) for _ in range(3))
        pg_proxy.delay(0.2)
        # One chunk each way: the query, then its result.
        delayed = elapsed(lambda: pg_select_one(conn))
        pg_proxy.pass_through()
        after = min(elapsed(lambda: pg_select_one(conn)) for _ in range(3))
    assert baseline < 0.15
    assert 0.38 <= delayed < 2.0
    assert after < 0.15


@pytest.mark.postgres
def test_proxy_resets_clients_when_upstream_is_down(
    fresh_pg: DisposablePostgres, pg_proxy: FaultProxy
) -> None:
    fresh_pg.stop()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        pg_connect(fresh_pg.url_at(pg_proxy.port))
    assert time.monotonic() - started < 1.0
    assert eventually(lambda: pg_proxy.active_connections == 0)


@pytest.mark.postgres
def test_closing_the_proxy_closes_everything(
    fresh_pg: DisposablePostgres, pg_proxy: FaultProxy
) -> None:
    with pg_connect(fresh_pg.url_at(pg_proxy.port)) as conn:
        pg_proxy.close()
        with pytest.raises(psycopg.OperationalError):
            pg_select_one(conn)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", pg_proxy.port), timeout=1).close()
    assert fresh_pg.wait_connection_count(0, APP) == 0
    assert not any(t.name.startswith("FaultProxy") for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        pg_proxy.blackhole()
    pg_proxy.close()  # idempotent


# -- the proxy in front of MariaDB -------------------------------------------------------


@pytest.mark.mysql
def test_mysql_query_through_proxy(mysql_url: str, mysql_proxy: FaultProxy) -> None:
    conn = mysql_connect(mysql_url, mysql_proxy.port)
    try:
        assert mysql_select_one(conn) == 1
        assert mysql_proxy.active_connections == 1
    finally:
        conn.close()
    assert eventually(lambda: mysql_proxy.active_connections == 0)


@pytest.mark.mysql
def test_mysql_reset_all_breaks_open_connection(mysql_url: str, mysql_proxy: FaultProxy) -> None:
    conn = mysql_connect(mysql_url, mysql_proxy.port)
    try:
        assert mysql_select_one(conn) == 1
        mysql_proxy.reset_all()
        with pytest.raises(pymysql.err.OperationalError):
            mysql_select_one(conn)
    finally:
        conn.close()
    conn = mysql_connect(mysql_url, mysql_proxy.port)
    try:
        assert mysql_select_one(conn) == 1
    finally:
        conn.close()


@pytest.mark.mysql
def test_mysql_refuse_new_fails_connect_fast(mysql_url: str, mysql_proxy: FaultProxy) -> None:
    mysql_proxy.refuse_new()
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError):
        mysql_connect(mysql_url, mysql_proxy.port)
    assert time.monotonic() - started < 1.0
    assert mysql_proxy.active_connections == 0


@pytest.mark.mysql
def test_mysql_blackhole_needs_read_timeout(
    mysql_url: str, mysql_proxy: FaultProxy, background: ThreadPoolExecutor
) -> None:
    mysql_proxy.blackhole()
    # With a read_timeout the handshake gives up on time.
    attempt = background.submit(
        mysql_connect, mysql_url, mysql_proxy.port, connect_timeout=1, read_timeout=1
    )
    with pytest.raises(pymysql.err.OperationalError):
        attempt.result(timeout=4)
    # PyMySQL's connect_timeout only covers the TCP connect, which the proxy completes at
    # once: without a read_timeout, waiting for the server's greeting hangs for good.
    hanging: Future[Any] = background.submit(
        mysql_connect, mysql_url, mysql_proxy.port, connect_timeout=1, read_timeout=None
    )
    time.sleep(2.0)
    assert not hanging.done()
    mysql_proxy.reset_all()  # only a reset gets it out
    with pytest.raises(pymysql.err.OperationalError):
        hanging.result(timeout=3)


@pytest.mark.mysql
def test_mysql_delay_adds_latency(mysql_url: str, mysql_proxy: FaultProxy) -> None:
    conn = mysql_connect(mysql_url, mysql_proxy.port)
    try:
        mysql_proxy.delay(0.2)
        delayed = elapsed(lambda: mysql_select_one(conn))
        mysql_proxy.pass_through()
        after = min(elapsed(lambda: mysql_select_one(conn)) for _ in range(3))
    finally:
        conn.close()
    assert 0.38 <= delayed < 2.0
    assert after < 0.15
    assert mysql_proxy.mode is Mode.PASS


# -- the disposable server ---------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_pg_stop_and_start(fresh_pg: DisposablePostgres, mode: Any) -> None:
    conn = pg_connect(fresh_pg.url)
    try:
        fresh_pg.stop(mode)
        assert not fresh_pg.running
        assert fresh_pg.process_ids() == []
        with pytest.raises(psycopg.OperationalError):
            pg_select_one(conn)
    finally:
        conn.close()
    with pytest.raises(psycopg.OperationalError):
        pg_connect(fresh_pg.url)
    fresh_pg.start()
    with pg_connect(fresh_pg.url) as conn:
        assert pg_select_one(conn) == 1


@pytest.mark.postgres
def test_pg_restart_drops_sessions(fresh_pg: DisposablePostgres) -> None:
    old_pid, port = fresh_pg.pid, fresh_pg.port
    with pg_connect(fresh_pg.url) as conn:
        fresh_pg.restart()
        with pytest.raises(psycopg.OperationalError):
            pg_select_one(conn)
    assert fresh_pg.pid != old_pid
    assert fresh_pg.port == port  # restarts keep the port: proxies stay valid
    with pg_connect(fresh_pg.url) as conn:
        assert pg_select_one(conn) == 1


@pytest.mark.postgres
def test_pg_kill_then_recover(fresh_pg: DisposablePostgres) -> None:
    postmaster = fresh_pg.pid
    assert postmaster is not None
    offset = len(fresh_pg.log_text().encode())
    with pg_connect(fresh_pg.url) as conn:
        assert pg_select_one(conn) == 1
        fresh_pg.kill()
        with pytest.raises(psycopg.OperationalError):
            pg_select_one(conn)
    with pytest.raises(ProcessLookupError):
        os.kill(postmaster, 0)
    assert fresh_pg.process_ids() == []  # no orphaned backends either
    with pytest.raises(psycopg.OperationalError):
        pg_connect(fresh_pg.url)
    fresh_pg.start()
    assert "not properly shut down" in fresh_pg.log_text(offset)  # crash recovery ran
    with pg_connect(fresh_pg.url) as conn:
        assert pg_select_one(conn) == 1


@pytest.mark.postgres
def test_pg_max_connections_limit(fresh_pg: DisposablePostgres) -> None:
    fresh_pg.set_max_connections(3)
    conns = [pg_connect(fresh_pg.url) for _ in range(3)]
    try:
        row = conns[0].execute("SHOW max_connections").fetchone()
        assert row is not None and row[0] == "3"
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            pg_connect(fresh_pg.url)
    finally:
        for conn in conns:
            conn.close()
    # The fixture's teardown restores the default (restarting first if need be).


@pytest.mark.postgres
def test_cleanup_leaves_nothing_behind(disposable_pg: DisposablePostgres) -> None:
    """A cluster whose session died (owner pid gone, no cleanup ran) is swept by the next one
    created; a cluster dropped without close() is cleaned by its finalizer."""
    orphan = DisposablePostgres(bindir=disposable_pg.bindir, max_connections=5)
    orphan.start()
    orphan_root, orphan_pids = orphan.root, orphan.process_ids()
    assert orphan_pids
    # As if the owning process had been SIGKILLed: no cleanup will run, and the owner pid is
    # gone. The Popen is kept only to reap the postmaster once the sweep has killed it.
    orphan._finalizer.detach()
    postmaster = orphan._state.proc
    assert postmaster is not None
    (orphan_root / "owner.pid").write_text(str(_dead_pid()))
    del orphan

    dropped = DisposablePostgres(bindir=disposable_pg.bindir, max_connections=5)
    assert not orphan_root.exists()
    assert postmaster.wait(timeout=5) == -9
    assert all(not _alive(pid) for pid in orphan_pids)
    dropped.start()
    root, pids = dropped.root, dropped.process_ids()
    del dropped
    gc.collect()
    assert not root.exists()
    assert all(not _alive(pid) for pid in pids)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # Zombies count as dead: they are only waiting for their parent (or init) to reap them.
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
