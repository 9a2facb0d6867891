"""The one table of database URLs: every scheme, the sync and the asyncio driver it picks, and
the URL grammar both pools share.

``Pool`` and ``AsyncPool`` both ask :func:`adapter_for_url`; they differ only in which column
of :data:`SCHEMES` they read. A scheme with nothing in a pool's column gets the same kind of
message from either pool: which pool it needs, and which scheme to use in this one.
``postgresql://`` means psycopg 3 (else psycopg2) to ``Pool`` and asyncpg (else psycopg 3) to
``AsyncPool``: asyncpg is the faster asyncio driver and the one most asyncio code is written
against. Spell the driver out (``postgresql+psycopg://`` works for both) where that matters.

Nothing here imports a driver until a URL names it, so ``import millpond`` works with no driver
installed and pays for none.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from millpond.drivers.base import is_secret_key
from millpond.errors import ConfigError

__all__ = [
    "ASYNC_DRIVERS",
    "DRIVERS",
    "SCHEMES",
    "SYNC_DRIVERS",
    "Driver",
    "ParsedURL",
    "Scheme",
    "adapter_for_url",
    "build",
    "convert",
    "describe",
    "installed",
    "parse_url",
    "pick_driver",
    "scheme_of",
    "secrets_of",
    "server_params",
    "sqlite_params",
    "supported",
]

_PG_ALIASES: Mapping[str, str] = {"database": "dbname", "username": "user"}
_MYSQL_ALIASES: Mapping[str, str] = {
    "db": "database", "dbname": "database", "passwd": "password", "username": "user",
}  # fmt: skip
# aiomysql and mysqlclient spell the database "db"
_MYSQL_DB_ALIASES: Mapping[str, str] = {
    "database": "db", "dbname": "db", "passwd": "password", "username": "user",
}  # fmt: skip

# Query-string values arrive as text; these parameters are converted for the drivers that
# check types (PyMySQL rejects a str port, sqlite3 a str timeout). libpq reads every
# parameter as text, so PostgreSQL needs only psycopg's own Python-side options converted.
_PYMYSQL_BOOLS = frozenset(
    {"autocommit", "local_infile", "ssl_disabled", "ssl_verify_cert", "ssl_verify_identity",
     "binary_prefix", "use_unicode", "defer_connect"}
)  # fmt: skip
_PYMYSQL_NUMBERS = frozenset(
    {"port", "connect_timeout", "read_timeout", "write_timeout", "client_flag",
     "max_allowed_packet"}
)  # fmt: skip
# everything sqlite3.connect() accepts; other sqlite query parameters go into a file: URI
_SQLITE_CONNECT = frozenset(
    {"timeout", "detect_types", "isolation_level", "check_same_thread", "cached_statements",
     "uri", "autocommit"}
)  # fmt: skip
_SQLITE_NUMBERS = frozenset({"timeout", "detect_types", "cached_statements"})


@dataclass(frozen=True)
class Driver:
    """One driver adapter and how a URL becomes its ``connect()`` arguments."""

    key: str
    label: str  # as people call it, in messages
    module: str  # the adapter's module under millpond.drivers
    adapter: str  # its class
    library: str  # what a user installs (the import name)
    extra: str | None  # the pip extra that installs it
    #: "server": URL parts become keywords; "dsn": the driver parses the URL itself;
    #: "sqlite": the path becomes a database argument
    shape: str = "server"
    database_key: str = "database"
    aliases: Mapping[str, str] = field(default_factory=dict)
    bools: frozenset[str] = frozenset()
    numbers: frozenset[str] = frozenset()
    one_host: bool = False  # libpq takes host lists; the MySQL drivers take one host
    connect_params: frozenset[str] = frozenset()  # sqlite: what goes to connect(), not the URI


DRIVERS: Mapping[str, Driver] = {
    d.key: d
    for d in (
        Driver(
            "psycopg", "psycopg 3", "psycopg", "PsycopgAdapter", "psycopg", "psycopg",
            database_key="dbname", aliases=_PG_ALIASES, bools=frozenset({"autocommit"}),
            numbers=frozenset({"port", "connect_timeout", "prepare_threshold"}),
        ),
        Driver(
            "psycopg2", "psycopg2", "psycopg2", "Psycopg2Adapter", "psycopg2", "psycopg2",
            database_key="dbname", aliases=_PG_ALIASES,
            numbers=frozenset({"port", "connect_timeout"}),
        ),
        Driver(
            "pymysql", "PyMySQL", "pymysql", "PyMySQLAdapter", "pymysql", "pymysql",
            aliases=_MYSQL_ALIASES, bools=_PYMYSQL_BOOLS, numbers=_PYMYSQL_NUMBERS, one_host=True,
        ),
        Driver(
            "mysqlconnector", "mysql-connector", "mysqlconnector", "MySQLConnectorAdapter",
            "mysql.connector", "mysql", aliases=_MYSQL_ALIASES, one_host=True,
            bools=frozenset(
                {"autocommit", "use_pure", "ssl_disabled", "ssl_verify_cert",
                 "ssl_verify_identity", "raise_on_warnings", "buffered", "raw", "get_warnings",
                 "consume_results", "compress", "allow_local_infile", "use_unicode",
                 "force_ipv6"}
            ),
            numbers=frozenset(
                {"port", "connection_timeout", "connect_timeout", "read_timeout",
                 "write_timeout", "client_flags"}
            ),
        ),
        Driver(
            "mysqldb", "mysqlclient", "mysqldb", "MySQLdbAdapter", "MySQLdb", "mysqlclient",
            database_key="db", aliases=_MYSQL_DB_ALIASES, one_host=True,
            bools=frozenset({"autocommit", "local_infile", "use_unicode"}),
            numbers=frozenset(
                {"port", "connect_timeout", "read_timeout", "write_timeout", "client_flag"}
            ),
        ),
        Driver(
            "sqlite3", "sqlite3", "sqlite", "SqliteAdapter", "sqlite3", None, shape="sqlite",
            bools=frozenset({"check_same_thread", "uri", "autocommit"}),
            numbers=_SQLITE_NUMBERS, connect_params=_SQLITE_CONNECT,
        ),
        Driver("asyncpg", "asyncpg", "asyncpg", "AsyncpgAdapter", "asyncpg", "asyncpg", shape="dsn"),
        Driver(
            "psycopg_async", "psycopg 3", "psycopg_async", "PsycopgAsyncAdapter", "psycopg",
            "psycopg", database_key="dbname", aliases=_PG_ALIASES,
            bools=frozenset({"autocommit"}),
            numbers=frozenset({"port", "connect_timeout", "prepare_threshold"}),
        ),
        Driver(
            # aiomysql mirrors PyMySQL's connect(), so PyMySQL's parameter types apply
            "aiomysql", "aiomysql", "aiomysql", "AiomysqlAdapter", "aiomysql", "aiomysql",
            database_key="db", aliases=_MYSQL_DB_ALIASES, bools=_PYMYSQL_BOOLS,
            numbers=_PYMYSQL_NUMBERS, one_host=True,
        ),
        Driver(
            "aiosqlite", "aiosqlite", "aiosqlite", "AiosqliteAdapter", "aiosqlite", "aiosqlite",
            shape="sqlite", bools=frozenset({"check_same_thread", "uri", "autocommit"}),
            numbers=_SQLITE_NUMBERS | {"iter_chunk_size"},
            connect_params=_SQLITE_CONNECT | {"iter_chunk_size"},
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Scheme:
    """A URL scheme: the drivers each pool may pick for it, first installed wins."""

    name: str
    family: str  # "postgresql", "mysql", "mariadb", "sqlite": for the other pool's advice
    sync: tuple[str, ...] = ()
    asyncio: tuple[str, ...] = ()
    not_yet: str | None = None  # a driver we know of but do not support yet


def _schemes() -> dict[str, Scheme]:
    table: dict[str, Scheme] = {}

    def add(names: Iterable[str], family: str, **drivers: Any) -> None:
        for name in names:
            table[name] = Scheme(name, family, **drivers)

    for pg in ("postgresql", "postgres"):
        add([pg], "postgresql", sync=("psycopg", "psycopg2"), asyncio=("asyncpg", "psycopg_async"))
        add([f"{pg}+psycopg"], "postgresql", sync=("psycopg",), asyncio=("psycopg_async",))
        add([f"{pg}+psycopg2"], "postgresql", sync=("psycopg2",))
        add([f"{pg}+psycopg_async"], "postgresql", asyncio=("psycopg_async",))
        add([f"{pg}+asyncpg"], "postgresql", asyncio=("asyncpg",))
    for my in ("mysql", "mariadb"):
        add([my, f"{my}+pymysql"], my, sync=("pymysql",))
        add([f"{my}+mysqlconnector"], my, sync=("mysqlconnector",))
        add([f"{my}+mysqldb"], my, sync=("mysqldb",))
        add([f"{my}+aiomysql"], my, asyncio=("aiomysql",))
        add([f"{my}+asyncmy"], my, not_yet="asyncmy")
    add(["sqlite", "sqlite+pysqlite"], "sqlite", sync=("sqlite3",))
    add(["sqlite+aiosqlite"], "sqlite", asyncio=("aiosqlite",))
    return table


#: every URL scheme either pool knows
SCHEMES: Mapping[str, Scheme] = _schemes()
#: the drivers behind Pool, and those behind AsyncPool
SYNC_DRIVERS = frozenset(key for scheme in SCHEMES.values() for key in scheme.sync)
ASYNC_DRIVERS = frozenset(key for scheme in SCHEMES.values() for key in scheme.asyncio)

# the scheme to suggest for a family, to the pool that cannot use the one given
_ADVICE: Mapping[tuple[str, bool], str] = {
    ("postgresql", False): "postgresql+psycopg://",
    ("postgresql", True): "postgresql+asyncpg://",
    ("mysql", False): "mysql://",
    ("mysql", True): "mysql+aiomysql://",
    ("mariadb", False): "mariadb://",
    ("mariadb", True): "mariadb+aiomysql://",
    ("sqlite", False): "sqlite:///path",
    ("sqlite", True): "sqlite+aiosqlite:///path",
}


def _pool_name(asyncio: bool) -> str:
    return "millpond.AsyncPool" if asyncio else "millpond.Pool"


def supported(asyncio: bool) -> str:
    """The schemes one pool takes, for messages."""
    names = [s.name for s in SCHEMES.values() if (s.asyncio if asyncio else s.sync)]
    return ", ".join(f"{name}://" for name in names)


def scheme_of(text: str, asyncio: bool) -> Scheme:
    """The table's entry for ``text``'s scheme, or a ConfigError saying what to use instead."""
    name, sep, _rest = text.partition("://")
    name = name.lower()
    if not sep or not name:
        raise ConfigError(
            "the connection target is not a database URL (expected scheme://...; "
            f"supported schemes: {supported(asyncio)})"
        )
    scheme = SCHEMES.get(name)
    if scheme is None:
        raise ConfigError(
            f"unsupported URL scheme {name!r}; supported schemes: {supported(asyncio)}"
        )
    if scheme.not_yet is not None:
        raise ConfigError(
            f"{name}:// ({scheme.not_yet}) is not supported yet: use "
            f"{_ADVICE[scheme.family, True]} with millpond.AsyncPool "
            f"(or {_ADVICE[scheme.family, False]} with millpond.Pool)"
        )
    if not (scheme.asyncio if asyncio else scheme.sync):
        kind = "a synchronous" if asyncio else "an asyncio"
        raise ConfigError(
            f"{name}:// is {kind} driver's URL: it needs {_pool_name(not asyncio)}, not "
            f"{_pool_name(asyncio)} (for {_pool_name(asyncio)} use {_ADVICE[scheme.family, asyncio]})"
        )
    return scheme


def pick_driver(scheme: Scheme, asyncio: bool) -> Driver:
    """The first installed driver the scheme names for this pool."""
    candidates = [DRIVERS[key] for key in (scheme.asyncio if asyncio else scheme.sync)]
    for driver in candidates:
        if installed(driver.library):
            return driver
    if len(candidates) == 1:
        return candidates[0]  # building it says which package to install
    labels = " or ".join(d.label for d in candidates)
    extras = [d.extra for d in candidates if d.extra]
    hint = f"pip install 'millpond[{extras[0]}]'"
    if len(extras) > 1 and asyncio:
        hint += "".join(f" (or 'millpond[{e}]')" for e in extras[1:])
    raise ConfigError(
        f"{scheme.name}:// for {_pool_name(asyncio)} needs {labels} and neither is "
        f"installed: {hint}"
    )


def installed(library: str) -> bool:
    try:
        return importlib.util.find_spec(library) is not None
    except (ImportError, ValueError):  # a parent package missing, or an import blocked
        return False


# -- the URL grammar -------------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass
class ParsedURL:
    scheme: str
    user: str | None = None
    password: str | None = None
    hosts: list[tuple[str, int | None]] = field(default_factory=list)
    database: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    raw_password: str | None = None  # as written, percent-encoded: it can leak in that form too


def parse_url(text: str, scheme: str) -> ParsedURL:
    """``text`` taken apart, percent-decoded. Errors quote no part of a password."""
    rest = text.partition("://")[2]
    authority = rest
    for stop in "/?#":
        authority = authority.partition(stop)[0]
    if "@" not in authority and "@" in rest[len(authority) :] and not scheme.startswith("sqlite"):
        # A "/", "?" or "#" in the password ends the authority early (RFC 3986), so the rest
        # of the password would be read as a port, a database or a fragment, and quoted in
        # errors and logs. The URL is ambiguous: say so, and quote none of it.
        raise ConfigError(
            f"the {scheme}:// URL has an '@' after a '/', '?' or '#': if the password contains "
            "one of those characters, percent-encode the password (/ is %2F, ? is %3F, # is "
            "%23, @ is %40; urllib.parse.quote(password, safe='') does it); an '@' meant in "
            "the database name or a parameter is written %40"
        )
    try:
        # urlsplit() takes no "_" in a scheme (psycopg_async), and needs none
        parts = urlsplit("db://" + rest)
    except ValueError as exc:  # bracket mismatch and the like; the message has no password
        raise ConfigError(f"malformed {scheme}:// URL: {exc}") from None
    url = ParsedURL(scheme=scheme)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
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
        if not port_text.isdigit():
            # not quoted: without a "@", "user:password" reads as "host:port"
            raise ConfigError(
                f"invalid port in {scheme}:// URL: not a number (a password must follow "
                "'user:' and precede '@')"
            )
        if not 0 < int(port_text) < 65536:
            raise ConfigError(f"invalid port {port_text!r} in {scheme}:// URL")
        port = int(port_text)
    return unquote(host), port


def convert(key: str, value: str, driver: Driver, scheme: str) -> Any:
    """A query-string value as the type ``driver`` checks for."""
    if key in driver.bools:
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{scheme}:// parameter {key}={value!r} is not a boolean (true/false)")
    if key in driver.numbers:
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


def server_params(url: ParsedURL, kwargs: Mapping[str, Any], driver: Driver) -> dict[str, Any]:
    """Keyword arguments for a server driver: the URL's parts, then ``kwargs`` over them."""
    if driver.one_host and len(url.hosts) > 1:
        raise ConfigError(f"{url.scheme}:// takes one host, got {len(url.hosts)}")
    aliases = driver.aliases
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
        params[driver.database_key] = url.database
    for key, value in url.params.items():
        params[aliases.get(key, key)] = convert(key, value, driver, url.scheme)
    for key, value in kwargs.items():
        params[aliases.get(key, key)] = value
    return params


def sqlite_params(url: ParsedURL, kwargs: Mapping[str, Any], driver: Driver) -> dict[str, Any]:
    """``sqlite:///relative``, ``sqlite:////absolute``, ``sqlite://`` (memory); SQLite's own
    options (``mode=ro``, ``cache=shared``...) go into a ``file:`` URI."""
    if url.hosts or url.user or url.password is not None:
        raise ConfigError(
            f"sqlite URLs have no host or user: use {url.scheme}:///relative/path, "
            f"{url.scheme}:////absolute/path or {url.scheme}:// (in memory)"
        )
    path = url.database or ":memory:"
    params: dict[str, Any] = {}
    uri_params: dict[str, str] = {}
    for key, value in url.params.items():
        if key in driver.connect_params:
            if key == "isolation_level" and value.lower() in ("none", "autocommit"):
                params[key] = None
            else:
                params[key] = convert(key, value, driver, url.scheme)
        else:
            uri_params[key] = value
    if uri_params or path.startswith("file:"):
        target = path if path.startswith("file:") else "file:" + quote(path)
        if uri_params:
            query = "&".join(f"{quote(k)}={quote(v)}" for k, v in uri_params.items())
            target += ("&" if "?" in target else "?") + query
        path = target
        params["uri"] = True
    params["database"] = path
    params.update(kwargs)
    return params


def describe(scheme: str, user: Any, host: Any, port: Any, database: Any) -> str:
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


def secrets_of(url: ParsedURL | None, params: Mapping[str, Any]) -> tuple[str, ...]:
    """Every password among the URL and ``params``, in both spellings, for redaction."""
    found: list[str] = []
    if url is not None:
        found += [s for s in (url.password, url.raw_password) if s]
    for key, value in params.items():
        # a callable password is not a string we keep: ConnectParams scrubs what it returns
        if isinstance(value, str) and value and is_secret_key(key):
            found.append(value)
    return tuple(dict.fromkeys(found))


# -- from a URL to an adapter ------------------------------------------------------------------


def adapter_for_url(
    text: str, kwargs: Mapping[str, Any], *, asyncio: bool, server_pooler: str | None = None
) -> Any:
    """The adapter ``text`` names for one pool (a SyncAdapter, or an AsyncAdapter when
    ``asyncio``), built with ``kwargs`` over what the URL says."""
    scheme = scheme_of(text, asyncio)
    driver = pick_driver(scheme, asyncio)
    url = parse_url(text, scheme.name)
    if driver.shape == "sqlite":
        params = sqlite_params(url, kwargs, driver)
        description = f"{url.scheme}:///{params['database']}"
        return build(driver, params, description, secrets_of(url, params))
    if driver.shape == "dsn":
        # asyncpg parses DSNs itself (several hosts, unix sockets, and query parameters it does
        # not know become server settings such as application_name), which no keyword form can
        # express; so it gets the URL under a scheme it accepts, and kwargs on top.
        params = {"dsn": f"postgresql://{text.partition('://')[2]}", **kwargs}
        description = describe(
            scheme.name,
            kwargs.get("user", url.user),
            kwargs.get("host", ",".join(h for h, _p in url.hosts) or None),
            kwargs.get("port", _ports(url)),
            kwargs.get("database", url.database),
        )
        secrets = secrets_of(url, {**url.params, **kwargs})
        return build(driver, params, description, secrets, server_pooler)
    params = server_params(url, kwargs, driver)
    description = describe(
        scheme.name,
        params.get("user"),
        params.get("host"),
        params.get("port"),
        params.get(driver.database_key),
    )
    return build(driver, params, description, secrets_of(url, params), server_pooler)


def _ports(url: ParsedURL) -> str | None:
    if not any(port is not None for _host, port in url.hosts):
        return None
    return ",".join("" if port is None else str(port) for _host, port in url.hosts)


def build(
    driver: Driver,
    params: Mapping[str, Any],
    description: str,
    secrets: Iterable[str],
    server_pooler: str | None = None,
) -> Any:
    """Import ``driver``'s adapter (not before: that imports the driver) and build it."""
    if not installed(driver.library):
        hint = f": pip install 'millpond[{driver.extra}]'" if driver.extra else ""
        raise ConfigError(f"the {driver.library!r} driver is not installed{hint}")
    adapter_module = importlib.import_module(f"millpond.drivers.{driver.module}")
    adapter_class = getattr(adapter_module, driver.adapter)
    if server_pooler is not None:
        params = {**adapter_class.server_pooler_kwargs(server_pooler), **params}
    return adapter_class.from_kwargs(params, description=description, secrets=secrets)
