"""Where the two shells once drifted apart, the same scenario must now give the same result on
both (each test here failed on at least one shell before the decisions moved into the core)."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import millpond
from millpond.testing import FakeError

from .conftest import in_thread, wait_until


def block_connects(pool: Any, driver: Any, kind: str) -> Callable[[], None]:
    """Make every connect hang until the returned function is called."""
    if kind == "sync":
        gate = threading.Event()
        driver.on_connect = lambda: gate.wait(10)
        return gate.set
    agate = asyncio.Event()
    driver.gates["connect"] = agate
    return lambda: pool.loop.call_soon_threadsafe(agate.set)


def test_toggling_autocommit_alone_costs_no_rollback(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn()
    assert conn.autocommit is False
    conn.autocommit = True  # the borrower ran nothing: no transaction to end
    pool.putconn(conn)
    assert conn.autocommit is False, "the pool's autocommit mode is restored"
    assert conn.rollbacks == 0, "a ROLLBACK was sent for a session with nothing to roll back"
    assert pool.stats().resets == 0


def test_a_failed_close_is_logged_without_the_password(
    make_pool: Any, driver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    driver.fail_close = FakeError("close failed for password=hunter2-secret")
    caplog.set_level(logging.DEBUG, logger="millpond")
    conn = pool.getconn()
    pool.putconn(conn, discard=True)
    wait_until(lambda: any("closing a connection" in r.getMessage() for r in caplog.records),
               "the failed close logged")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "close failed for password=***" in text
    assert "hunter2-secret" not in text


def test_open_wait_times_out_with_one_message(make_pool: Any, driver: Any, kind: str) -> None:
    pool = make_pool(min_size=2, max_size=2, open=False)
    release = block_connects(pool, driver, kind)
    try:
        with pytest.raises(millpond.PoolTimeout) as ei:
            pool.open(wait=True, timeout=0.05)
        assert re.fullmatch(
            r"pool '[\w-]+': 0 of min_size=2 connections open after 0\.05s", str(ei.value)
        ), str(ei.value)
    finally:
        release()


def test_open_wait_fails_on_a_connect_error_while_connections_are_lent(
    make_pool: Any, driver: Any
) -> None:
    pool = make_pool(min_size=1, max_size=3)
    held = pool.getconn()
    driver.fail_connect = FakeError("refused")
    pool.resize(min_size=3)
    started = time.monotonic()
    with pytest.raises(millpond.ConnectError, match="refused"):
        pool.open(wait=True, timeout=5)
    assert time.monotonic() - started < 4, "it waited for the timeout instead of failing"
    driver.fail_connect = None
    pool.putconn(held)


def test_fail_fast_waiter_fails_on_a_connect_error_although_a_return_could_serve_it(
    make_pool: Any, driver: Any
) -> None:
    pool = make_pool(min_size=1, max_size=2)
    held = pool.getconn()
    driver.fail_connect = FakeError("refused")
    t, out = in_thread(lambda: pool.getconn(timeout=5))  # waits for a return, as before
    wait_until(lambda: pool.stats().waiting == 1, "a patient waiter")
    started = time.monotonic()
    with pytest.raises(millpond.ConnectError, match="refused") as ei:
        pool.getconn(timeout=5, fail_fast=True)
    assert time.monotonic() - started < 4
    assert isinstance(ei.value.__cause__, FakeError)
    driver.fail_connect = None
    pool.putconn(held)  # the patient waiter gets it
    t.join(5)
    assert "error" not in out, out
    pool.putconn(out["value"])
    assert pool.stats().in_use == 0


def test_closing_fails_waiters_with_one_message(make_pool: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn()
    t, out = in_thread(lambda: pool.getconn(timeout=5))
    wait_until(lambda: pool.stats().waiting == 1, "a waiter")
    closer, _ = in_thread(lambda: pool.close(timeout=1))
    t.join(5)
    assert isinstance(out.get("error"), millpond.PoolClosed)
    assert "was closed while waiting" in str(out["error"])
    pool.putconn(held)
    closer.join(5)
