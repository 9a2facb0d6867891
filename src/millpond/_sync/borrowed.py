"""What ``with pool.connection()`` and ``with pool.transaction()`` return (threaded shell).

``_Borrowed`` is one of the two fast paths' entry points: it asks the pool's
``_lend_idle``/``_return_idle`` first and falls back to ``getconn``/``putconn``.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from millpond._sync.pool import Pool

__all__ = ["Borrowed", "Transaction"]


class Borrowed:
    """``with pool.connection() as conn``: a raw connection out, back in on exit."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout

    # twin: borrow
    def __enter__(self) -> Any:
        pool = self._pool
        if self._timeout is None and pool._leak_timeout is None:
            conn = pool._lend_idle()
            if conn is not None:
                self._conn = conn
                return conn
        self._conn = conn = pool.getconn(self._timeout)
        return conn

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn = self._conn
        self._conn = None
        pool = self._pool
        if ev is None and not pool._reset_always and pool._return_idle(conn):
            return
        pool.putconn(conn, False, ev)
    # twin: end


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
