"""What the drop-in layers share: the options a compat pool accepts, opening the engine pool
the way the peers open theirs (synchronously, raising the driver's own error), and borrowing
under the peer's own limit."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import millpond
from millpond.drivers import SyncAdapter
from millpond.errors import ConfigError, ConnectError

#: seconds a borrower waits for a connection the pool is opening for it, when the user set no
#: ``timeout``: the peers connect on the caller's thread with no bound of their own, so this is
#: only a backstop for a server that accepts TCP and never answers
CONNECT_BUDGET = 30.0

#: millpond.Pool options a compat pool lets the user set through ``pool_options=``; the sizes,
#: the reset and the ping policy come from the peer's own arguments
POOL_OPTIONS = frozenset(
    {
        "timeout",
        "max_waiting",
        "max_lifetime",
        "max_idle",
        "pre_ping",
        "ping_window",
        "leak_timeout",
        "keepalive",
        "name",
    }
)


def check_pool_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The user's ``pool_options``, refused by name when one is not for a compat pool.
    ``timeout=None`` is the same as no ``timeout``: the peer's own behaviour (no wait for a
    return)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"pool_options must be a mapping of millpond.Pool options, got {options!r}"
        )
    bad = sorted(str(k) for k in options if k not in POOL_OPTIONS)
    if bad:
        raise ConfigError(
            f"pool_options: {', '.join(bad)} cannot be set on a compat pool (the peer's own "
            f"arguments set sizes and resets); it accepts {', '.join(sorted(POOL_OPTIONS))}"
        )
    return {k: v for k, v in options.items() if not (k == "timeout" and v is None)}


# -- connects -------------------------------------------------------------------------------


def driver_error(exc: BaseException) -> BaseException:
    """The driver's own error behind a millpond :class:`ConnectError`, as the peers raise it.

    Several callers may fail on one connect error: each gets its own copy, so tracebacks do
    not pile up on a shared object. A cause that is not a driver error (the engine replaced
    one whose text held a secret) leaves the ConnectError itself.
    """
    cause = exc.__cause__ if isinstance(exc, ConnectError) else exc
    if cause is None or isinstance(cause, millpond.PoolError):
        return exc
    try:
        fresh = copy.copy(cause)
    except Exception:
        return cause
    fresh.__cause__ = cause.__cause__
    return fresh


def open_pool(
    adapter: SyncAdapter,
    *,
    min_size: int,
    max_size: int,
    keep_min_size: bool,
    options: Mapping[str, Any],
    **settings: Any,
) -> millpond.Pool:
    """A started engine pool with ``min_size`` connections already open, as the peers open
    theirs in their constructor; a connect failure raises the driver's error.

    ``keep_min_size=False`` then lets the pool shrink below ``min_size``, as psycopg2 and
    DBUtils do: they open their initial connections once and never top them up.
    Idle and lifetime limits default to off: the peers never close a healthy idle connection
    on their own, and a server's connection count is part of what existing code sees.
    """
    kwargs: dict[str, Any] = {"max_idle": None, "max_lifetime": None}
    kwargs.update(settings)
    kwargs.update(options)
    pool = millpond.Pool(adapter, min_size=min_size, max_size=max_size, open=False, **kwargs)
    try:
        pool.open(wait=True, timeout=wait_budget(options, CONNECT_BUDGET))
        if not keep_min_size and min_size:
            pool.resize(min_size=0)
    except BaseException as exc:
        pool.close(timeout=0)
        if isinstance(exc, ConnectError):
            raise driver_error(exc) from exc
        raise
    return pool


def borrow(pool: millpond.Pool, budget: float, *, growing: bool) -> Any:
    """``pool.getconn`` for a caller the peer would not make wait for another borrower.

    ``growing``: the peer's limit leaves this caller a free slot, so the engine either has an
    idle connection or is opening one for it. The wait is then a connect, and a connect that
    fails fails this caller at once with the driver's error (the engine's ``fail_fast``), as
    the peer's synchronous connect would, even while other connections are lent. Otherwise
    it waits its turn in the engine's queue for a return (the ``timeout`` extension,
    DBUtils' ``blocking=True``). :class:`millpond.PoolTimeout` and
    :class:`millpond.PoolClosed` are the caller's to translate.
    """
    try:
        return pool.getconn(timeout=budget, fail_fast=growing)
    except ConnectError as exc:
        raise driver_error(exc) from exc


def fill(pool: millpond.Pool, size: int, budget: float) -> None:
    """Grow ``pool`` to hold ``size`` connections and block until they are open, as a peer's
    synchronous ``add_connection`` would; a connect that fails meanwhile raises the driver's
    error."""
    pool.resize(min_size=size, max_size=max(size, 1))
    try:
        pool.open(wait=True, timeout=budget)
    except ConnectError as exc:
        raise driver_error(exc) from exc


def wait_budget(options: Mapping[str, Any], default: float = math.inf) -> float:
    """How long a caller may queue for a return: the user's ``timeout`` extension, else
    ``default``."""
    value = options.get("timeout")
    return default if value is None else float(value)
