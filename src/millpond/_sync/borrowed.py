"""What ``with pool.connection()`` and ``with pool.transaction()`` return (threaded shell).

``Borrowed`` hands over to ``Pool.getconn``/``putconn``, where the fast paths are written out.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from millpond._sync.pool import Pool

__all__ = ["Borrowed", "Transaction"]


class Borrowed:
    """``with pool.connection() as conn``: a raw connection out, back in on exit.

    Made by :meth:`Pool.connection` without an ``__init__`` call (one Python frame less on
    the hot path); the fast paths themselves are ``getconn`` and ``putconn``.
    """

    __slots__ = ("_conn", "_pool", "_timeout")

    _pool: Pool
    _timeout: float | None
    _conn: Any

    def __enter__(self) -> Any:
        self._conn = conn = self._pool.getconn(self._timeout)
        return conn

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn = self._conn
        self._conn = None
        self._pool.putconn(conn, False, ev)


class Transaction:
    """``with pool.transaction() as conn``: commit on success, roll back on an exception."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    def __enter__(self) -> Any:
        pool = self._pool
        self._conn = conn = pool.getconn(self._timeout)
        try:
            if pool._adapter.get_autocommit(conn):
                pool._adapter.begin(conn)
        except BaseException as exc:
            self._conn = None
            pool.putconn(conn, False, exc)
            raise
        return conn

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn = self._conn
        self._conn = None
        pool = self._pool
        if ev is None:
            try:
                pool._adapter.commit(conn)
            except BaseException as exc:
                pool.putconn(conn, False, exc)
                raise
        pool.putconn(conn, False, ev)
