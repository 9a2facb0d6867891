"""Per-connection bookkeeping and the waiter/plan shapes the core exchanges with its shells."""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["ConnRecord", "Plan", "Waiter"]


class ConnRecord:
    """One connection the pool owns.

    While the connection is idle ``conn`` holds it. While it is lent, ``conn`` is None and the
    pool keeps only ``ref`` (a weak reference) so that a borrower who drops the connection lets it
    be garbage-collected and the pool notices; drivers whose connections cannot be weakly
    referenced are kept alive through ``pin`` instead.
    """

    __slots__ = (
        "autocommit",
        "borrower",
        "conn",
        "created",
        "expires",
        "gen",
        "key",
        "last_used",
        "leak_reported",
        "lent_at",
        "pin",
        "ref",
        "resetting",
        "uses",
    )

    def __init__(self, conn: Any, now: float, expires: float, gen: int) -> None:
        self.conn: Any = conn
        self.key = id(conn)
        self.ref: weakref.ref[Any] | None = None
        self.pin: Any = None
        self.created = now
        self.expires = expires
        self.last_used = now
        self.lent_at = now
        self.uses = 0
        self.gen = gen
        self.borrower: Any = None  # where it was borrowed, when leak tracking is on
        self.leak_reported = False
        self.autocommit: bool | None = None
        self.resetting = False  # claimed by a return that is resetting it

    def owns(self, conn: Any) -> bool:
        """True if ``conn`` is this record's connection (ids can be reused after a GC)."""
        if self.pin is not None:
            return self.pin is conn
        ref = self.ref
        return ref is not None and ref() is conn

    def __repr__(self) -> str:
        return f"<ConnRecord key={self.key:#x} gen={self.gen} uses={self.uses}>"


class Waiter:
    """A caller queued for a connection. Shells subclass it with their wake-up primitive."""

    __slots__ = ("error", "fail_fast", "rec")

    def __init__(self) -> None:
        self.rec: ConnRecord | None = None
        self.error: BaseException | None = None
        #: fail on the next failed connect, even while a return could still serve it
        self.fail_fast = False

    def wake(self) -> None:  # pragma: no cover - shells override
        raise NotImplementedError


class Plan:
    """What the shell must do once it has released its lock: the core's slow-path output."""

    __slots__ = ("closes", "leaks", "opens", "pings", "wakes")

    def __init__(self) -> None:
        self.opens = 0
        self.closes: list[tuple[ConnRecord, str]] = []
        self.wakes: list[Waiter] = []
        self.leaks: list[ConnRecord] = []
        self.pings: list[ConnRecord] = []  # idle connections to ping in the background

    def __bool__(self) -> bool:
        return bool(self.opens or self.closes or self.wakes or self.leaks or self.pings)

    def __repr__(self) -> str:
        return (
            f"<Plan opens={self.opens} closes={len(self.closes)} "
            f"wakes={len(self.wakes)} leaks={len(self.leaks)}>"
        )
