"""Secrets: a password never shows in what millpond produces (repr, errors and their chains,
tracebacks, log records at DEBUG, stats, warnings), and a password may be a callable, called at
each connect, so that ``drain()`` picks up rotated credentials without downtime."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import millpond
from millpond.drivers.base import ConnectParams

URL_SECRET = "Url-S3cret:/@%x"  # needs percent-encoding: both forms must stay hidden
KW_SECRET = "kw-S3cret-7731"
CALLABLE_SECRET = "tok-Rotating-9912"
SECRETS = (URL_SECRET, quote(URL_SECRET, safe=""), KW_SECRET, CALLABLE_SECRET)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


class Evidence:
    """Everything millpond let out, as text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def error(self, exc: BaseException) -> None:
        for link in _chain(exc):
            self.texts += [str(link), repr(link), repr(link.args)]
        self.texts.append("".join(traceback.format_exception(exc)))

    def leaks(self, caplog: pytest.LogCaptureFixture, caught: list[Any]) -> list[str]:
        texts = list(self.texts)
        for record in caplog.records:
            texts += [record.getMessage(), repr(record.args)]
            if record.exc_info and record.exc_info[1] is not None:
                texts.append("".join(traceback.format_exception(record.exc_info[1])))
        texts += [str(w.message) for w in caught]
        return [t for t in texts if any(s in t for s in SECRETS)]


def _with_password(url: str, password: str, port: int | None = None) -> str:
    scheme, _, rest = url.partition("://")
    userinfo, _, hostpart = rest.rpartition("@")
    user = userinfo.partition(":")[0] or "root"
    host, _, path = hostpart.partition("/")
    if port is not None:
        host = host.rsplit(":", 1)[0] + f":{port}"
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}/{path}"


def _sync_attempt(pool: millpond.Pool, evidence: Evidence) -> None:
    for attempt in (lambda: pool.open(wait=True, timeout=5), lambda: pool.getconn(timeout=0.5)):
        try:
            attempt()
        except millpond.PoolError as exc:
            evidence.error(exc)
        else:
            raise AssertionError("the connect was expected to fail")
    evidence.texts += [repr(pool), str(pool), repr(pool.stats()), str(pool._adapter)]


SYNC_MYSQL = ["mysql+pymysql", "mysql+mysqlconnector"]


@pytest.mark.mysql
@pytest.mark.parametrize("scheme", SYNC_MYSQL)
@pytest.mark.parametrize("failure", ["wrong_password", "wrong_port"])
@pytest.mark.parametrize("kw_password", ["string", "callable"])
def test_no_password_anywhere_sync(
    mysql_url: str, scheme: str, failure: str, kw_password: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, millpond's and the drivers'
    port = _closed_port() if failure == "wrong_port" else None
    url = _with_password(scheme + "://" + mysql_url.partition("://")[2], URL_SECRET, port)
    password: Any = KW_SECRET if kw_password == "string" else (lambda: CALLABLE_SECRET)
    evidence = Evidence()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = millpond.Pool(
            url, connect_kwargs={"password": password, "connect_timeout": 3}, min_size=1,
            name="leaky", open=False,
        )  # fmt: skip
        evidence.texts.append(repr(pool))
        pool.open()
        _sync_attempt(pool, evidence)
        pool.close()
        evidence.texts.append(repr(pool))
    assert evidence.texts, "nothing was captured"
    assert evidence.leaks(caplog, caught) == []


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "postgresql+psycopg2"])
def test_no_password_anywhere_postgres_wrong_port(
    pg_url: str, scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = _with_password(scheme + "://" + pg_url.partition("://")[2], URL_SECRET, _closed_port())
    evidence = Evidence()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = millpond.Pool(url, connect_kwargs={"password": KW_SECRET}, open=False)
        pool.open()
        _sync_attempt(pool, evidence)
        pool.close()
    assert evidence.leaks(caplog, caught) == []


async def _async_attempt(url: str, password: Any, evidence: Evidence) -> None:
    pool = millpond.AsyncPool(url, connect_kwargs={"password": password}, min_size=1)
    evidence.texts.append(repr(pool))
    await pool.open()
    for attempt in (lambda: pool.open(wait=True, timeout=5), lambda: pool.getconn(timeout=0.5)):
        try:
            await attempt()
        except millpond.PoolError as exc:
            evidence.error(exc)
        else:
            raise AssertionError("the connect was expected to fail")
    evidence.texts += [repr(pool), repr(pool.stats())]
    await pool.close()


@pytest.mark.parametrize(
    ("server", "scheme", "failure"),
    [
        ("mysql", "mysql+aiomysql", "wrong_password"),
        ("mysql", "mysql+aiomysql", "wrong_port"),
        ("postgres", "postgresql+asyncpg", "wrong_port"),
        ("postgres", "postgresql+psycopg", "wrong_port"),
    ],
)
@pytest.mark.parametrize("kw_password", ["string", "callable"])
def test_no_password_anywhere_async(
    request: pytest.FixtureRequest,
    server: str,
    scheme: str,
    failure: str,
    kw_password: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = request.getfixturevalue("mysql_url" if server == "mysql" else "pg_url")
    caplog.set_level(logging.DEBUG)
    port = _closed_port() if failure == "wrong_port" else None
    url = _with_password(scheme + "://" + base.partition("://")[2], URL_SECRET, port)

    async def token() -> str:
        return CALLABLE_SECRET

    password: Any = KW_SECRET if kw_password == "string" else token
    evidence = Evidence()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(_async_attempt(url, password, evidence))
    assert evidence.leaks(caplog, caught) == []


# -- the callable itself ---------------------------------------------------------------------


def test_password_callable_is_called_at_each_connect_and_kept_nowhere() -> None:
    calls: list[str] = []
    seen: list[dict[str, Any]] = []

    def token() -> str:
        calls.append("x")
        return f"{CALLABLE_SECRET}-{len(calls)}"

    def connect(**kwargs: Any) -> dict[str, Any]:
        seen.append(kwargs)
        return kwargs

    params = ConnectParams({"user": "app", "password": token})
    params.call(connect)
    params.call(connect)
    assert [k["password"] for k in seen] == [f"{CALLABLE_SECRET}-1", f"{CALLABLE_SECRET}-2"]
    assert params["password"] is token  # the result is not stored back


def test_a_driver_echoing_the_token_is_scrubbed() -> None:
    class DriverError(Exception):
        pass

    class Opaque(Exception):
        def __str__(self) -> str:  # text not taken from args: cannot be edited in place
            return f"auth failed for password={CALLABLE_SECRET}"

    def echoing(**kwargs: Any) -> Any:
        try:
            raise OSError(f"dsn: password={kwargs['password']}")
        except OSError as inner:
            raise DriverError(f"password={kwargs['password']} refused") from inner

    def opaque(**kwargs: Any) -> Any:
        raise Opaque()

    params = ConnectParams({"password": lambda: CALLABLE_SECRET})
    with pytest.raises(DriverError) as info:
        params.call(echoing)
    assert all(CALLABLE_SECRET not in str(link) for link in _chain(info.value))
    assert "***" in str(info.value)
    with pytest.raises(millpond.PoolError) as info2:
        params.call(opaque)
    assert CALLABLE_SECRET not in str(info2.value) and "Opaque" in str(info2.value)
    assert info2.value.__cause__ is None and info2.value.__suppress_context__


def test_static_secrets_are_scrubbed_along_the_whole_chain() -> None:
    """The pool redacts the top error's args; a driver that chains an inner error quoting the
    DSN is scrubbed where it is raised, before the pool sees it."""

    def echoing(**kwargs: Any) -> Any:
        try:
            raise ValueError(f"bad dsn 'password={kwargs['password']}'")
        except ValueError as inner:
            raise RuntimeError("connect failed") from inner

    params = ConnectParams({"password": KW_SECRET}, [KW_SECRET])
    with pytest.raises(RuntimeError) as info:
        params.call(echoing)
    links = list(_chain(info.value))
    assert len(links) == 2
    assert all(KW_SECRET not in str(link) for link in links)


def test_a_callable_returning_a_non_string_names_the_key_not_the_value() -> None:
    params = ConnectParams({"password": lambda: 123456})
    with pytest.raises(millpond.ConfigError, match=r"\['password'\].*int") as info:
        params.call(lambda **kw: None)
    assert "123456" not in str(info.value)


# -- rotation on a server that checks passwords ---------------------------------------------


@pytest.fixture(scope="module")
def scram_pg() -> Iterator[Any]:
    """A disposable PostgreSQL whose role mp_app logs in with a SCRAM password (the shared
    server trusts every local login, so it cannot show a rotation)."""
    from tests.faults.pgserver import DisposablePostgres, find_pg_bindir

    if find_pg_bindir() is None:
        message = "PostgreSQL server binaries (initdb, postgres) not found"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true requires them")
        pytest.skip(message)
    with DisposablePostgres(max_connections=40) as server:
        with server.admin_connection() as admin:
            admin.execute("SET password_encryption = 'scram-sha-256'")
            admin.execute("CREATE ROLE mp_app LOGIN PASSWORD 'pw-1'")
            hba = Path(server.root, "data", "pg_hba.conf")
            hba.write_text("host all mp_app 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
            admin.execute("SELECT pg_reload_conf()")
        yield server


def _app_url(server: Any, scheme: str) -> str:
    return f"{scheme}://mp_app@127.0.0.1:{server.port}/postgres"


@pytest.mark.postgres
def test_rotation_with_drain_has_no_downtime(scram_pg: Any) -> None:
    import psycopg

    # the server really checks: a wrong password is refused
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(_app_url(scram_pg, "postgresql"), password="nope", connect_timeout=5)

    current = {"password": "pw-1"}
    calls = 0
    lock = threading.Lock()

    def password() -> str:
        nonlocal calls
        with lock:
            calls += 1
            return current["password"]

    errors: list[BaseException] = []
    pids: set[int] = set()
    stop = threading.Event()
    url = _app_url(scram_pg, "postgresql+psycopg")
    with millpond.Pool(
        url, connect_kwargs={"password": password}, min_size=3, max_size=3, timeout=10
    ) as pool:
        pool.open(wait=True, timeout=10)

        def work() -> None:
            while not stop.is_set():
                try:
                    with pool.connection() as conn:
                        row = conn.execute("SELECT pg_backend_pid()").fetchone()
                        assert row is not None
                        pids.add(int(row[0]))
                except BaseException as exc:
                    errors.append(exc)
                time.sleep(0.001)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        before = set(pids)
        with scram_pg.admin_connection() as admin:
            admin.execute("ALTER ROLE mp_app PASSWORD 'pw-2'")
        current["password"] = "pw-2"  # the vault hands out the new secret
        pids.clear()
        pool.drain()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(pids - before) < 3 or pids & before):
            pids.clear()
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(10)
        stats = pool.stats()
    assert errors == [], errors[:3]
    assert pids and not pids & before, "every connection was replaced"
    assert calls >= 6, calls  # three connects with pw-1, three with pw-2
    assert calls == stats.connects and stats.connect_errors == 0


@pytest.mark.postgres
def test_async_password_callable_rotation(scram_pg: Any) -> None:
    current = {"password": "pw-2"}
    with scram_pg.admin_connection() as admin:
        admin.execute("ALTER ROLE mp_app PASSWORD 'pw-2'")

    async def password() -> str:
        await asyncio.sleep(0)
        return current["password"]

    async def main() -> tuple[int, int]:
        url = _app_url(scram_pg, "postgresql+asyncpg")
        async with millpond.AsyncPool(
            url, connect_kwargs={"password": password}, min_size=2, max_size=2
        ) as pool:
            await pool.open(wait=True, timeout=10)
            async with pool.connection() as conn:
                first = int(await conn.fetchval("SELECT pg_backend_pid()"))
            with scram_pg.admin_connection() as admin:
                admin.execute("ALTER ROLE mp_app PASSWORD 'pw-3'")
            current["password"] = "pw-3"
            await pool.drain()
            await pool.open(wait=True, timeout=10)
            async with pool.connection() as conn:
                second = int(await conn.fetchval("SELECT pg_backend_pid()"))
        return first, second

    first, second = asyncio.run(main())
    assert first != second


@pytest.mark.postgres
def test_no_password_in_a_working_pools_logs(
    scram_pg: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A pool that connects (the server checks the password), loses its connections (pings
    fail and are logged), drains and then meets a wrong password: nothing it logs, raises or
    reports holds a password, at DEBUG."""
    caplog.set_level(logging.DEBUG)
    with scram_pg.admin_connection() as admin:
        admin.execute(f"ALTER ROLE mp_app PASSWORD '{KW_SECRET}'")
    current = {"password": KW_SECRET}
    url = _with_password(_app_url(scram_pg, "postgresql+psycopg"), URL_SECRET)
    evidence = Evidence()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = millpond.Pool(
            url,
            connect_kwargs={"password": lambda: current["password"], "connect_timeout": 5},
            min_size=2,
            ping_window=0,  # every checkout pings: the dead ones are found and logged
            timeout=10,
        )
        pool.open(wait=True, timeout=10)
        scram_pg.terminate_clients()
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        current["password"] = CALLABLE_SECRET  # the server does not know this one
        pool.drain()
        try:
            for _ in range(3):
                with pool.connection(timeout=2) as conn:
                    conn.execute("SELECT 1")
        except millpond.PoolError as exc:
            evidence.error(exc)
        evidence.texts += [repr(pool), repr(pool.stats())]
        pool.close()
    assert any("failed its ping" in r.getMessage() for r in caplog.records), "nothing logged"
    assert evidence.texts and any("password authentication failed" in t for t in evidence.texts)
    assert evidence.leaks(caplog, caught) == []
