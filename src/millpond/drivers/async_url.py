"""Turn what the user hands ``AsyncPool`` (a URL, a coroutine function or an adapter) into an
:class:`~millpond.drivers.async_base.AsyncAdapter`.

Schemes and the driver each one picks (the table, shared with ``Pool``, is
:mod:`millpond.drivers.targets`):

* ``postgresql+asyncpg://``: asyncpg
* ``postgresql+psycopg://``, ``postgresql+psycopg_async://``: psycopg 3's ``AsyncConnection``
* ``postgresql://``: asyncpg if it is installed, else psycopg 3
* ``mysql+aiomysql://``, ``mariadb+aiomysql://``: aiomysql (``mysql+asyncmy://`` is refused
  as not supported yet)
* ``sqlite+aiosqlite:///path``: aiosqlite

``postgres`` is accepted wherever ``postgresql`` is. A synchronous driver's URL is refused
with the asyncio scheme to use instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from millpond.drivers import targets
from millpond.drivers.async_base import AsyncAdapter
from millpond.drivers.base import SyncAdapter
from millpond.errors import ConfigError

__all__ = ["ASYNC_DRIVER_SCHEMES", "check_connect_kwargs", "resolve_async"]

#: URL scheme -> async driver key (the first installed of a scheme's)
ASYNC_DRIVER_SCHEMES: Mapping[str, str] = {
    name: scheme.asyncio[0] for name, scheme in targets.SCHEMES.items() if scheme.asyncio
}


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
        adapter: AsyncAdapter = targets.adapter_for_url(
            target, kwargs, asyncio=True, server_pooler=server_pooler
        )
        return adapter
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
