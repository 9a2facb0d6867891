"""The exception hierarchy. Every error millpond raises is a :class:`PoolError`."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectError",
    "ForeignConnection",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyWaiters",
    "WrongEventLoop",
]


class PoolError(Exception):
    """Base class of every millpond error."""


class PoolTimeout(PoolError, TimeoutError):
    """No connection became available before the caller's deadline: the pool was busy."""


class PoolClosed(PoolError):
    """The pool is closed (or not open yet) and lends nothing."""


class TooManyWaiters(PoolError):
    """``max_waiting`` callers are already queued; this one is shed at once."""


class ConnectError(PoolError):
    """The database could not be reached; the driver's error is chained as ``__cause__``.

    The message and the chained error are redacted: no password appears in either.
    """


class ForeignConnection(PoolError):
    """A connection was returned twice, or to a pool that did not lend it."""


class ConfigError(PoolError, ValueError):
    """An option is invalid; the message names the option and what it accepts."""


class WrongEventLoop(PoolError, RuntimeError):
    """An AsyncPool was used from an event loop other than the one that opened it."""
