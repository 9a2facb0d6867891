"""millpond.integrations.fastapi inside real FastAPI and Starlette apps, on PostgreSQL.

Requests go through Starlette's TestClient, httpx's ASGITransport (many at once) and, for a
client that hangs up, a real uvicorn server on a free port. Every pool's sessions carry a
unique ``application_name``, so an admin connection outside the pool can count what the
server itself holds (``pg_stat_activity``) without seeing other users of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

import pytest


def _require(name: str) -> ModuleType:
    """The module ``name``; missing, it skips the tests, or fails them under CI=true."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(name)
    return pytest.importorskip(name)


fastapi = _require("fastapi")
httpx = _require("httpx")
asyncpg = _require("asyncpg")
psycopg = _require("psycopg")
uvicorn = _require("uvicorn")

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

import millpond  # noqa: E402
from millpond.integrations.fastapi import Millpond, SyncMillpond  # noqa: E402


@pytest.fixture
def tag() -> str:
    """A unique application_name for this test's sessions."""
    return f"mp-fastapi-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def async_url(pg_url: str) -> str:
    return "postgresql+asyncpg://" + pg_url.split("://", 1)[1]


@pytest.fixture
def table(pg_url: str) -> Iterator[str]:
    """A scratch table, dropped after the test whatever happened."""
    name = f"fastapi_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (v INTEGER PRIMARY KEY)")
    try:
        yield name
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {name}")


def rows(pg_url: str, table: str) -> list[int]:
    """The table's committed rows, read outside every pool."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return [r[0] for r in conn.execute(f"SELECT v FROM {table} ORDER BY v").fetchall()]


def sessions(pg_url: str, tag: str) -> list[tuple[int, str, str]]:
    """(pid, state, query) of every server session of the pool tagged ``tag``."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT pid, state, query FROM pg_stat_activity WHERE application_name = %s",
            (tag,),
        )
        return [(r[0], r[1], r[2]) for r in cur.fetchall()]


def async_db(url: str, tag: str, **options: Any) -> Millpond:
    options = {"max_size": 4, "min_size": 0, "timeout": 20, **options}
    return Millpond(url, connect_kwargs={"server_settings": {"application_name": tag}}, **options)


def sync_db(url: str, tag: str, **options: Any) -> SyncMillpond:
    options = {"max_size": 4, "min_size": 0, "timeout": 20, **options}
    return SyncMillpond(url, connect_kwargs={"application_name": tag}, **options)


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


# -- lifespan --------------------------------------------------------------------------------


def test_the_lifespan_opens_a_pool_and_closes_it(async_url: str, tag: str) -> None:
    db = async_db(async_url, tag, min_size=2)
    app = FastAPI(lifespan=db.lifespan)

    @app.get("/pid")
    async def pid(conn: Any = Depends(db.connection)) -> int:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))

    with pytest.raises(RuntimeError, match="only inside the app's lifespan"):
        _ = db.pool
    with TestClient(app) as client:
        first = db.pool
        assert client.get("/pid").status_code == 200
        assert wait_until(lambda: first.stats().size == 2)  # min_size opened on the app's loop
        assert first.stats().in_use == 0
    assert first.stats().closed
    assert first.stats().size == 0
    assert wait_until(lambda: sessions_count(async_url, tag) == 0)
    with pytest.raises(RuntimeError, match="lifespan"):
        _ = db.pool
    # a second lifespan (a second TestClient, on a new loop) gets a new pool
    with TestClient(app) as client:
        assert db.pool is not first
        assert client.get("/pid").status_code == 200
    assert wait_until(lambda: sessions_count(async_url, tag) == 0)


def sessions_count(url: str, tag: str) -> int:
    return len(sessions("postgresql://" + url.split("://", 1)[1], tag))


def test_composed_into_the_apps_own_lifespan(async_url: str, tag: str) -> None:
    db = async_db(async_url, tag)
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("before")
        async with db.lifespan(app):
            events.append(f"open closed={db.pool.stats().closed}")
            yield {"answer": 42}
        events.append("after")

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def index(request: Request, conn: Any = Depends(db.connection)) -> int:
        return int(await conn.fetchval("SELECT $1::int", request.state.answer))

    with TestClient(app) as client:
        assert client.get("/").json() == 42
        pool = db.pool
    assert events == ["before", "open closed=False", "after"]
    assert pool.stats().closed


def test_async_with_and_one_lifespan_at_a_time(async_url: str, tag: str) -> None:
    db = async_db(async_url, tag)

    async def script() -> None:
        async with db:
            with pytest.raises(RuntimeError, match="already open"):
                async with db:
                    pass
            async with db.pool.connection() as conn:
                assert await conn.fetchval("SELECT 1") == 1
            pool = db.pool
        assert pool.stats().closed

    asyncio.run(script())


def test_options_are_checked_when_the_object_is_made(async_url: str) -> None:
    with pytest.raises(millpond.ConfigError, match="max_sise"):
        Millpond(async_url, max_sise=4)
    with pytest.raises(millpond.ConfigError, match="open"):
        Millpond(async_url, open=True)
    with pytest.raises(millpond.ConfigError, match="max_size"):
        SyncMillpond("postgresql://postgres@127.0.0.1/test", max_size=-1)


def test_lifespan_wait_true_fails_start_up_when_the_database_is_down(tag: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = Millpond(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test", wait=True, timeout=2)
    app = FastAPI(lifespan=db.lifespan)
    with pytest.raises(millpond.ConnectError), TestClient(app):
        pass
    with pytest.raises(RuntimeError, match="lifespan"):
        _ = db.pool


# -- requests ---------------------------------------------------------------------------------


def test_32_concurrent_requests_on_a_pool_of_4(
    pg_url: str, async_url: str, tag: str, table: str
) -> None:
    db = async_db(async_url, tag, max_size=4)
    app = FastAPI(lifespan=db.lifespan)

    @app.post("/insert/{v}")
    async def insert(v: int, conn: Any = Depends(db.connection)) -> dict[str, int]:
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {table} (v) VALUES ($1)", v)
            pid = await conn.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.05)")
        return {"pid": pid, "in_use": db.pool.stats().in_use}

    async def script() -> tuple[list[Any], int]:
        admin = await asyncpg.connect(pg_url)
        seen = 0
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal seen
            while not done.is_set():
                n = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", tag
                )
                seen = max(seen, n)
                await asyncio.sleep(0.005)

        try:
            async with app.router.lifespan_context(app):
                sampler = asyncio.create_task(sample())
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    responses = await asyncio.gather(*(c.post(f"/insert/{i}") for i in range(32)))
                assert db.pool.stats().in_use == 0
                assert db.pool.stats().size <= 4
                done.set()
                await sampler
        finally:
            await admin.close()
        return responses, seen

    responses, seen = asyncio.run(script())
    assert [r.status_code for r in responses] == [200] * 32
    bodies = [r.json() for r in responses]
    assert 1 <= len({b["pid"] for b in bodies}) <= 4
    assert max(b["in_use"] for b in bodies) <= 4
    assert 1 <= seen <= 4  # the server never saw more sessions than the cap
    assert rows(pg_url, table) == list(range(32))


@pytest.mark.parametrize("reset", ["rollback", "full"])
def test_an_endpoint_that_raises_leaves_nothing_to_the_next_request(
    pg_url: str, async_url: str, tag: str, table: str, reset: str
) -> None:
    db = async_db(async_url, tag, max_size=1, reset=reset)
    app = FastAPI(lifespan=db.lifespan)

    @app.post("/fail")
    async def fail(conn: Any = Depends(db.connection)) -> None:
        if reset == "rollback":
            # the pool rolls back: what the transaction did is undone, SET and temp tables too
            await conn.execute("BEGIN")
        # with reset="full", even session state set outside a transaction is undone
        await conn.execute("SET statement_timeout = '4321ms'")
        await conn.execute("CREATE TEMP TABLE leftover (x int)")
        if reset == "full":
            await conn.execute("BEGIN")
        await conn.execute(f"INSERT INTO {table} (v) VALUES (1)")
        raise RuntimeError("the endpoint failed after writing")

    @app.get("/state")
    async def state(conn: Any = Depends(db.connection)) -> dict[str, Any]:
        return {
            "pid": await conn.fetchval("SELECT pg_backend_pid()"),
            "timeout": await conn.fetchval("SHOW statement_timeout"),
            "temp": await conn.fetchval("SELECT to_regclass('pg_temp.leftover') IS NOT NULL"),
            "in_tx": conn.is_in_transaction(),
        }

    with TestClient(app, raise_server_exceptions=False) as client:
        before = client.get("/state").json()
        assert client.post("/fail").status_code == 500
        assert db.pool.stats().in_use == 0
        after = client.get("/state").json()
        stats = db.pool.stats()
    assert after["pid"] == before["pid"]  # the same session, lent again...
    assert after == before  # ...as clean as before the failed request
    assert after["timeout"] == "0" and not after["temp"] and not after["in_tx"]
    assert rows(pg_url, table) == []
    assert stats.resets >= 1 and stats.checkouts == 3


def test_with_reset_none_a_failed_request_closes_its_connection(
    pg_url: str, async_url: str, tag: str, table: str
) -> None:
    db = async_db(async_url, tag, max_size=1, reset=None)
    app = FastAPI(lifespan=db.lifespan)

    @app.post("/fail")
    async def fail(conn: Any = Depends(db.connection)) -> None:
        await conn.execute("BEGIN")
        await conn.execute(f"INSERT INTO {table} (v) VALUES (1)")
        raise HTTPException(409, "conflict after writing")

    @app.get("/pid")
    async def pid(conn: Any = Depends(db.connection)) -> dict[str, Any]:
        return {
            "pid": await conn.fetchval("SELECT pg_backend_pid()"),
            "tx": conn.is_in_transaction(),
        }

    with TestClient(app) as client:
        first = client.get("/pid").json()
        assert client.post("/fail").status_code == 409
        second = client.get("/pid").json()
        assert db.pool.stats().closed_by_reason.get("discarded") == 1
    assert second["pid"] != first["pid"] and not second["tx"]
    assert rows(pg_url, table) == []


def test_one_connection_per_request_for_every_dependency(async_url: str, tag: str) -> None:
    db = async_db(async_url, tag)
    app = FastAPI(lifespan=db.lifespan)

    async def repository(conn: Any = Depends(db.connection)) -> Any:
        return conn

    @app.get("/same")
    async def same(
        conn: Any = Depends(db.connection), repo_conn: Any = Depends(repository)
    ) -> dict[str, Any]:
        return {"same": conn is repo_conn, "in_use": db.pool.stats().in_use}

    @app.get("/two")
    async def two(
        a: Any = Depends(db.connection), b: Any = Depends(db.connection, use_cache=False)
    ) -> dict[str, Any]:
        return {"same": a is b, "in_use": db.pool.stats().in_use}

    with TestClient(app) as client:
        assert client.get("/same").json() == {"same": True, "in_use": 1}
        assert client.get("/two").json() == {"same": False, "in_use": 2}
        assert db.pool.stats().in_use == 0


def _record_in_use_at_send(app: Any, db: Millpond, seen: list[int]) -> Any:
    """ASGI middleware: the pool's ``in_use`` at the moment the response body is sent."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.body":
                seen.append(db.pool.stats().in_use)
            await send(message)

        await app(scope, receive, recording_send)

    return middleware


def test_the_connection_is_returned_after_the_response_and_its_background_tasks(
    async_url: str, tag: str
) -> None:
    db = async_db(async_url, tag)
    app = FastAPI(lifespan=db.lifespan)
    in_background: list[Any] = []

    async def after_response(conn: Any) -> None:
        # the response is out, the dependency has not exited: the connection is still ours
        in_background.append((db.pool.stats().in_use, await conn.fetchval("SELECT 7")))

    @app.get("/request-scope")
    async def request_scope(tasks: BackgroundTasks, conn: Any = Depends(db.connection)) -> int:
        tasks.add_task(after_response, conn)
        return int(await conn.fetchval("SELECT 1"))

    @app.get("/function-scope")
    async def function_scope(conn: Any = Depends(db.connection, scope="function")) -> int:
        return int(await conn.fetchval("SELECT 2"))

    seen: list[int] = []
    with TestClient(_record_in_use_at_send(app, db, seen)) as client:
        assert client.get("/request-scope").json() == 1
        assert seen == [1]  # lent while the response was sent
        assert in_background == [(1, 7)]
        assert db.pool.stats().in_use == 0  # and returned once the request was over
        seen.clear()
        assert client.get("/function-scope").json() == 2
        assert seen == [0]  # scope="function": returned before the response went out
        assert db.pool.stats().in_use == 0


def test_a_cancelled_request_gives_its_connection_back_and_stops_its_query(
    pg_url: str, async_url: str, tag: str
) -> None:
    db = async_db(async_url, tag, max_size=1)
    app = FastAPI(lifespan=db.lifespan)

    @app.get("/slow")
    async def slow(conn: Any = Depends(db.connection)) -> None:
        await conn.execute("SELECT pg_sleep(30)")

    @app.get("/pid")
    async def pid(conn: Any = Depends(db.connection)) -> int:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))

    def with_deadline(inner: Any) -> Any:
        """A request-timeout middleware, as users write one: the request task is cancelled."""

        async def middleware(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            try:
                async with asyncio.timeout(0.5):
                    await inner(scope, receive, send)
            except TimeoutError:
                await JSONResponse({"timeout": True}, 504)(scope, receive, send)

        return middleware

    with TestClient(with_deadline(app)) as client:
        started = time.monotonic()
        assert client.get("/slow").status_code == 504
        assert time.monotonic() - started < 10
        # the pool waits out asyncpg's cancel request in the background, proves the session
        # answers, and keeps it (a reconnect costs more); then the slot is free
        assert wait_until(lambda: db.pool.stats().in_use == 0)
        stats = db.pool.stats()
        assert stats.lost == 0 and stats.closed_total == 0 and stats.connects == 1
        # the single connection slot is free again: the next request gets a session
        assert client.get("/pid").status_code == 200
        # the cut-off query does not keep running on the server
        assert wait_until(
            lambda: (
                not [s for s in sessions(pg_url, tag) if "pg_sleep" in s[2] and s[1] == "active"]
            )
        )


# -- a real server: the client hangs up -----------------------------------------------------


@contextlib.contextmanager
def serve(app: Any) -> Iterator[int]:
    """``app`` on a real uvicorn server in a thread, on a free port; stopped afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, 20), "uvicorn did not start"
        yield port
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive()


def test_a_client_that_disconnects_mid_query_loses_nothing(
    pg_url: str, async_url: str, tag: str
) -> None:
    db = async_db(async_url, tag, max_size=2)
    app = FastAPI(lifespan=db.lifespan)

    started: list[int] = []
    outcome: list[str] = []

    @app.get("/slow")
    async def slow(conn: Any = Depends(db.connection)) -> int:
        started.append(1)
        try:
            value = int(await conn.fetchval("SELECT 1 FROM pg_sleep(1.5)"))
        except BaseException as exc:
            outcome.append(type(exc).__name__)
            raise
        outcome.append("done")
        return value

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        s = db.pool.stats()
        return {"in_use": s.in_use, "size": s.size, "lost": s.lost}

    with serve(app) as port:
        for i in range(3):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
                assert wait_until(lambda i=i: len(started) == i + 1)
            # the client hung up while its query ran (the third waits for a connection)
        assert wait_until(lambda: len(outcome) == 3)
        # uvicorn does not cancel an endpoint whose client left: each query ran to its end,
        # and only then did its connection go back
        assert outcome == ["done"] * 3
        assert wait_until(lambda: db.pool.stats().in_use == 0)
        after = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=10).json()
        assert after == {"in_use": 0, "size": after["size"], "lost": 0}
        assert after["size"] <= 2
        # no session is stuck in a query or a transaction
        assert wait_until(lambda: all(s[1] == "idle" for s in sessions(pg_url, tag)))
        assert len(sessions(pg_url, tag)) <= 2
        assert httpx.get(f"http://127.0.0.1:{port}/slow", timeout=10).json() == 1
    with pytest.raises(RuntimeError, match="lifespan"):
        _ = db.pool  # the server's lifespan closed it
    assert wait_until(lambda: sessions(pg_url, tag) == [])


# -- Starlette and the sync variant ------------------------------------------------------------


def test_plain_starlette(async_url: str, tag: str) -> None:
    db = async_db(async_url, tag)

    async def index(request: Request) -> JSONResponse:
        async with db.pool.connection() as conn:
            return JSONResponse({"one": await conn.fetchval("SELECT 1")})

    app = Starlette(routes=[Route("/", index)], lifespan=db.lifespan)
    with TestClient(app) as client:
        assert client.get("/").json() == {"one": 1}
        pool = db.pool
        assert pool.stats().in_use == 0
    assert pool.stats().closed


def test_sync_variant_with_def_endpoints(pg_url: str, tag: str, table: str) -> None:
    db = sync_db(pg_url, tag, max_size=4)
    app = FastAPI(lifespan=db.lifespan)

    def repository(conn: Any = Depends(db.connection)) -> Any:
        return conn

    @app.post("/insert/{v}")
    def insert(
        v: int, conn: Any = Depends(db.connection), repo: Any = Depends(repository)
    ) -> dict[str, Any]:
        assert conn is repo
        cur = conn.execute(f"INSERT INTO {table} (v) VALUES (%s) RETURNING pg_backend_pid()", (v,))
        pid = cur.fetchone()[0]
        conn.execute("SELECT pg_sleep(0.02)")
        conn.commit()
        return {"pid": pid, "in_use": db.pool.stats().in_use}

    @app.post("/fail/{v}")
    def fail(v: int, conn: Any = Depends(db.connection)) -> None:
        conn.execute(f"INSERT INTO {table} (v) VALUES (%s)", (v,))
        raise RuntimeError("the endpoint failed after writing")

    async def script() -> list[Any]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                ok = await asyncio.gather(*(c.post(f"/insert/{i}") for i in range(16)))
                failed = await c.post("/fail/100")
                assert failed.status_code == 500
            assert db.pool.stats().in_use == 0
            assert db.pool.stats().size <= 4
            pool = db.pool
        assert pool.stats().closed
        return ok

    responses = asyncio.run(script())
    assert [r.status_code for r in responses] == [200] * 16
    assert 1 <= len({r.json()["pid"] for r in responses}) <= 4
    assert max(r.json()["in_use"] for r in responses) <= 4
    assert rows(pg_url, table) == list(range(16))  # the failed insert was rolled back
    assert wait_until(lambda: sessions(pg_url, tag) == [])


@pytest.mark.parametrize("reset", ["rollback", None])
def test_sync_variant_rolls_back_a_failed_request_even_with_reset_none(
    pg_url: str, tag: str, table: str, reset: str | None
) -> None:
    db = sync_db(pg_url, tag, max_size=1, reset=reset)
    app = FastAPI(lifespan=db.lifespan)

    @app.post("/fail")
    def fail(conn: Any = Depends(db.connection)) -> None:
        conn.execute(f"INSERT INTO {table} (v) VALUES (1)")
        raise RuntimeError("failed")

    @app.get("/status")
    def status(conn: Any = Depends(db.connection)) -> str:
        return str(conn.info.transaction_status.name)

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/fail").status_code == 500
        assert client.get("/status").json() == "IDLE"  # the failed transaction is gone
        assert db.pool.stats().in_use == 0
    assert rows(pg_url, table) == []
