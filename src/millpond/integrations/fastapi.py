"""FastAPI and Starlette: a pool opened by the app's lifespan, a connection per request.

    from fastapi import Depends, FastAPI
    from millpond.integrations.fastapi import Millpond

    db = Millpond("postgresql+asyncpg://app@db/app", max_size=4, timeout=5)
    app = FastAPI(lifespan=db.lifespan)

    @app.get("/")
    async def index(conn=Depends(db.connection)):
        return await conn.fetchval("SELECT 1")

``Millpond`` holds an ``AsyncPool``; ``SyncMillpond`` a ``Pool`` for ``def`` endpoints (FastAPI
runs those, and their generator dependencies, in its threadpool). The pool is opened when the
lifespan starts, on the app's running event loop, and closed when it ends; a new lifespan (a
second ``TestClient``) opens a new pool. Inside your own lifespan use ``async with
db.lifespan(app):`` or ``async with db:``.

``Depends(db.connection)`` borrows when FastAPI solves the request's dependencies and returns
the connection when FastAPI runs the dependency's exit code: with the default
``scope="request"`` (FastAPI 0.121+) after the response has been sent and its background tasks
have run; with ``Depends(db.connection, scope="function")`` as soon as the endpoint returns,
before the response is sent. FastAPI caches a dependency per request, so every
``Depends(db.connection)`` of one request (sub-dependencies too) gets the same connection.
A request cancelled mid-query drops its connection (the pool's rule for a cut-off query); a
client that merely hangs up does not cancel the endpoint under uvicorn, so its connection
comes back when the endpoint ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import millpond
from millpond.integrations.pool_options import build_pool_kwargs

__all__ = ["Millpond", "SyncMillpond"]

_P = TypeVar("_P", millpond.Pool, millpond.AsyncPool)

#: set by the integration itself: the lifespan opens the pool
_RESERVED = frozenset({"open"})


class _Lifespan(Generic[_P]):
    """What both variants share: options checked up front, a pool per lifespan."""

    def __init__(
        self, target: Any, *, wait: bool, close_timeout: float, options: dict[str, Any]
    ) -> None:
        kwargs = build_pool_kwargs(
            options, source=f"{type(self).__name__} options", reserved=_RESERVED
        )
        self._target = target
        self._kwargs = kwargs
        self._wait = wait
        self._close_timeout = close_timeout
        # reset=None promises to leave returned sessions alone; a request that raised must
        # still not hand its half-done work to the next one
        self._unreset = "reset" in kwargs and kwargs["reset"] is None
        # built now so a bad option or URL fails at import, with the option's name; the
        # first lifespan opens it, later ones build their own (a closed pool stays closed)
        self._next: _P | None = self._build()
        self._pool: _P | None = None

    def _build(self) -> _P:
        raise NotImplementedError

    async def _open(self, pool: _P) -> None:
        raise NotImplementedError

    async def _close(self, pool: _P) -> None:
        raise NotImplementedError

    @property
    def pool(self) -> _P:
        """The open pool. Outside the app's lifespan: ``RuntimeError`` saying so."""
        pool = self._pool
        if pool is None:
            raise RuntimeError(
                f"{type(self).__name__}: the pool is open only inside the app's lifespan; "
                "pass lifespan=db.lifespan to FastAPI()/Starlette(), or enter "
                "`async with db.lifespan(app):` (or `async with db:`) in your own lifespan"
            )
        return pool

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Open the pool for the app's lifetime: ``FastAPI(lifespan=db.lifespan)``, or
        ``async with db.lifespan(app):`` inside your own lifespan."""
        async with self:
            yield

    async def __aenter__(self) -> Self:
        if self._pool is not None:
            raise RuntimeError(
                f"{type(self).__name__}: the pool is already open (one lifespan at a time)"
            )
        pool = self._next if self._next is not None else self._build()
        self._next = None
        await self._open(pool)
        self._pool = pool
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await self._close(pool)


class Millpond(_Lifespan[millpond.AsyncPool]):
    """An ``AsyncPool`` for an ASGI app. ``target`` and ``options`` as for ``AsyncPool``
    (checked here: ``millpond.ConfigError`` naming the option); ``wait``: the lifespan waits
    until ``min_size`` connections are open (a database that is down fails start-up);
    ``close_timeout``: how long shutdown waits for lent connections."""

    def __init__(
        self, target: Any, *, wait: bool = False, close_timeout: float = 5.0, **options: Any
    ) -> None:
        super().__init__(target, wait=wait, close_timeout=close_timeout, options=options)

    def _build(self) -> millpond.AsyncPool:
        return millpond.AsyncPool(self._target, **self._kwargs)

    async def _open(self, pool: millpond.AsyncPool) -> None:
        await pool.open(wait=self._wait)

    async def _close(self, pool: millpond.AsyncPool) -> None:
        await pool.close(self._close_timeout)

    async def connection(self) -> AsyncIterator[Any]:
        """A dependency: ``conn = Depends(db.connection)``, the driver's own connection for
        the request. Uncommitted work is rolled back on return; if the request raised, the
        pool rolls back (or, cut off mid-query by a cancellation, drops the connection)."""
        pool = self.pool
        if self._unreset:
            async with _discard_on_error(pool) as conn:
                yield conn
            return
        # the pool's own context manager already does the right thing for every exit:
        # rollback when dirty, a dropped connection when cancelled mid-query
        async with pool.connection() as conn:
            yield conn


class SyncMillpond(_Lifespan[millpond.Pool]):
    """A threaded ``Pool`` for ``def`` endpoints and dependencies; arguments as for
    :class:`Millpond` (and ``Pool``)."""

    def __init__(
        self, target: Any, *, wait: bool = False, close_timeout: float = 5.0, **options: Any
    ) -> None:
        super().__init__(target, wait=wait, close_timeout=close_timeout, options=options)

    def _build(self) -> millpond.Pool:
        return millpond.Pool(self._target, open=False, **self._kwargs)

    async def _open(self, pool: millpond.Pool) -> None:
        if self._wait:
            await _in_thread(pool.open, True)
        else:
            pool.open()  # starts the background connects; does not block

    async def _close(self, pool: millpond.Pool) -> None:
        # close() waits for lent connections: off the event loop
        await _in_thread(pool.close, self._close_timeout)

    def connection(self) -> Iterator[Any]:
        """A dependency: ``conn = Depends(db.connection)`` in ``def`` endpoints. FastAPI runs
        the borrow and the return in its threadpool. If the request raised, the connection is
        rolled back before it goes back (even with ``reset=None``); one that cannot roll back
        is closed."""
        pool = self.pool
        conn = pool.getconn()
        try:
            yield conn
        except BaseException:
            # GeneratorExit too: a generator dropped without being finished still returns
            try:
                conn.rollback()
            except Exception:
                pool.putconn(conn, discard=True)
            else:
                pool.putconn(conn)
            raise
        pool.putconn(conn)


@contextlib.asynccontextmanager
async def _discard_on_error(pool: millpond.AsyncPool) -> AsyncIterator[Any]:
    """With ``reset=None``: a connection whose request raised is closed (the server rolls its
    transaction back) rather than lent again with the failed work in it."""
    conn = await pool.getconn()
    try:
        yield conn
    except BaseException:
        await pool.putconn(conn, discard=True)
        raise
    await pool.putconn(conn)


async def _in_thread(func: Any, *args: Any) -> None:
    # anyio (Starlette's own dependency) rather than asyncio.to_thread: the app may run on trio
    from anyio import to_thread

    await to_thread.run_sync(func, *args)
