"""URL and target resolution (``millpond.drivers.url.resolve``). Resolving opens nothing, so
most of this runs without servers; the failed-connect tests use a closed local port."""

from __future__ import annotations

import subprocess
import sys
import types
from typing import Any

import pytest

from millpond.drivers import mysqlconnector, psycopg, psycopg2, pymysql, sqlite
from millpond.drivers.base import SyncAdapter
from millpond.drivers.url import ASYNC_SCHEMES, SCHEMES, resolve
from millpond.errors import ConfigError

ADAPTER_CLASSES: list[type[Any]] = [
    psycopg.PsycopgAdapter,
    psycopg2.Psycopg2Adapter,
    pymysql.PyMySQLAdapter,
    mysqlconnector.MySQLConnectorAdapter,
    sqlite.SqliteAdapter,
]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The keyword arguments each adapter would pass to its driver's connect()."""
    seen: dict[str, Any] = {}
    for cls in ADAPTER_CLASSES:
        original = cls.from_kwargs.__func__

        def spy(klass: type[Any], kwargs: Any, /, *, _orig: Any = original, **kw: Any) -> Any:
            seen["kwargs"] = dict(kwargs)
            seen["class"] = klass
            return _orig(klass, kwargs, **kw)

        monkeypatch.setattr(cls, "from_kwargs", classmethod(spy))
    return seen


# -- schemes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h/db", psycopg.PsycopgAdapter),
        ("postgres://u@h/db", psycopg.PsycopgAdapter),
        ("postgresql+psycopg://u@h/db", psycopg.PsycopgAdapter),
        ("postgresql+psycopg2://u@h/db", psycopg2.Psycopg2Adapter),
        ("mysql://u@h/db", pymysql.PyMySQLAdapter),
        ("mysql+pymysql://u@h/db", pymysql.PyMySQLAdapter),
        ("mariadb://u@h/db", pymysql.PyMySQLAdapter),
        ("mysql+mysqlconnector://u@h/db", mysqlconnector.MySQLConnectorAdapter),
        ("sqlite:///rel.db", sqlite.SqliteAdapter),
        ("SQLite://", sqlite.SqliteAdapter),
    ],
)
def test_scheme_picks_the_adapter(url: str, expected: type[Any]) -> None:
    adapter = resolve(url)
    assert type(adapter) is expected
    assert adapter.module is not None


def test_postgresql_falls_back_to_psycopg2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # None in sys.modules blocks the import
    assert type(resolve("postgresql://u@h/db")) is psycopg2.Psycopg2Adapter
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(
        ConfigError, match=r"neither is installed: pip install 'millpond\[psycopg\]'"
    ):
        resolve("postgresql://u@h/db")


@pytest.mark.parametrize(
    ("url", "library", "message"),
    [
        ("postgresql+psycopg://h/db", "psycopg", "the 'psycopg' driver is not installed: pip install 'millpond[psycopg]'"),
        ("postgresql+psycopg2://h/db", "psycopg2", "the 'psycopg2' driver is not installed: pip install 'millpond[psycopg2]'"),
        ("mysql://h/db", "pymysql", "the 'pymysql' driver is not installed: pip install 'millpond[pymysql]'"),
        ("mysql+mysqlconnector://h/db", "mysql.connector", "the 'mysql.connector' driver is not installed: pip install 'millpond[mysql]'"),
        ("mysql+mysqldb://h/db", "MySQLdb", "the 'MySQLdb' driver is not installed: pip install 'millpond[mysqlclient]'"),
    ],
)  # fmt: skip
def test_missing_driver_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, url: str, library: str, message: str
) -> None:
    monkeypatch.setitem(sys.modules, library, None)
    with pytest.raises(ConfigError) as info:
        resolve(url)
    assert str(info.value) == message


def test_unknown_scheme_is_named_and_supported_ones_listed() -> None:
    with pytest.raises(ConfigError) as info:
        resolve("oracle://scott:tiger@h/db")
    message = str(info.value)
    assert "'oracle'" in message
    for scheme in ("postgresql://", "mysql+mysqlconnector://", "sqlite://", "mariadb://"):
        assert scheme in message
    assert "tiger" not in message


def test_text_without_a_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a database URL"):
        resolve("host=127.0.0.1 dbname=test")


@pytest.mark.parametrize("scheme", ["postgresql+asyncpg", "mysql+aiomysql", "sqlite+aiosqlite"])
def test_async_schemes_point_to_async_pool(scheme: str) -> None:
    assert scheme in ASYNC_SCHEMES
    assert scheme not in SCHEMES
    with pytest.raises(ConfigError) as info:
        resolve(f"{scheme}://u:pw@h/db")
    assert "millpond.AsyncPool" in str(info.value)
    assert scheme in str(info.value)


@pytest.mark.parametrize("target", [42, None, b"sqlite://", ["sqlite://"], object()])
def test_wrong_target_type(target: object) -> None:
    with pytest.raises(ConfigError, match=type(target).__name__):
        resolve(target)


# -- URL parts ---------------------------------------------------------------------------------


def test_url_parts_become_connect_kwargs(captured: dict[str, Any]) -> None:
    adapter = resolve(
        "mysql://app%40corp:p%40ss%3Aw%2Frd@db.example:3307/shop%20db"
        "?connect_timeout=5&read_timeout=1.5&autocommit=TRUE&charset=utf8mb4"
    )
    assert captured["kwargs"] == {
        "user": "app@corp",
        "password": "p@ss:w/rd",
        "host": "db.example",
        "port": 3307,
        "database": "shop db",
        "connect_timeout": 5,
        "read_timeout": 1.5,
        "autocommit": True,
        "charset": "utf8mb4",
    }
    assert adapter.description == "mysql://app%40corp@db.example:3307/shop db"
    assert set(adapter.secrets) == {"p@ss:w/rd", "p%40ss%3Aw%2Frd"}


def test_connect_kwargs_override_the_url(captured: dict[str, Any]) -> None:
    adapter = resolve(
        "mysql+pymysql://u:urlpw@h:1/db?connect_timeout=5",
        {"port": 3306, "db": "other", "passwd": "kwpw", "connect_timeout": 9},
    )
    kwargs = captured["kwargs"]
    assert kwargs["port"] == 3306
    assert kwargs["database"] == "other"  # the alias lands on the URL's key, not beside it
    assert kwargs["password"] == "kwpw"
    assert kwargs["connect_timeout"] == 9
    assert "db" not in kwargs and "passwd" not in kwargs
    assert adapter.description == "mysql+pymysql://u@h:3306/other"
    assert {"urlpw", "kwpw"} <= set(adapter.secrets)


def test_postgres_params_and_multiple_hosts(captured: dict[str, Any]) -> None:
    adapter = resolve(
        "postgresql+psycopg://app:pw@h1:5432,h2:5433/test"
        "?connect_timeout=3&application_name=web&sslmode=prefer",
        {"database": "other"},
    )
    assert captured["kwargs"] == {
        "user": "app",
        "password": "pw",
        "host": "h1,h2",
        "port": "5432,5433",
        "dbname": "other",
        "connect_timeout": 3,
        "application_name": "web",
        "sslmode": "prefer",
    }
    assert adapter.description == "postgresql+psycopg://app@h1:5432,h2:5433/other"


def test_ipv6_host(captured: dict[str, Any]) -> None:
    adapter = resolve("postgresql+psycopg2://u@[::1]:6432/db")
    assert captured["kwargs"]["host"] == "::1"
    assert captured["kwargs"]["port"] == 6432
    assert adapter.description == "postgresql+psycopg2://u@[::1]:6432/db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://h/db?autocommit=maybe", "autocommit='maybe' is not a boolean"),
        ("mysql://h/db?port=abc", "port='abc' is not a number"),
        ("mysql://h:99999/db", "invalid port '99999'"),
        ("mysql://h1,h2/db", "takes one host"),
        ("sqlite://host/x.db", "sqlite URLs have no host"),
    ],
)
def test_bad_url_parts(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(url)


@pytest.mark.parametrize(
    ("url", "database", "description"),
    [
        ("sqlite:///relative/dir/x.db", "relative/dir/x.db", "sqlite:///relative/dir/x.db"),
        ("sqlite:////abs/dir/x.db", "/abs/dir/x.db", "sqlite:////abs/dir/x.db"),
        ("sqlite://", ":memory:", "sqlite:///:memory:"),
        ("sqlite:///:memory:", ":memory:", "sqlite:///:memory:"),
    ],
)
def test_sqlite_paths(captured: dict[str, Any], url: str, database: str, description: str) -> None:
    adapter = resolve(url)
    assert captured["kwargs"]["database"] == database
    assert adapter.description == description


def test_sqlite_params_and_uri_options(captured: dict[str, Any]) -> None:
    resolve("sqlite:///data/x.db?timeout=2.5&isolation_level=IMMEDIATE&mode=ro")
    assert captured["kwargs"] == {
        "database": "file:data/x.db?mode=ro",  # SQLite's own options need a file: URI
        "uri": True,
        "timeout": 2.5,
        "isolation_level": "IMMEDIATE",
    }
    resolve("sqlite:///x.db?isolation_level=None")
    assert captured["kwargs"]["isolation_level"] is None


# -- modules and callables ---------------------------------------------------------------------


def test_unknown_dbapi_module_gets_the_generic_adapter() -> None:
    calls: list[dict[str, Any]] = []
    sentinel = object()

    def connect(**kwargs: Any) -> object:
        calls.append(kwargs)
        return sentinel

    module = types.SimpleNamespace(
        __name__="fakedb", connect=connect, paramstyle="qmark",
        OperationalError=type("OperationalError", (Exception,), {}),
        InterfaceError=type("InterfaceError", (Exception,), {}),
    )  # fmt: skip
    adapter = resolve(module, {"host": "h", "user": "u", "password": "pw1", "database": "d"})
    assert type(adapter) is SyncAdapter
    assert adapter.connect() is sentinel
    assert calls == [{"host": "h", "user": "u", "password": "pw1", "database": "d"}]
    assert adapter.description == "fakedb://u@h/d"
    assert adapter.secrets == ("pw1",)
    assert adapter.is_disconnect(module.OperationalError("gone"))
    assert not adapter.is_disconnect(ValueError("no"))


def test_known_module_gets_its_own_adapter(sqlite_path: Any) -> None:
    import sqlite3
    import weakref

    adapter = resolve(sqlite3, {"database": str(sqlite_path)})
    assert type(adapter) is sqlite.SqliteAdapter
    conn: Any = adapter.connect()
    try:
        assert weakref.ref(conn)() is conn
    finally:
        adapter.close(conn)


def test_callable_target() -> None:
    sentinel = object()
    adapter = resolve(lambda: sentinel)
    assert type(adapter) is SyncAdapter
    assert adapter.connect() is sentinel
    assert adapter.description == "callable test_callable_target.<locals>.<lambda>"
    with pytest.raises(ConfigError, match="connect_kwargs cannot be used with a callable"):
        resolve(lambda: sentinel, {"host": "h"})


# -- passwords ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:Hunter2%2Fx@127.0.0.1:1/test?connect_timeout=2",
        "postgresql+psycopg2://app:Hunter2%2Fx@127.0.0.1:1/test?connect_timeout=2",
        "mysql+pymysql://app:Hunter2%2Fx@127.0.0.1:1/test?connect_timeout=2",
        "mysql+mysqlconnector://app:Hunter2%2Fx@127.0.0.1:1/test?connection_timeout=2",
    ],
)
def test_password_is_redacted_from_description_and_errors(url: str) -> None:
    adapter = resolve(url)
    scheme = url.partition("://")[0]
    assert adapter.description == f"{scheme}://app@127.0.0.1:1/test"
    assert "Hunter2" not in repr(adapter)
    assert set(adapter.secrets) == {"Hunter2/x", "Hunter2%2Fx"}
    with pytest.raises(Exception) as info:  # noqa: PT011 - each driver has its own class
        adapter.connect()  # port 1: connection refused
    assert "Hunter2" not in adapter.redact(str(info.value))
    # both spellings of the password are caught wherever a message might quote them
    redacted = adapter.redact(f"{url} and app:Hunter2/x")
    assert "Hunter2" not in redacted
    assert redacted.count("***") == 2


# -- laziness ----------------------------------------------------------------------------------


def test_resolving_imports_only_the_driver_named() -> None:
    code = (
        "import sys\n"
        "import millpond.drivers.url as url\n"
        "drivers = ('psycopg', 'psycopg2', 'pymysql', 'mysql', 'sqlite3')\n"
        "print(sorted(m for m in drivers if m in sys.modules))\n"
        "url.resolve('mysql://root@127.0.0.1/test')\n"
        "print(sorted(m for m in drivers if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "['pymysql']"]
