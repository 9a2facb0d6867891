"""Fixtures for the fault-injection tests.

* ``disposable_pg`` (session): a private PostgreSQL cluster (see pgserver.py), initdb'd once
  per session. Tests may stop, kill or reconfigure it; ``fresh_pg`` puts it back.
* ``fresh_pg`` (function): ``disposable_pg``, running, with the default max_connections; at
  teardown it is restarted if needed, reset to defaults and rid of leftover sessions.
* ``pg_proxy`` (function): a :class:`FaultProxy` in front of ``fresh_pg``; connect to
  ``fresh_pg.url_at(pg_proxy.port)``.
* ``mysql_proxy`` (function): a :class:`FaultProxy` in front of the shared MariaDB
  (``mysql_url`` of tests/conftest.py, 127.0.0.1:3306 by default).

Missing PostgreSQL binaries skip the PostgreSQL tests, except under ``CI=true``, where they fail:
CI must not go green by quietly skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from .pgserver import DisposablePostgres, find_pg_bindir
from .proxy import FaultProxy


@pytest.fixture(scope="session")
def disposable_pg() -> Iterator[DisposablePostgres]:
    bindir = find_pg_bindir()
    if bindir is None:
        message = "PostgreSQL server binaries (initdb, postgres) not found; see MILLPOND_PG_BINDIR"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true requires them")
        pytest.skip(message)
    with DisposablePostgres(bindir=bindir) as server:
        yield server


@pytest.fixture
def fresh_pg(disposable_pg: DisposablePostgres) -> Iterator[DisposablePostgres]:
    # A previous test may have left it stopped, killed or reconfigured.
    disposable_pg.reset()
    yield disposable_pg
    disposable_pg.reset()


@pytest.fixture
def pg_proxy(fresh_pg: DisposablePostgres) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", fresh_pg.port) as proxy:
        yield proxy


@pytest.fixture
def mysql_proxy(mysql_url: str) -> Iterator[FaultProxy]:
    parts = urlsplit(mysql_url)
    with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 3306) as proxy:
        yield proxy
