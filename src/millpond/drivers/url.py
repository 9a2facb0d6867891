"""Turn what the user hands ``Pool`` (a URL, a DB-API module or a callable) into an adapter.

URLs are looked up in the one scheme table, :mod:`millpond.drivers.targets`, which both pools
share. Nothing here imports a driver until a target names it, so ``import millpond`` works
with no driver installed and pays for none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from millpond.drivers import targets
from millpond.drivers.base import ConnectParams, SyncAdapter
from millpond.errors import ConfigError

__all__ = ["ASYNC_SCHEMES", "SCHEMES", "resolve"]

#: URL scheme -> driver key, for the synchronous Pool (the first installed of a scheme's)
SCHEMES: Mapping[str, str] = {
    name: scheme.sync[0] for name, scheme in targets.SCHEMES.items() if scheme.sync
}
#: schemes of asyncio drivers, which only an AsyncPool can drive
ASYNC_SCHEMES = frozenset(name for name in targets.SCHEMES if name not in SCHEMES)

# a DB-API module passed as the target, by __name__ -> the driver that knows it
_MODULE_DRIVERS: Mapping[str, str] = {
    d.library: d.key for d in targets.DRIVERS.values() if d.key in targets.SYNC_DRIVERS
}


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
        adapter: SyncAdapter = targets.adapter_for_url(
            target, kwargs, asyncio=False, server_pooler=server_pooler
        )
        return adapter
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


def _from_module(module: Any, kwargs: dict[str, Any], server_pooler: str | None) -> SyncAdapter:
    name = str(getattr(module, "__name__", type(module).__name__))
    description = targets.describe(
        name,
        kwargs.get("user") or kwargs.get("username"),
        kwargs.get("host"),
        kwargs.get("port"),
        kwargs.get("database") or kwargs.get("dbname") or kwargs.get("db"),
    )
    secrets = targets.secrets_of(None, kwargs)
    driver = _MODULE_DRIVERS.get(name)
    if driver is not None:
        # a driver we know gets its own adapter: sqlite3 in particular needs the
        # thread and weak-reference settings that a plain module.connect() lacks
        adapter: SyncAdapter = targets.build(
            targets.DRIVERS[driver], kwargs, description, secrets, server_pooler
        )
        return adapter

    params = ConnectParams(kwargs, secrets)

    def connect() -> Any:
        return params.call(module.connect)

    return SyncAdapter(connect, description=description, secrets=secrets, module=module)
