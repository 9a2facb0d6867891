"""Every pool option, its default and its validation. Errors name the option and its range."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from millpond.errors import ConfigError

__all__ = ["SERVER_POOLERS", "PoolConfig", "ResetPolicy", "check_timeout", "server_pooler_reset"]

ResetPolicy = str | Callable[[Any], None] | None
_RESET_NAMES = ("rollback", "full")
#: what may sit between the pool and the server; each name says which pooler and which mode,
#: because what is safe differs (pgbouncer's session mode needs nothing special)
SERVER_POOLERS = ("pgbouncer-transaction",)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    min_size: int = 1
    max_size: int = 10
    max_overflow: int = 0
    timeout: float = 30.0
    max_waiting: int = 0
    max_lifetime: float | None = 1800.0
    max_idle: float | None = 600.0
    max_uses: int = 0
    pre_ping: bool = True
    ping_window: float = 0.5
    reset: ResetPolicy = "rollback"
    configure: Callable[[Any], None] | None = None
    leak_timeout: float | None = None
    #: ping idle connections in the background this often (seconds), so that NAT/firewall
    #: idle cuts and server-side idle timeouts never reach a borrower
    keepalive: float | None = None
    #: a ping (on checkout or keepalive) unanswered this long counts as dead; a checkout's
    #: ping is also bounded by what is left of the caller's deadline
    ping_timeout: float = 5.0
    name: str | None = None
    #: fraction of max_lifetime taken off at random per connection, so a pool opened at once
    #: does not retire every connection in the same instant
    lifetime_jitter: float = 0.1
    #: background threads that open and close connections
    workers: int = 2
    #: a server-side pooler between us and the database ("pgbouncer-transaction"): no
    #: session-level reset statements, driver statement caches off
    server_pooler: str | None = None
    #: read the server's connection limits once, at the first connect, and warn when
    #: max_size + max_overflow cannot fit under them
    check_server_limits: bool = True

    def __post_init__(self) -> None:
        _int("min_size", self.min_size, 0)
        _int("max_size", self.max_size, 1)
        _int("max_overflow", self.max_overflow, 0)
        _int("max_waiting", self.max_waiting, 0)
        _int("max_uses", self.max_uses, 0)
        _int("workers", self.workers, 1)
        if self.min_size > self.max_size:
            raise ConfigError(
                f"min_size={self.min_size} is larger than max_size={self.max_size}; "
                "min_size must be between 0 and max_size"
            )
        check_timeout("timeout", self.timeout)
        _seconds("max_lifetime", self.max_lifetime, allow_none=True, positive=True)
        _seconds("max_idle", self.max_idle, allow_none=True, positive=True)
        _seconds("ping_window", self.ping_window)
        _seconds("leak_timeout", self.leak_timeout, allow_none=True, positive=True)
        _seconds("keepalive", self.keepalive, allow_none=True, positive=True)
        _seconds("ping_timeout", self.ping_timeout, positive=True)
        if not isinstance(self.lifetime_jitter, (int, float)) or not 0 <= self.lifetime_jitter < 1:
            raise ConfigError(f"lifetime_jitter={self.lifetime_jitter!r} must be in [0, 1)")
        if not isinstance(self.check_server_limits, bool):
            raise ConfigError(
                f"check_server_limits={self.check_server_limits!r} must be True or False"
            )
        if not isinstance(self.pre_ping, bool):
            raise ConfigError(f"pre_ping={self.pre_ping!r} must be True or False")
        r = self.reset
        if not (r is None or callable(r) or (isinstance(r, str) and r in _RESET_NAMES)):
            raise ConfigError(
                f"reset={r!r} is not a reset policy; use 'rollback', 'full', None "
                "or a callable taking the connection"
            )
        if self.configure is not None and not callable(self.configure):
            raise ConfigError(f"configure={self.configure!r} must be a callable taking the connection")
        if self.server_pooler is not None and self.server_pooler not in SERVER_POOLERS:
            raise ConfigError(
                f"server_pooler={self.server_pooler!r} is not supported; use None or one of "
                + ", ".join(repr(p) for p in SERVER_POOLERS)
            )
        if self.name is not None and not isinstance(self.name, str):
            raise ConfigError(f"name={self.name!r} must be a string")

    @property
    def cap(self) -> int:
        """The most connections the pool may own at once."""
        return self.max_size + self.max_overflow

    def resized(self, min_size: int | None, max_size: int | None) -> PoolConfig:
        return replace(
            self,
            min_size=self.min_size if min_size is None else min_size,
            max_size=self.max_size if max_size is None else max_size,
        )


def server_pooler_reset(config: PoolConfig, name: str, log: logging.Logger) -> ResetPolicy:
    """The reset policy a pool really applies, and the warnings its server pooler calls for.

    Behind pgbouncer in transaction mode each transaction may run on another server
    connection: a ``DISCARD ALL`` after it would clean some other client's session (and drop
    what pgbouncer itself prepared there), so reset="full" is a rollback; and what
    ``configure`` sets outside a transaction stays on whichever server connection ran it.
    """
    if config.server_pooler is None:
        return config.reset
    if config.configure is not None:
        log.warning(
            "pool %r: configure= is set with server_pooler=%r: session state it sets (SET, "
            "SET ROLE, temp tables, prepared statements) stays on one server connection and "
            "will not follow this pool's transactions; set it per transaction (SET LOCAL) or "
            "in the role's or database's defaults instead",
            name,
            config.server_pooler,
        )
    if config.reset == "full":
        log.info(
            "pool %r: reset='full' is a rollback under server_pooler=%r "
            "(session-level reset statements would reach another client's session)",
            name,
            config.server_pooler,
        )
        return "rollback"
    return config.reset


def _int(option: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{option}={value!r} must be an integer >= {low}")
    if value < low:
        raise ConfigError(f"{option}={value} is out of range; it must be an integer >= {low}")


def _seconds(option: str, value: object, *, allow_none: bool = False, positive: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        kind = "a number of seconds" + (" or None" if allow_none else "")
        raise ConfigError(f"{option}={value!r} must be {kind}")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{option}={value} is out of range; it must be {bound} seconds")


def check_timeout(option: str, value: object) -> float:
    """Validate a wait budget: a number of seconds >= 0 (``math.inf`` waits forever)."""
    _seconds(option, value)
    assert isinstance(value, (int, float))
    return float(value)
