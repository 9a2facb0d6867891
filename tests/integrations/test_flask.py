"""millpond.integrations.flask inside real Flask apps, on PostgreSQL, MariaDB and SQLite.

Requests go through Flask's test client (from many threads at once for the concurrency test);
what the server holds is checked through an admin connection outside the pool.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

flask = pytest.importorskip("flask")

import millpond  # noqa: E402
from millpond.integrations.flask import Millpond  # noqa: E402
from tests.integrations.web_backends import BACKENDS, Backend, make_backend  # noqa: E402


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with make_backend(request.param, tmp_path) as b:
        yield b


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    with make_backend("sqlite", tmp_path) as b:
        yield b


def make_app(backend: Backend, db: Millpond, **options: Any) -> flask.Flask:
    """An app factory as users write one, with the views the tests call."""
    app = flask.Flask("millpond_test_app")
    app.config["MILLPOND_URL"] = backend.url
    app.config["MILLPOND_OPTIONS"] = {"max_size": 4, "min_size": 0, "timeout": 20, **options}
    db.init_app(app)

    @app.get("/same")
    def same() -> dict[str, Any]:
        return {"same": db.connection() is db.connection(), "in_use": db.pool.stats().in_use}

    @app.get("/nothing")
    def nothing() -> dict[str, Any]:
        return {"in_use": db.pool.stats().in_use}

    @app.post("/insert/<int:v>")
    def insert(v: int) -> dict[str, Any]:
        conn = db.connection()
        cur = conn.cursor()
        cur.execute(backend.sql(f"INSERT INTO {backend.table} (v) VALUES (?)"), (v,))
        ident = None
        if backend.backend_id_sql:
            cur.execute(backend.backend_id_sql)
            ident = cur.fetchone()[0]
        conn.commit()
        return {"backend": ident, "in_use": db.pool.stats().in_use, "size": db.pool.stats().size}

    @app.post("/fail/<int:v>")
    def fail(v: int) -> str:
        conn = db.connection()
        conn.cursor().execute(backend.sql(f"INSERT INTO {backend.table} (v) VALUES (?)"), (v,))
        raise RuntimeError("the view failed after writing")

    return app


def test_one_connection_per_request_borrowed_lazily_and_returned(backend: Backend) -> None:
    db = Millpond()
    app = make_app(backend, db)
    client = app.test_client()
    assert client.get("/nothing").json == {"in_use": 0}  # no db.connection(): nothing borrowed
    assert client.get("/same").json == {"same": True, "in_use": 1}
    with app.app_context():
        assert db.pool.stats().in_use == 0  # returned at teardown of the request's context
    db.pool_of(app).close()


def test_concurrent_requests_from_16_threads_stay_within_the_cap(backend: Backend) -> None:
    db = Millpond()
    app = make_app(backend, db)
    barrier = threading.Barrier(16)

    def worker(i: int) -> list[dict[str, Any]]:
        client = app.test_client()
        barrier.wait(timeout=30)
        out = []
        for j in range(5):
            resp = client.post(f"/insert/{i * 100 + j}")
            assert resp.status_code == 200, resp.text
            out.append(resp.json)
        return out

    with ThreadPoolExecutor(16) as ex:
        results = [r for rs in ex.map(worker, range(16)) for r in rs]
    assert len(results) == 80
    assert max(r["in_use"] for r in results) <= 4
    assert max(r["size"] for r in results) <= 4
    if backend.backend_id_sql:
        assert 1 <= len({r["backend"] for r in results}) <= 4
    assert len(backend.rows()) == 80
    pool = db.pool_of(app)
    assert pool.stats().in_use == 0
    pool.close()


@pytest.mark.parametrize("reset", ["rollback", None])
def test_a_view_that_raises_is_rolled_back_and_returns_its_connection(
    backend: Backend, reset: str | None
) -> None:
    db = Millpond()
    app = make_app(backend, db, reset=reset, max_size=1)
    client = app.test_client()
    assert client.post("/fail/1").status_code == 500
    assert backend.rows() == []  # the server never committed the failed request's insert
    assert client.post("/insert/2").status_code == 200  # the single connection is back
    assert backend.rows() == [(2,)]
    assert db.pool_of(app).stats().in_use == 0
    db.pool_of(app).close()


def test_an_exception_propagating_through_the_test_client(sqlite_backend: Backend) -> None:
    db = Millpond()
    app = make_app(sqlite_backend, db, max_size=1)
    app.testing = True  # the exception reaches the caller; teardown still runs
    with pytest.raises(RuntimeError, match="view failed"):
        app.test_client().post("/fail/1")
    assert sqlite_backend.rows() == []
    assert db.pool_of(app).stats().in_use == 0
    db.pool_of(app).close()


def test_several_apps_each_have_their_own_pool(sqlite_backend: Backend) -> None:
    db = Millpond()
    a, b = make_app(sqlite_backend, db, max_size=2), make_app(sqlite_backend, db, max_size=3)
    assert db.pool_of(a) is not db.pool_of(b)
    with a.app_context():
        conn_a = db.connection()
        assert db.pool.stats().in_use == 1
        with b.app_context():
            assert db.connection() is not conn_a
            assert db.pool is db.pool_of(b)
            assert db.pool_of(b).stats().in_use == 1
        assert db.pool_of(b).stats().in_use == 0
        assert db.connection() is conn_a
    assert db.pool_of(a).stats().in_use == 0
    # two extension objects on one app: two connections, one from each pool
    db2 = Millpond()
    db2.init_app(a)
    with a.app_context():
        assert db.connection() is not db2.connection()
    for pool in (db.pool_of(a), db.pool_of(b), db2.pool_of(a)):
        assert pool.stats().in_use == 0
        pool.close()


def test_flask_cli_command_uses_and_returns_a_connection(sqlite_backend: Backend) -> None:
    db = Millpond()
    app = make_app(sqlite_backend, db)

    @app.cli.command("seed")
    def seed() -> None:
        conn = db.connection()
        conn.cursor().execute(f"INSERT INTO {sqlite_backend.table} (v) VALUES (7)")
        conn.commit()
        print("in use", db.pool.stats().in_use)

    result = app.test_cli_runner().invoke(args=["seed"])
    assert result.exit_code == 0, result.output
    assert "in use 1" in result.output
    assert sqlite_backend.rows() == [(7,)]
    assert db.pool_of(app).stats().in_use == 0
    db.pool_of(app).close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "no MILLPOND_URL"),
        ({"MILLPOND_OPTIONS": ["max_size", 4]}, "must be a dict of millpond Pool options"),
        (
            {"MILLPOND_OPTIONS": {"max_sise": 4}},
            r"MILLPOND_OPTIONS\['max_sise'\] is not a millpond",
        ),
        ({"MILLPOND_OPTIONS": {"max_size": "4"}}, "max_size='4' must be an integer"),
        ({"MILLPOND_OPTIONS": {"timeout": -1}}, "timeout"),
    ],
)
def test_bad_configuration_is_a_clear_error_at_init_app(
    sqlite_backend: Backend, config: dict[str, Any], message: str
) -> None:
    app = flask.Flask("bad_config")
    if config:
        app.config["MILLPOND_URL"] = sqlite_backend.url
    app.config.update(config)
    with pytest.raises(millpond.ConfigError, match=message):
        Millpond(app)
    assert not app.extensions.get("millpond")  # nothing half-made left behind


def test_connection_outside_an_app_context_or_app_not_initialised(
    sqlite_backend: Backend,
) -> None:
    db = Millpond()
    with pytest.raises(RuntimeError, match="application context"):
        db.connection()
    other = flask.Flask("uninitialised")
    with other.app_context(), pytest.raises(RuntimeError, match="call init_app"):
        db.connection()


def test_the_pool_is_closed_at_process_exit(sqlite_backend: Backend) -> None:
    # atexit runs last-registered first: the check registered before init_app runs after
    # the pool's close
    script = f"""
import atexit, flask, millpond
from millpond.integrations.flask import Millpond
app = flask.Flask("exit")
app.config["MILLPOND_URL"] = {sqlite_backend.url!r}
def check():
    try:
        db.pool_of(app).getconn()
    except millpond.PoolClosed:
        print("closed at exit")
atexit.register(check)
db = Millpond(app)
with app.app_context():
    db.connection().cursor().execute("SELECT 1")
"""
    src = Path(millpond.__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(src)},
    )
    assert done.returncode == 0, done.stderr
    assert "closed at exit" in done.stdout
