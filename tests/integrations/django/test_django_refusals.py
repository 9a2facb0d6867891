"""The Django settings the millpond backends refuse, each with its ``ImproperlyConfigured``
message, and the neighbouring settings they accept.

All cases run in one subprocess per backend (``refusals.py``: Django's settings are
process-global), one database alias per case, on the servers' existing ``test`` database.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def _require(name: str) -> None:
    # CI installs every test extra: a missing one must fail there, not skip
    if os.environ.get("CI") == "true":
        importlib.import_module(name)
    else:
        pytest.importorskip(name)


_require("django")

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[2] / "src"

_results: dict[str, dict[str, Any]] = {}


@pytest.fixture(params=["postgresql", "mysql"])
def outcome(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """(backend, alias -> what its connect did), from one subprocess per backend."""
    backend: str = request.param
    _require("psycopg" if backend == "postgresql" else "pymysql")
    url = request.getfixturevalue("pg_url" if backend == "postgresql" else "mysql_url")
    if backend not in _results:
        env = {
            **os.environ,
            "MP_DJ_BACKEND": backend,
            "MILLPOND_PG_URL" if backend == "postgresql" else "MILLPOND_MYSQL_URL": url,
            "PYTHONPATH": str(SRC),
        }
        proc = subprocess.run(
            [sys.executable, str(HERE / "refusals.py")],
            env=env, cwd=HERE, capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        # nothing leaked: a refused connect gives back what it borrowed
        assert "garbage-collected" not in proc.stderr, proc.stderr[-4000:]
        _results[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
    return backend, _results[backend]


OPTS = "['OPTIONS']['pool']"

#: alias -> the exact message of its refusal (the alias's name is part of it)
REFUSALS = {
    "pool_not_a_dict": f"DATABASES['pool_not_a_dict']{OPTS} must be True or a dict of "
    "millpond.Pool options, got int",
    "pool_a_string": f"DATABASES['pool_a_string']{OPTS} must be True or a dict of "
    "millpond.Pool options, got str",
    "pool_reserved_keys": f"DATABASES['pool_reserved_keys']{OPTS} cannot set open, target: "
    "the backend builds the connection from the other DATABASES settings",
    "pool_connect_kwargs": f"DATABASES['pool_connect_kwargs']{OPTS} cannot set "
    "connect_kwargs: the backend builds the connection from the other DATABASES settings",
    "conn_max_age": "DATABASES['conn_max_age'] has CONN_MAX_AGE=60, but the millpond pool "
    "keeps the connections: set CONN_MAX_AGE to 0 (each request returns its connection to "
    "the pool at its end) and use the pool's max_lifetime to retire old ones",
    "persistent_connections": "DATABASES['persistent_connections'] has CONN_MAX_AGE=None, but "
    "the millpond pool keeps the connections: set CONN_MAX_AGE to 0 (each request returns its "
    "connection to the pool at its end) and use the pool's max_lifetime to retire old ones",
    "health_checks_without_pre_ping": "DATABASES['health_checks_without_pre_ping'] has "
    "CONN_HEALTH_CHECKS=True but its pool has pre_ping=False: the pool does the health "
    "checks, so drop one of the two",
    "configure_not_callable": f"DATABASES['configure_not_callable']{OPTS}['configure'] must "
    "be a callable taking the connection",
    "unknown_pool_option": f"DATABASES['unknown_pool_option']{OPTS}: ",
    "pool_option_out_of_range": f"DATABASES['pool_option_out_of_range']{OPTS}: max_size=0 is "
    "out of range; it must be an integer >= 1",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_before_any_pool_is_made(outcome: tuple[str, dict[str, Any]], case: str) -> None:
    _, result = outcome
    got = result[case]
    if case == "unknown_pool_option":
        # the rest is Python's own TypeError text
        assert got["refused"].startswith(REFUSALS[case])
        assert "'max_sizee'" in got["refused"]
    else:
        assert got["refused"] == REFUSALS[case]
    # refused from the settings alone: no pool, no server connection
    assert got["pool_made"] is False


def test_invalid_isolation_level(outcome: tuple[str, dict[str, Any]]) -> None:
    backend, result = outcome
    got = result["bad_isolation_level"]
    if backend == "postgresql":
        # Django's own message; the level is read at every borrow, as Django reads it at
        # every connect, and the borrowed connection went back to the pool
        assert got["refused"] == (
            "Invalid transaction isolation level 99 specified. Use one of the "
            "psycopg.IsolationLevel values."
        )
        assert got["pool_made"] is True
        assert got["lent_after"] == 0
    else:
        # Django's MySQL backend refuses it in get_connection_params(), before any pool
        assert got["refused"] == (
            "Invalid transaction isolation level 'chaos' specified.\n"
            "Use one of 'read committed', 'read uncommitted', 'repeatable read', "
            "'serializable', or None."
        )
        assert got["pool_made"] is False


def test_health_checks_become_a_ping_at_every_checkout(
    outcome: tuple[str, dict[str, Any]],
) -> None:
    _, result = outcome
    got = result["health_checks_with_pool"]
    assert got["refused"] is None
    assert got["select"] == 1
    assert got["get_pool"] is None
    assert got["in_use"] == 1
    # the reused connection was pinged although it came back a moment ago
    assert got["pings_on_reuse"] == 1


@pytest.mark.parametrize("case", ["pool_false", "no_pool_option"])
def test_without_a_pool_it_is_djangos_backend(
    outcome: tuple[str, dict[str, Any]], case: str
) -> None:
    _, result = outcome
    got = result[case]
    # CONN_MAX_AGE=60 is allowed: Django's own persistent connections, no pool to conflict
    assert got["refused"] is None
    assert got["select"] == 1
    assert got["get_pool"] == f"DATABASES[{case!r}]['OPTIONS'] has no 'pool' option"


def test_get_pool_of_a_stock_alias(outcome: tuple[str, dict[str, Any]]) -> None:
    backend, result = outcome
    got = result["stock_engine"]
    assert got["refused"] is None
    assert got["get_pool"] == (
        "DATABASES['stock_engine'] does not use a millpond backend "
        f"(ENGINE is 'django.db.backends.{backend}')"
    )
