"""Turn what the user hands ``Pool`` (a URL, a DB-API module or a callable) into an adapter.

Nothing here imports a driver until a target names it, so ``import millpond`` works with no
driver installed and pays for none.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from millpond.drivers.base import ConnectParams, SyncAdapter, is_secret_key
from millpond.errors import ConfigError

__all__ = ["ASYNC_SCHEMES", "SCHEMES", "resolve"]

#: URL scheme -> driver key, for the synchronous Pool
SCHEMES: Mapping[str, str] = {
    "postgresql": "postgres",  # psycopg 3 if installed, else psycopg2
    "postgres": "postgres",
    "postgresql+psycopg": "psycopg",
    "postgres+psycopg": "psycopg",
    "postgresql+psycopg2": "psycopg2",
    "postgres+psycopg2": "psycopg2",
    "mysql": "pymysql",
    "mysql+pymysql": "pymysql",
    "mariadb": "pymysql",
    "mariadb+pymysql": "pymysql",
    "mysql+mysqlconnector": "mysqlconnector",
    "mariadb+mysqlconnector": "mysqlconnector",
    "sqlite": "sqlite3",
    "sqlite+pysqlite": "sqlite3",
}

#: schemes of asyncio drivers, which only an AsyncPool can drive
ASYNC_SCHEMES = frozenset(
    {
        "postgresql+asyncpg",
        "postgres+asyncpg",
        "postgresql+psycopg_async",
        "mysql+aiomysql",
        "mariadb+aiomysql",
        "mysql+asyncmy",
        "sqlite+aiosqlite",
    }
)

# driver key -> (module under millpond.drivers, adapter class, driver library to import)
_ADAPTERS: Mapping[str, tuple[str, str, str]] = {
    "psycopg": ("psycopg", "PsycopgAdapter", "psycopg"),
    "psycopg2": ("psycopg2", "Psycopg2Adapter", "psycopg2"),
    "pymysql": ("pymysql", "PyMySQLAdapter", "pymysql"),
    "mysqlconnector": ("mysqlconnector", "MySQLConnectorAdapter", "mysql.connector"),
    "sqlite3": ("sqlite", "SqliteAdapter", "sqlite3"),
}

# a DB-API module passed as the target, by __name__ -> the adapter that knows it
_MODULE_DRIVERS: Mapping[str, str] = {
    "psycopg": "psycopg",
    "psycopg2": "psycopg2",
    "pymysql": "pymysql",
    "mysql.connector": "mysqlconnector",
    "sqlite3": "sqlite3",
}

# Query-string values arrive as text; these parameters are converted for the drivers that
# check types (PyMySQL rejects a str port, sqlite3 a str timeout). libpq reads every
# parameter as text, so PostgreSQL needs only psycopg's own Python-side options converted.
_BOOL_PARAMS: Mapping[str, frozenset[str]] = {
    "psycopg": frozenset({"autocommit"}),
    "psycopg2": frozenset(),
    "pymysql": frozenset(
        {
            "autocommit", "local_infile", "ssl_disabled", "ssl_verify_cert",
            "ssl_verify_identity", "binary_prefix", "use_unicode", "defer_connect",
        }
    ),
    "mysqlconnector": frozenset(
        {
            "autocommit", "use_pure", "ssl_disabled", "ssl_verify_cert", "ssl_verify_identity",
            "raise_on_warnings", "buffered", "raw", "get_warnings", "consume_results",
            "compress", "allow_local_infile", "use_unicode", "force_ipv6",
        }
    ),
    "sqlite3": frozenset({"check_same_thread", "uri", "autocommit"}),
}  # fmt: skip
_NUMBER_PARAMS: Mapping[str, frozenset[str]] = {
    "psycopg": frozenset({"port", "connect_timeout", "prepare_threshold"}),
    "psycopg2": frozenset({"port", "connect_timeout"}),
    "pymysql": frozenset(
        {"port", "connect_timeout", "read_timeout", "write_timeout", "client_flag",
         "max_allowed_packet"}
    ),
    "mysqlconnector": frozenset(
        {"port", "connection_timeout", "connect_timeout", "read_timeout", "write_timeout",
         "client_flags"}
    ),
    "sqlite3": frozenset({"timeout", "detect_types", "cached_statements"}),
}  # fmt: skip
# everything sqlite3.connect() accepts; other sqlite query parameters go into a file: URI
_SQLITE_CONNECT_PARAMS = frozenset(
    {"timeout", "detect_types", "isolation_level", "check_same_thread", "cached_statements",
     "uri", "autocommit"}
)  # fmt: skip

# connect_kwargs spellings that mean the same parameter, per driver family
_PG_ALIASES = {"database": "dbname", "username": "user"}
_MYSQL_ALIASES = {"db": "database", "dbname": "database", "passwd": "password", "username": "user"}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def resolve(
    target: object,
    connect_kwargs: Mapping[str, Any] | None = None,
    *,
    server_pooler: str | None = None,
) -> SyncAdapter:
    """The adapter for ``target``: a URL, a DB-API 2.0 module or a zero-argument callable.

    ``connect_kwargs`` are passed to the driver's ``connect()`` and override what the URL says;
    a password among them may be a zero-argument callable, called at each connect.
    ``server_pooler`` adds what the driver needs behind that pooler (see
    ``SyncAdapter.server_pooler_kwargs``) where the user did not say otherwise; a callable
    target is the user's to configure. Every adapter's ``description`` is the target without
    its password, and its ``secrets`` hold every password it was given, for redacting messages.
    """
    kwargs = dict(connect_kwargs or {})
    if isinstance(target, str):
        return _from_url(target, kwargs, server_pooler)
    if callable(getattr(target, "connect", None)) and hasattr(target, "paramstyle"):
        return _from_module(target, kwargs, server_pooler)
    if callable(target):
        if kwargs:
            raise ConfigError(
                "connect_kwargs cannot be used with a callable target: it is called with no "
                "arguments, so bind them in it (functools.partial)"
            )
        name = getattr(target, "__qualname__", None) or type(target).__name__
        return SyncAdapter(target, description=f"callable {name}")
    raise ConfigError(
        "the connection target must be a database URL, a DB-API 2.0 module or a "
        f"zero-argument callable returning a connection, got {type(target).__name__}"
    )


# -- URLs ------------------------------------------------------------------------------------


@dataclass
class _URL:
    scheme: str
    user: str | None = None
    password: str | None = None
    hosts: list[tuple[str, int | None]] = field(default_factory=list)
    database: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    raw_password: str | None = None  # as written, percent-encoded: it can leak in that form too


def _from_url(text: str, kwargs: dict[str, Any], server_pooler: str | None = None) -> SyncAdapter:
    scheme, sep, _rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or not scheme:
        raise ConfigError(
            "the connection target is not a database URL (expected scheme://...; "
            f"supported schemes: {_supported()})"
        )
    if scheme in ASYNC_SCHEMES:
        raise ConfigError(
            f"{scheme!r} is an asyncio driver: it needs millpond.AsyncPool, not millpond.Pool "
            "(for the synchronous Pool use e.g. 'postgresql+psycopg://', 'mysql://' or "
            "'sqlite:///path')"
        )
    driver = SCHEMES.get(scheme)
    if driver is None:
        raise ConfigError(f"unsupported URL scheme {scheme!r}; supported schemes: {_supported()}")
    url = _parse(text, scheme)
    if driver == "sqlite3":
        return _sqlite(url, kwargs)
    if driver == "postgres":
        driver = "psycopg" if _installed("psycopg") or not _installed("psycopg2") else "psycopg2"
        if not _installed(driver):
            raise ConfigError(
                f"{scheme}:// needs psycopg 3 or psycopg2 and neither is installed: "
                "pip install 'millpond[psycopg]'"
            )
    if driver in ("psycopg", "psycopg2"):
        params = _server_params(url, kwargs, driver, database_key="dbname", aliases=_PG_ALIASES)
    else:
        if len(url.hosts) > 1:
            raise ConfigError(f"{scheme}:// takes one host, got {len(url.hosts)}")
        params = _server_params(
            url, kwargs, driver, database_key="database", aliases=_MYSQL_ALIASES
        )
    description = _describe(
        scheme,
        params.get("user"),
        params.get("host"),
        params.get("port"),
        params.get("dbname", params.get("database")),
    )
    return _build(driver, params, description, _secrets(url, params), server_pooler)


def _parse(text: str, scheme: str) -> _URL:
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # bracket mismatch and the like; the message has no password
        raise ConfigError(f"malformed {scheme}:// URL: {exc}") from exc
    url = _URL(scheme=scheme)
    netloc = parts.netloc
    userinfo, at, hostlist = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        url.user = unquote(user) or None
        if colon:
            url.password = unquote(password)
            url.raw_password = password
    for item in hostlist.split(",") if hostlist else ():
        url.hosts.append(_host_port(item, scheme))
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    url.database = unquote(path) or None
    url.params = dict(parse_qsl(parts.query, keep_blank_values=True))
    return url


def _host_port(item: str, scheme: str) -> tuple[str, int | None]:
    if item.startswith("["):  # [IPv6]:port
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"malformed IPv6 host in {scheme}:// URL")
        port_text = rest[1:]
    else:
        host, _colon, port_text = item.partition(":")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"invalid port {port_text!r} in {scheme}:// URL")
        port = int(port_text)
    return unquote(host), port


def _server_params(
    url: _URL,
    kwargs: dict[str, Any],
    driver: str,
    *,
    database_key: str,
    aliases: Mapping[str, str],
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if url.user is not None:
        params["user"] = url.user
    if url.password is not None:
        params["password"] = url.password
    if len(url.hosts) == 1:
        host, port = url.hosts[0]
        if host:
            params["host"] = host
        if port is not None:
            params["port"] = port
    elif url.hosts:  # libpq's multi-host form: comma lists, tried in order
        params["host"] = ",".join(host for host, _port in url.hosts)
        if any(port is not None for _host, port in url.hosts):
            params["port"] = ",".join("" if port is None else str(port) for _h, port in url.hosts)
    if url.database is not None:
        params[database_key] = url.database
    for key, value in url.params.items():
        params[aliases.get(key, key)] = _convert(key, value, driver, url.scheme)
    for key, value in kwargs.items():
        params[aliases.get(key, key)] = value
    return params


def _convert(key: str, value: str, driver: str, scheme: str) -> Any:
    if key in _BOOL_PARAMS[driver]:
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{scheme}:// parameter {key}={value!r} is not a boolean (true/false)")
    if key in _NUMBER_PARAMS[driver]:
        try:
            return int(value)
        except ValueError:
            pass
        try:
            return float(value)
        except ValueError:
            if key == "prepare_threshold" and value.lower() == "none":
                return None  # psycopg: never prepare
            raise ConfigError(f"{scheme}:// parameter {key}={value!r} is not a number") from None
    return value


def _sqlite(url: _URL, kwargs: dict[str, Any]) -> SyncAdapter:
    if url.hosts or url.user or url.password is not None:
        raise ConfigError(
            "sqlite URLs have no host or user: use sqlite:///relative/path, "
            "sqlite:////absolute/path or sqlite:// (in memory)"
        )
    path = url.database or ":memory:"
    params: dict[str, Any] = {}
    uri_params: dict[str, str] = {}
    for key, value in url.params.items():
        if key in _SQLITE_CONNECT_PARAMS:
            if key == "isolation_level" and value.lower() in ("none", "autocommit"):
                params[key] = None
            else:
                params[key] = _convert(key, value, "sqlite3", url.scheme)
        else:
            uri_params[key] = value
    if uri_params or path.startswith("file:"):
        # SQLite's own options (mode=ro, cache=shared, ...) only exist in a file: URI
        target = path if path.startswith("file:") else "file:" + quote(path)
        if uri_params:
            query = "&".join(f"{quote(k)}={quote(v)}" for k, v in uri_params.items())
            target += ("&" if "?" in target else "?") + query
        path = target
        params["uri"] = True
    params["database"] = path
    params.update(kwargs)
    description = f"{url.scheme}:///{params['database']}"
    return _build("sqlite3", params, description, _secrets(url, params))


# -- DB-API modules --------------------------------------------------------------------------


def _from_module(
    module: Any, kwargs: dict[str, Any], server_pooler: str | None = None
) -> SyncAdapter:
    name = str(getattr(module, "__name__", type(module).__name__))
    description = _describe(
        name,
        kwargs.get("user") or kwargs.get("username"),
        kwargs.get("host"),
        kwargs.get("port"),
        kwargs.get("database") or kwargs.get("dbname") or kwargs.get("db"),
    )
    secrets = _secrets(None, kwargs)
    driver = _MODULE_DRIVERS.get(name)
    if driver is not None:
        # a driver we know gets its own adapter: sqlite3 in particular needs the
        # thread and weak-reference settings that a plain module.connect() lacks
        return _build(driver, kwargs, description, secrets, server_pooler)

    params = ConnectParams(kwargs, secrets)

    def connect() -> Any:
        return params.call(module.connect)

    return SyncAdapter(connect, description=description, secrets=secrets, module=module)


# -- shared ----------------------------------------------------------------------------------


def _build(
    driver: str,
    params: Mapping[str, Any],
    description: str,
    secrets: Iterable[str],
    server_pooler: str | None = None,
) -> SyncAdapter:
    module_name, class_name, _library = _ADAPTERS[driver]
    adapter_module = importlib.import_module(f"millpond.drivers.{module_name}")
    adapter_class = getattr(adapter_module, class_name)
    if server_pooler is not None:
        params = {**adapter_class.server_pooler_kwargs(server_pooler), **params}
    adapter: SyncAdapter = adapter_class.from_kwargs(
        params, description=description, secrets=secrets
    )
    return adapter


def _installed(library: str) -> bool:
    try:
        return importlib.util.find_spec(library) is not None
    except (ImportError, ValueError):  # a parent package missing, or an import blocked
        return False


def _describe(scheme: str, user: Any, host: Any, port: Any, database: Any) -> str:
    """``scheme://user@host:port/database``: the target as a reader needs it, no password."""
    netloc = ""
    if user:
        netloc = quote(str(user), safe="") + "@"
    if host:
        hosts = str(host).split(",")
        ports = str(port).split(",") if port not in (None, "") else []
        if len(ports) == len(hosts) > 1:
            netloc += ",".join(f"{h}:{p}" if p else h for h, p in zip(hosts, ports, strict=True))
        else:
            netloc += f"[{host}]" if ":" in str(host) and "," not in str(host) else str(host)
            if ports:
                netloc += f":{port}"
    elif port not in (None, ""):
        netloc += f":{port}"
    return f"{scheme}://{netloc}/{database or ''}"


def _secrets(url: _URL | None, params: Mapping[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    if url is not None:
        found += [s for s in (url.password, url.raw_password) if s]
    for key, value in params.items():
        # a callable password is not a string we keep: ConnectParams scrubs what it returns
        if isinstance(value, str) and value and is_secret_key(key):
            found.append(value)
    return tuple(dict.fromkeys(found))


def _supported() -> str:
    return ", ".join(f"{scheme}://" for scheme in SCHEMES)
