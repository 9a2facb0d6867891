"""Django's backends on millpond pools, inside a real Django project on the real servers.

Each scenario runs ``scenario.py`` in a subprocess (Django's settings are process-global) on
a database of its own, created and dropped here.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
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


def _drop_and_create(backend: str, url: str, names: list[str], create: str | None) -> None:
    if backend == "postgresql":
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if create:
                conn.execute(f'CREATE DATABASE "{create}"')
        return
    from urllib.parse import urlsplit

    import pymysql

    parts = urlsplit(url)
    conn = pymysql.connect(
        host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
        password=parts.password or "",
    )
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            if create:
                cur.execute(f"CREATE DATABASE `{create}`")
    finally:
        conn.close()


@pytest.fixture(params=["postgresql", "mysql"])
def database(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    backend = request.param
    url = request.getfixturevalue("pg_url" if backend == "postgresql" else "mysql_url")
    name = f"django_{secrets.token_hex(4)}"
    _drop_and_create(backend, url, [], name)
    try:
        yield backend, name
    finally:
        _drop_and_create(backend, url, [name, f"test_{name}"], None)


def run(backend: str, name: str, scenario: str, **env: str) -> dict[str, Any]:
    environ = {
        **os.environ,
        "MP_DJ_BACKEND": backend,
        "MP_DJ_NAME": name,
        "MP_DJ_APP": name,
        "MP_DJ_SCENARIO": scenario,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]),
        **env,
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "scenario.py")],
        env=environ, cwd=HERE, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_requests_from_16_threads_on_a_pool_of_4(database: tuple[str, str]) -> None:
    backend, name = database
    out = run(backend, name, "requests")
    assert out["errors"] == []
    assert out["statuses"] == {
        "/order/200": 160, "/leak-set/200": 96, "/leak-show/200": 96, "/boom/500": 32,
    }
    # the server never saw more sessions than the cap
    assert 1 <= out["peak_sessions"] <= 4
    # atomic(), savepoints, on_commit, select_for_update
    assert out["committed"] == out["orders_kept"] == 160
    assert out["orders_doomed"] == 0
    assert out["stock"] == 10_000 - 160
    # a raising request rolled back and left nothing open
    assert out["orders_boom"] == 0
    assert out["open_transactions"] == 0
    assert out["pool_after"]["in_use"] == 0
    assert out["pool_after"]["size"] <= 4
    # no session state of one request visible to the next
    assert out["solo_leaks"] == 0
    assert out["shows"] == 96
    assert out["leaks"] == 0
    # Django's session settings, on new and reused connections
    if backend == "postgresql":
        assert {s["time_zone"] for s in out["session"]} == {"UTC"}
    else:
        assert {(s["lock_wait"], s["isolation"]) for s in out["session"]} == {
            (17, "READ-COMMITTED")
        }
    assert all(s["autocommit"] for s in out["session"])


def test_django_test_runner_and_testcase_rollback(database: tuple[str, str]) -> None:
    backend, name = database
    out = run(backend, name, "testcase")
    assert out["failures"] == 0


def test_wrapper_calls_that_djangos_own_suite_makes(database: tuple[str, str]) -> None:
    """Found by tools/django_differential.py: each of these differed from the stock backend."""
    backend, name = database
    out = run(backend, name, "wrapper")
    # a second init_connection_state() reapplies Django's session set-up, as on the stock
    # backend (the first, right after the borrow, relies on the pool's configure)
    expected = "UTC" if backend == "postgresql" else "READ-COMMITTED"
    assert out["setting_at_borrow"] == expected
    assert out["setting_changed"] != expected
    assert out["setting_after_init"] == expected
    assert out["usable_after_close"] is False
    # close() in a forked child: no ForeignConnection, a session of the child's own, and the
    # parent's session untouched
    assert out["child"] == {"closed": True, "pid": out["child"]["pid"], "in_use": 0}
    assert out["child_status"] == 0
    assert out["parent_other_than_child"] is True
    assert out["parent_same_session"] is True
    assert out["pool_after"]["in_use"] == 0
