"""Differential testing of the compat layers: record what a scenario observes, run it against
the real peer and against the layer, compare the records.

A scenario is a function ``scenario(impl, server) -> Trace``; ``impl`` is the peer's module or
the compat module (same names), ``server`` gives fresh tags and counts sessions on the server.
Exceptions are recorded by the first class in their MRO that is not millpond's, so that a
compat error (which subclasses the peer's) compares equal to the peer's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def peer_class(exc: BaseException) -> str:
    """``module.Name`` of the first non-millpond class of ``exc``."""
    for klass in type(exc).__mro__:
        if not klass.__module__.startswith("millpond"):
            return f"{klass.__module__}.{klass.__qualname__}"
    raise AssertionError(f"{exc!r} has only millpond classes")  # pragma: no cover


class Trace:
    """The observations of one run: values, errors (class and message), session counts."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.missed: list[str] = []  # counts that never reached what the scenario expected

    def note(self, label: str, value: Any) -> Any:
        self.events.append((label, value))
        return value

    def call(
        self, label: str, fn: Callable[..., Any], *args: Any, message: bool = True, **kwargs: Any
    ) -> Any:
        """Run ``fn``; record its error (class, and message unless ``message=False``) or
        that it returned. Returns its value (None after an error)."""
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            self.events.append((label, "raised", peer_class(exc), str(exc) if message else None))
            return None
        self.events.append((label, "ok"))
        return value

    def count(self, label: str, read: Callable[[], int], expect: int, limit: float = 5.0) -> int:
        """Record the number of sessions ``read()`` reports, once it reaches ``expect``:
        servers see a client's close a moment later, and millpond's workers close
        asynchronously. A count that never gets there is recorded as it is."""
        deadline = time.monotonic() + limit
        value = read()
        while value != expect and time.monotonic() < deadline:
            time.sleep(0.01)
            value = read()
        self.events.append((label, "sessions", value))
        if value != expect:
            self.missed.append(f"{label}: {value} sessions, expected {expect}")
        return value


def same(theirs: Trace, ours: Trace) -> list[tuple[Any, ...]]:
    """Assert that the layer's run observed what the peer's did, and that the peer met the
    scenario's expectations (else the scenario, not the layer, is wrong). Returns the events."""
    assert not theirs.missed, theirs.missed
    assert ours.events == theirs.events
    return ours.events


def wait_until(cond: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {limit}s: {what}")
        time.sleep(0.005)


def rows(conn: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on a DB-API connection (or a proxy); its rows, if any."""
    cur = conn.cursor()
    try:
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(sql, params)
        return [tuple(r) for r in cur.fetchall()] if cur.description is not None else []
    finally:
        cur.close()


def scalar(conn: Any, sql: str, params: Any = None) -> Any:
    return rows(conn, sql, params)[0][0]
