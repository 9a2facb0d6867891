"""Fixtures for the real-server tests: ``db`` (a :class:`Backend`, parametrized indirectly over
the drivers) and ``make_pool``. The servers come from ``tests/conftest.py``."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import millpond

from .helpers import Backend, Driver


@pytest.fixture
def db(request: pytest.FixtureRequest) -> Iterator[Backend]:
    driver: Driver = request.param
    try:
        importlib.import_module(driver.module)
    except ImportError:
        pytest.skip(f"driver {driver.module} is not installed")
    if driver.kind == "postgres":
        base = request.getfixturevalue("pg_url")
    elif driver.kind == "mysql":
        base = request.getfixturevalue("mysql_url")
    else:
        base = f"sqlite:///{request.getfixturevalue('sqlite_path')}"
    tag = "mp_" + uuid.uuid4().hex[:12]
    backend = Backend(driver, str(base), tag)
    try:
        backend.setup()
        yield backend
    finally:
        backend.teardown()


@pytest.fixture
def make_pool(db: Backend) -> Iterator[Callable[..., millpond.Pool]]:
    """Build pools on ``db`` (tagged, so the server can tell their sessions apart); every pool
    is closed at the end of the test."""
    pools: list[millpond.Pool] = []

    def make(**kw: Any) -> millpond.Pool:
        url = kw.pop("url", None) or db.url()
        ck = db.connect_kwargs
        if ck is not None:
            kw.setdefault("connect_kwargs", ck)
        kw.setdefault("timeout", 10.0)
        kw.setdefault("open", False)
        wait = kw.pop("wait", True)
        pool = millpond.Pool(url, **kw)
        pools.append(pool)
        if wait:
            pool.open(wait=True, timeout=10)
        return pool

    yield make
    for p in pools:
        p.close(timeout=2)
