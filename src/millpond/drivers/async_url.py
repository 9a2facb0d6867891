"""Turn what the user hands ``AsyncPool`` (a URL, a coroutine function or an adapter) into an
:class:`~millpond.drivers.async_base.AsyncAdapter`.

Schemes and the driver each one picks:

* ``postgresql+asyncpg://``: asyncpg
* ``postgresql+psycopg://``, ``postgresql+psycopg_async://``: psycopg 3's ``AsyncConnection``
* ``postgresql://``: asyncpg if it is installed, else psycopg 3
* ``mysql+aiomysql://``, ``mariadb+aiomysql://``: aiomysql (``mysql+asyncmy://`` is refused
  as not supported yet)
* ``sqlite+aiosqlite:///path``: aiosqlite

``postgresql://`` prefers asyncpg because it is the faster of the two asyncio drivers (binary
protocol, statement cache) and the one most asyncio code is written against. The synchronous
``Pool`` reads the same URL as psycopg 3, so code that shares one URL between both pools gets
two different connection classes; spell the driver out (``postgresql+psycopg://`` works for
both) when that matters. ``postgres`` is accepted wherever ``postgresql`` is.

Nothing here imports a driver until a URL names it. The URL grammar (percent-decoding, hosts,
query parameters and their types, redaction) is shared with the synchronous resolver.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from millpond.drivers.async_base import AsyncAdapter
from millpond.drivers.base import SyncAdapter
from millpond.drivers.url import (
    _PG_ALIASES,
    _SQLITE_CONNECT_PARAMS,
    _URL,
    _convert,
    _describe,
    _installed,
    _parse,
    _secrets,
    _server_params,
)
from millpond.errors import ConfigError

__all__ = ["ASYNC_DRIVER_SCHEMES", "check_connect_kwargs", "resolve_async"]

#: URL scheme -> async driver key
ASYNC_DRIVER_SCHEMES: Mapping[str, str] = {
    "postgresql": "postgres",  # asyncpg if installed, else psycopg 3
    "postgres": "postgres",
    "postgresql+asyncpg": "asyncpg",
    "postgres+asyncpg": "asyncpg",
    "postgresql+psycopg": "psycopg_async",
    "postgres+psycopg": "psycopg_async",
    "postgresql+psycopg_async": "psycopg_async",
    "postgres+psycopg_async": "psycopg_async",
    "mysql+aiomysql": "aiomysql",
    "mariadb+aiomysql": "aiomysql",
    "sqlite+aiosqlite": "aiosqlite",
}

# schemes of synchronous drivers -> the asyncio scheme for the same database
_SYNC_ONLY: Mapping[str, str] = {
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgres+psycopg2": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mysql+pymysql": "mysql+aiomysql",
    "mysql+mysqlconnector": "mysql+aiomysql",
    "mariadb": "mariadb+aiomysql",
    "mariadb+pymysql": "mariadb+aiomysql",
    "mariadb+mysqlconnector": "mariadb+aiomysql",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
}

# known but not implemented yet: scheme -> what to use meanwhile
_NOT_YET: Mapping[str, str] = {
    "mysql+asyncmy": "mysql+aiomysql",
    "mariadb+asyncmy": "mariadb+aiomysql",
}

# driver key -> (module under millpond.drivers, adapter class, library, pip extra)
_ADAPTERS: Mapping[str, tuple[str, str, str, str]] = {
    "asyncpg": ("asyncpg", "AsyncpgAdapter", "asyncpg", "asyncpg"),
    "psycopg_async": ("psycopg_async", "PsycopgAsyncAdapter", "psycopg", "psycopg"),
    "aiomysql": ("aiomysql", "AiomysqlAdapter", "aiomysql", "aiomysql"),
    "aiosqlite": ("aiosqlite", "AiosqliteAdapter", "aiosqlite", "aiosqlite"),
}

# aiomysql spells the database "db" (PyMySQL says "database"); accept the common spellings
_AIOMYSQL_ALIASES = {"database": "db", "dbname": "db", "passwd": "password", "username": "user"}


def resolve_async(
    target: object,
    connect_kwargs: Mapping[str, Any] | None = None,
    *,
    server_pooler: str | None = None,
) -> AsyncAdapter:
    """The adapter for ``target``: a URL, a zero-argument coroutine function (or any callable
    returning an awaitable connection), or an :class:`AsyncAdapter`, returned as is.

    ``connect_kwargs`` go to the driver's connect function and override what the URL says.
    The adapter's ``description`` is the target without its password; its ``secrets`` hold
    every password it was given, for redacting messages. A password in ``connect_kwargs`` may
    be a zero-argument callable (or coroutine function), called at each connect;
    ``server_pooler`` adds what the driver needs behind that pooler unless the user said
    otherwise (see ``resolve``).
    """
    kwargs = dict(connect_kwargs or {})
    if isinstance(target, AsyncAdapter):
        if kwargs:
            raise ConfigError("connect_kwargs cannot be combined with a driver adapter instance")
        return target
    if isinstance(target, str):
        return _from_url(target, kwargs, server_pooler)
    if isinstance(target, SyncAdapter) or (
        callable(getattr(target, "connect", None)) and hasattr(target, "paramstyle")
    ):
        raise ConfigError(
            f"{type(target).__name__} is a synchronous driver: use millpond.Pool, or give "
            "AsyncPool an asyncio driver's URL or a coroutine function"
        )
    if callable(target):
        if kwargs:
            raise ConfigError(
                "connect_kwargs cannot be used with a callable target: it is called with no "
                "arguments, so bind them in it (functools.partial)"
            )
        return AsyncAdapter(target, description=f"callable {_callable_name(target)}")
    raise ConfigError(
        "the connection target must be a database URL, a zero-argument coroutine function "
        f"returning a connection, or an AsyncAdapter, got {type(target).__name__}"
    )


def _callable_name(target: Callable[..., Any]) -> str:
    inner = getattr(target, "func", target)  # functools.partial: name what it wraps
    return str(getattr(inner, "__qualname__", None) or type(inner).__name__)


def _from_url(text: str, kwargs: dict[str, Any], server_pooler: str | None = None) -> AsyncAdapter:
    scheme, sep, _rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or not scheme:
        raise ConfigError(
            "the connection target is not a database URL (expected scheme://...; "
            f"supported schemes: {_supported()})"
        )
    if scheme in _SYNC_ONLY:
        raise ConfigError(
            f"{scheme}:// is a synchronous driver's URL, which AsyncPool cannot drive: use "
            f"{_SYNC_ONLY[scheme]}:// (or millpond.Pool for {scheme}://)"
        )
    if scheme in _NOT_YET:
        raise ConfigError(f"{scheme}:// (asyncmy) is not supported yet: use {_NOT_YET[scheme]}://")
    driver = ASYNC_DRIVER_SCHEMES.get(scheme)
    if driver is None:
        raise ConfigError(f"unsupported URL scheme {scheme!r}; supported schemes: {_supported()}")
    if driver == "postgres":
        if _installed("asyncpg"):
            driver = "asyncpg"
        elif _installed("psycopg"):
            driver = "psycopg_async"
        else:
            raise ConfigError(
                f"{scheme}:// for AsyncPool needs asyncpg or psycopg 3 and neither is "
                "installed: pip install 'millpond[asyncpg]' (or 'millpond[psycopg]')"
            )
    # urlsplit() takes no "_" in a scheme (psycopg_async), and needs none: parse the rest
    url = _parse("db://" + text.partition("://")[2], scheme)
    if driver == "asyncpg":
        return _asyncpg(text, scheme, url, kwargs, server_pooler)
    if driver == "psycopg_async":
        params = _server_params(url, kwargs, "psycopg", database_key="dbname", aliases=_PG_ALIASES)
        return _build(
            driver, params, _pg_description(scheme, params), _secrets(url, params), server_pooler
        )
    if driver == "aiomysql":
        if len(url.hosts) > 1:
            raise ConfigError(f"{scheme}:// takes one host, got {len(url.hosts)}")
        # aiomysql mirrors PyMySQL's connect(), so PyMySQL's parameter types apply
        params = _server_params(
            url, kwargs, "pymysql", database_key="db", aliases=_AIOMYSQL_ALIASES
        )
        description = _describe(
            scheme, params.get("user"), params.get("host"), params.get("port"), params.get("db")
        )
        return _build(driver, params, description, _secrets(url, params), server_pooler)
    return _aiosqlite(url, kwargs)


def _asyncpg(
    text: str, scheme: str, url: _URL, kwargs: dict[str, Any], server_pooler: str | None = None
) -> AsyncAdapter:
    # asyncpg parses DSNs itself (several hosts, unix sockets, and query parameters it does
    # not know become server settings such as application_name), which no keyword form can
    # express; so it gets the URL under a scheme it accepts, and connect_kwargs on top.
    rest = text.partition("://")[2]
    params: dict[str, Any] = {"dsn": f"postgresql://{rest}", **kwargs}
    description = _describe(
        scheme,
        kwargs.get("user", url.user),
        kwargs.get("host", ",".join(h for h, _p in url.hosts) or None),
        kwargs.get("port", _ports(url)),
        kwargs.get("database", url.database),
    )
    secrets = _secrets(url, {**url.params, **kwargs})
    return _build("asyncpg", params, description, secrets, server_pooler)


def _ports(url: _URL) -> str | None:
    if not any(port is not None for _host, port in url.hosts):
        return None
    return ",".join("" if port is None else str(port) for _host, port in url.hosts)


def _pg_description(scheme: str, params: Mapping[str, Any]) -> str:
    return _describe(
        scheme, params.get("user"), params.get("host"), params.get("port"), params.get("dbname")
    )


def _aiosqlite(url: _URL, kwargs: dict[str, Any]) -> AsyncAdapter:
    if url.hosts or url.user or url.password is not None:
        raise ConfigError(
            "sqlite URLs have no host or user: use sqlite+aiosqlite:///relative/path, "
            "sqlite+aiosqlite:////absolute/path or sqlite+aiosqlite:// (in memory)"
        )
    path = url.database or ":memory:"
    params: dict[str, Any] = {}
    uri_params: dict[str, str] = {}
    for key, value in url.params.items():
        if key == "iter_chunk_size":  # aiosqlite's own option
            if not value.isdigit():
                raise ConfigError(f"{url.scheme}:// parameter {key}={value!r} is not a number")
            params[key] = int(value)
        elif key in _SQLITE_CONNECT_PARAMS:
            if key == "isolation_level" and value.lower() in ("none", "autocommit"):
                params[key] = None
            else:
                params[key] = _convert(key, value, "sqlite3", url.scheme)
        else:
            uri_params[key] = value
    if uri_params or path.startswith("file:"):
        # SQLite's own options (mode=ro, cache=shared, ...) exist only in a file: URI
        target = path if path.startswith("file:") else "file:" + quote(path)
        if uri_params:
            query = "&".join(f"{quote(k)}={quote(v)}" for k, v in uri_params.items())
            target += ("&" if "?" in target else "?") + query
        path = target
        params["uri"] = True
    params["database"] = path
    params.update(kwargs)
    description = f"{url.scheme}:///{params['database']}"
    return _build("aiosqlite", params, description, _secrets(url, params))


def _build(
    driver: str,
    params: Mapping[str, Any],
    description: str,
    secrets: tuple[str, ...],
    server_pooler: str | None = None,
) -> AsyncAdapter:
    module_name, class_name, library, extra = _ADAPTERS[driver]
    if not _installed(library):
        raise ConfigError(
            f"{description.partition('://')[0]}:// needs the {library!r} driver, which is not "
            f"installed: pip install 'millpond[{extra}]'"
        )
    adapter_module = importlib.import_module(f"millpond.drivers.{module_name}")
    adapter_class = getattr(adapter_module, class_name)
    if server_pooler is not None:
        params = {**adapter_class.server_pooler_kwargs(server_pooler), **params}
    adapter: AsyncAdapter = adapter_class.from_kwargs(
        params, description=description, secrets=secrets
    )
    return adapter


def check_connect_kwargs(
    connect: Callable[..., Any], params: Mapping[str, Any], driver: str
) -> None:
    """Refuse parameter names ``connect`` does not take, now rather than at the first connect
    (which happens in a background task, where a TypeError reads as "the server is down")."""
    try:
        signature = inspect.signature(connect)
    except (TypeError, ValueError):  # a builtin without a signature: let the driver judge
        return
    accepted = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return
    unknown = sorted(k for k in params if k not in accepted)
    if unknown:
        raise ConfigError(
            f"{driver} does not take the connect parameter(s) {', '.join(map(repr, unknown))}"
        )


def _supported() -> str:
    return ", ".join(f"{scheme}://" for scheme in ASYNC_DRIVER_SCHEMES)
