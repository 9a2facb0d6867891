"""What a pool tells its listeners: one frozen record per notable moment.

The type lives in the core so both shells (and anything built on the public API) share it;
delivering events is the shells' business (``millpond._shell``), because it calls user code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["HOT_KINDS", "KINDS", "EventKind", "PoolEvent"]

EventKind = Literal[
    "connect",
    "connect_failed",
    "checkout",
    "checkin",
    "wait",
    "timeout",
    "close",
    "leak",
    "drain",
]

KINDS: frozenset[str] = frozenset(get_args(EventKind))
#: the kinds the fast paths would have to emit: a listener for one of them sends every
#: checkout and return down the slow path instead, so the fast paths never test for listeners
HOT_KINDS: frozenset[str] = frozenset({"checkout", "checkin"})


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """One event of one pool.

    ``duration`` (seconds): for ``connect`` the create time (connect + configure), for
    ``checkout`` the wait (asking to getting), for ``checkin`` the use (lent to returned), for
    ``timeout`` how long the caller waited, for ``leak`` how long the connection has been
    held. ``reason`` says why a connection was closed (``close``: "expired", "idle",
    "drained", "broken", ...). ``error`` is the failed connect's text, with every secret
    redacted.
    """

    kind: EventKind
    pool: str
    duration: float | None = None
    reason: str | None = None
    error: str | None = None
