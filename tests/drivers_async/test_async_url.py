"""resolve_async: URL schemes to adapters, configuration errors, password redaction."""

from __future__ import annotations

import importlib.util
import sqlite3
from typing import Any

import pytest

from millpond.drivers import targets
from millpond.drivers.async_base import AsyncAdapter
from millpond.drivers.async_url import resolve_async
from millpond.errors import ConfigError

from .conftest import OpenFn, scalar, with_scheme


def installed(*libraries: str) -> None:
    for library in libraries:
        if importlib.util.find_spec(library) is None:
            pytest.skip(f"{library} is not installed")


def only_installed(monkeypatch: pytest.MonkeyPatch, *libraries: str) -> None:
    """Pretend that of the drivers, only ``libraries`` are installed."""
    monkeypatch.setattr(targets, "installed", lambda library: library in libraries)


@pytest.mark.parametrize(
    ("url", "adapter_class", "library"),
    [
        ("postgresql+asyncpg://u@h/db", "AsyncpgAdapter", "asyncpg"),
        ("postgres+asyncpg://u@h/db", "AsyncpgAdapter", "asyncpg"),
        ("postgresql+psycopg://u@h/db", "PsycopgAsyncAdapter", "psycopg"),
        ("postgresql+psycopg_async://u@h/db", "PsycopgAsyncAdapter", "psycopg"),
        ("mysql+aiomysql://u@h/db", "AiomysqlAdapter", "aiomysql"),
        ("mariadb+aiomysql://u@h/db", "AiomysqlAdapter", "aiomysql"),
        ("sqlite+aiosqlite:///x.db", "AiosqliteAdapter", "aiosqlite"),
        ("sqlite+aiosqlite://", "AiosqliteAdapter", "aiosqlite"),
    ],
)
def test_scheme_picks_the_driver(url: str, adapter_class: str, library: str) -> None:
    installed(library)
    adapter = resolve_async(url)
    assert type(adapter).__name__ == adapter_class
    assert adapter.extra == library  # the pip extra named in errors


def test_plain_postgresql_prefers_asyncpg(monkeypatch: pytest.MonkeyPatch) -> None:
    installed("asyncpg", "psycopg")
    assert resolve_async("postgresql://u@h/db").name == "asyncpg"
    only_installed(monkeypatch, "psycopg")
    assert resolve_async("postgresql://u@h/db").name == "psycopg-async"
    only_installed(monkeypatch)
    with pytest.raises(ConfigError, match=r"millpond\[asyncpg\].*millpond\[psycopg\]"):
        resolve_async("postgresql://u@h/db")


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("postgresql+asyncpg://u@h/db", "asyncpg"),
        ("postgresql+psycopg://u@h/db", "psycopg"),
        ("mysql+aiomysql://u@h/db", "aiomysql"),
        ("sqlite+aiosqlite:///x.db", "aiosqlite"),
    ],
)
def test_missing_driver_names_the_pip_extra(
    monkeypatch: pytest.MonkeyPatch, url: str, extra: str
) -> None:
    only_installed(monkeypatch)
    with pytest.raises(ConfigError, match=rf"pip install 'millpond\[{extra}\]'"):
        resolve_async(url)


@pytest.mark.parametrize(
    ("url", "use"),
    [
        ("mysql://u@h/db", "mysql+aiomysql://"),
        ("mysql+pymysql://u@h/db", "mysql+aiomysql://"),
        ("mysql+mysqlconnector://u@h/db", "mysql+aiomysql://"),
        ("mariadb://u@h/db", "mariadb+aiomysql://"),
        ("sqlite:///x.db", "sqlite+aiosqlite://"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg://"),
    ],
)
def test_sync_scheme_says_which_async_scheme_to_use(url: str, use: str) -> None:
    with pytest.raises(ConfigError, match="synchronous") as info:
        resolve_async(url)
    assert use in str(info.value)


def test_asyncmy_is_not_supported_yet() -> None:
    with pytest.raises(ConfigError, match=r"not supported yet.*mysql\+aiomysql://"):
        resolve_async("mysql+asyncmy://u@h/db")


def test_unknown_scheme_is_named() -> None:
    with pytest.raises(ConfigError, match="'oracle\\+oracledb'"):
        resolve_async("oracle+oracledb://u@h/db")
    with pytest.raises(ConfigError, match="not a database URL"):
        resolve_async("just some text")


@pytest.mark.parametrize(
    ("url", "library", "port"),
    [
        (
            "postgresql+asyncpg://app:s%40cret%21@db.example:5433/prod?sslmode=disable",
            "asyncpg",
            5433,
        ),
        ("postgresql+psycopg://app:s%40cret%21@db.example:5433/prod", "psycopg", 5433),
        ("mysql+aiomysql://app:s%40cret%21@db.example:3307/prod", "aiomysql", 3307),
    ],
)
def test_password_never_in_description(url: str, library: str, port: int) -> None:
    installed(library)
    adapter = resolve_async(url)
    scheme = url.partition("://")[0]
    assert adapter.description == f"{scheme}://app@db.example:{port}/prod"
    assert "cret" not in repr(adapter)
    # both spellings: the decoded one a driver might echo, the encoded one from the URL
    assert {"s@cret!", "s%40cret%21"} <= set(adapter.secrets)
    assert adapter.redact("auth failed for s@cret! (s%40cret%21)") == "auth failed for *** (***)"


def test_passwords_from_connect_kwargs_and_query_are_secrets() -> None:
    installed("asyncpg", "psycopg")
    adapter = resolve_async("postgresql+asyncpg://app@h/db", {"password": "kw-secret"})
    assert "kw-secret" in adapter.secrets
    assert "kw-secret" not in repr(adapter)
    adapter = resolve_async("postgresql+psycopg://app@h/db?password=q-secret")
    assert "q-secret" in adapter.secrets
    assert "q-secret" not in repr(adapter)


def test_adapter_instance_is_returned_as_is() -> None:
    async def connect() -> Any:
        raise AssertionError("not called")

    adapter = AsyncAdapter(connect, description="mine")
    assert resolve_async(adapter) is adapter
    with pytest.raises(ConfigError, match="connect_kwargs"):
        resolve_async(adapter, {"user": "x"})


def test_coroutine_function_gets_the_generic_adapter() -> None:
    async def make_connection() -> Any:
        raise AssertionError("not called")

    adapter = resolve_async(make_connection)
    assert type(adapter) is AsyncAdapter
    assert "make_connection" in adapter.description
    with pytest.raises(ConfigError, match=r"functools\.partial"):
        resolve_async(make_connection, {"user": "x"})


@pytest.mark.parametrize("target", [sqlite3, 42, None])
def test_targets_that_cannot_work_are_refused(target: object) -> None:
    with pytest.raises(ConfigError, match=r"synchronous|coroutine function"):
        resolve_async(target)


@pytest.mark.asyncio
async def test_sync_connect_function_is_refused_at_connect() -> None:
    opened: list[sqlite3.Connection] = []

    def sync_connect() -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:")
        opened.append(conn)
        return conn

    adapter = resolve_async(sync_connect)
    with pytest.raises(ConfigError, match="not an awaitable"):
        await adapter.connect()
    with pytest.raises(sqlite3.ProgrammingError):  # and what it opened was closed
        opened[0].execute("SELECT 1")


@pytest.mark.parametrize(
    ("url", "library"),
    [("postgresql+asyncpg://u@h/db", "asyncpg"), ("mysql+aiomysql://u@h/db", "aiomysql")],
)
def test_unknown_connect_kwargs_are_refused_at_resolve(url: str, library: str) -> None:
    installed(library)
    with pytest.raises(ConfigError, match="'no_such_option'"):
        resolve_async(url, {"no_such_option": 1})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"check_same_thread": True}, "check_same_thread"), ({"autocommit": True}, "isolation_level")],
)
def test_aiosqlite_refuses_options_the_pool_cannot_honour(
    kwargs: dict[str, Any], match: str
) -> None:
    installed("aiosqlite")
    with pytest.raises(ConfigError, match=match):
        resolve_async("sqlite+aiosqlite:///x.db", kwargs)


# -- URL parameters reach the driver, typed ---------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.mysql
async def test_mysql_url_parameters_are_typed(mysql_url: str, opened: OpenFn) -> None:
    installed("aiomysql")
    adapter = resolve_async(with_scheme(mysql_url, "mysql+aiomysql") + "?autocommit=true")
    conn = await opened(adapter)
    assert adapter.get_autocommit(conn) is True
    assert await scalar(conn, "SELECT @@autocommit") == 1


@pytest.mark.asyncio
@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_pg_url_parameters_reach_the_server(pg_url: str, opened: OpenFn, driver: str) -> None:
    installed({"asyncpg": "asyncpg", "psycopg": "psycopg"}[driver])
    adapter = resolve_async(with_scheme(pg_url, f"postgresql+{driver}") + "?application_name=mp_t")
    conn = await opened(adapter)
    assert await scalar(conn, "SELECT current_setting('application_name')") == "mp_t"
