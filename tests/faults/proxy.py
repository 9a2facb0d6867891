"""A TCP proxy on 127.0.0.1 that fakes network faults between a client and a database server.

The proxy runs an asyncio loop in a daemon thread of its own, so it works under synchronous
tests. Every control method is synchronous: it returns once the loop has applied the change,
so a test can act on it at once (after ``blackhole()`` returns, nothing more is forwarded;
after ``reset_all()`` returns, every reset has been sent).

Modes (one at a time; each call replaces the previous mode):

* ``pass_through()``: forward both ways.
* ``delay(s)``: forward, holding every chunk back ``s`` seconds, in both directions.
* ``refuse_new()``: existing connections go on; new ones are reset as soon as accepted.
* ``blackhole()``: nothing is forwarded or answered. New connections are accepted (the kernel
  does that anyway) and held without even connecting upstream. Data is not lost: as with a
  network that heals, everything resumes when another mode is chosen.

``reset_all()`` is an action, not a mode: it aborts every current connection, both halves,
with a TCP RST, and leaves the mode as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

_T = TypeVar("_T")

# Reads are at most this big, and a writer's buffer is drained before the next read, so each
# direction of a connection holds a bounded amount of data in the proxy.
_CHUNK = 64 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: SO_LINGER with a zero timeout, then abort."""
    if not writer.transport.is_closing():
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


class _Conn:
    """One client connection and, once made, its upstream connection.

    ``handler`` is the task asyncio started for the client; it is never cancelled. Python
    3.11's start_server calls ``exception()`` on that task when it ends, which raises (and
    logs an error) if it was cancelled. Resets cancel ``work``, the task doing the forwarding.
    """

    def __init__(self, handler: asyncio.Task[Any], client: asyncio.StreamWriter) -> None:
        self.handler = handler
        self.work: asyncio.Task[bool] | None = None
        self.writers = [client]

    def reset(self) -> None:
        for writer in self.writers:
            _reset(writer)
        if self.work is not None:
            self.work.cancel()


class FaultProxy:
    """Listens on 127.0.0.1:``port`` (a free port) and forwards to ``upstream_host:upstream_port``.

    Use it as a context manager, or call ``close()``: closing resets every connection.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, connect_timeout: float = 10.0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.connect_timeout = connect_timeout
        self._mode = Mode.PASS
        self._delay = 0.0
        self._closing = False
        self._closed = False
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever,
            name=f"FaultProxy->{upstream_host}:{upstream_port}",
            daemon=True,  # a proxy nobody closed must not keep the interpreter alive
        )
        self._thread.start()
        try:
            self._server, self.port = self._call(self._listen())
        except BaseException:
            self._stop_loop()
            raise

    # -- control (any thread) ------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def active_connections(self) -> int:
        """Client connections accepted and not yet closed (refused ones never count)."""
        return len(self._conns)  # only the loop mutates the set; len() of it is atomic

    def pass_through(self) -> None:
        self._call(self._set_mode(Mode.PASS))

    def delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._call(self._set_mode(Mode.DELAY, seconds))

    def refuse_new(self) -> None:
        self._call(self._set_mode(Mode.REFUSE))

    def blackhole(self) -> None:
        self._call(self._set_mode(Mode.BLACKHOLE))

    def reset_all(self) -> None:
        self._call(self._reset_all())

    def close(self) -> None:
        """Stop listening, reset every connection, stop the thread. Idempotent."""
        if self._closed:
            return
        try:
            self._call(self._shutdown())
        finally:
            self._closed = True
            self._stop_loop()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        host, port = self.upstream
        return f"<FaultProxy :{self.port} -> {host}:{port} {self._mode.value}>"

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        if self._closed:
            coro.close()
            raise RuntimeError("the proxy is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # -- the loop's side -----------------------------------------------------------------

    async def _listen(self) -> tuple[asyncio.Server, int]:
        # Created on the loop: the gate that pumps wait on while the proxy is blackholed.
        self._flowing = asyncio.Event()
        self._flowing.set()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=_CHUNK)
        return server, int(server.sockets[0].getsockname()[1])

    async def _set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        self._mode, self._delay = mode, delay
        if mode is Mode.BLACKHOLE:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def _reset_all(self) -> None:
        conns = list(self._conns)
        for conn in conns:
            conn.reset()
        # Wait for the handlers to finish: that is when the aborted sockets are really closed
        # and the RSTs sent.
        await asyncio.gather(*(c.handler for c in conns), return_exceptions=True)

    async def _shutdown(self) -> None:
        self._closing = True
        self._server.close()
        # Handlers of connections accepted just before the close may not have started yet;
        # let them start, see _closing and reset their client.
        await asyncio.sleep(0)
        await self._reset_all()
        await self._server.wait_closed()
        current = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not current]
        if rest:
            # Only a handler stuck past every timeout gets here; cancelling is the last resort.
            _, pending = await asyncio.wait(rest, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        if self._mode is Mode.REFUSE or self._closing:
            _reset(cwriter)
            return
        handler = asyncio.current_task()
        assert handler is not None
        conn = _Conn(handler, cwriter)
        self._conns.add(conn)
        clean = False
        try:
            work = conn.work = asyncio.create_task(self._serve(conn, creader, cwriter))
            # wait() rather than await: a cancelled work task must not cancel the handler.
            await asyncio.wait([work])
            failure = None if work.cancelled() else work.exception()
            clean = not work.cancelled() and failure is None and work.result()
        finally:
            self._conns.discard(conn)
            await _finish(conn.writers, clean)
        if failure is not None:
            raise failure  # a bug in the proxy, not a network error: let asyncio log it

    async def _serve(
        self, conn: _Conn, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter
    ) -> bool:
        try:
            # A blackholed connection is held here, before upstream even sees it.
            await self._flowing.wait()
            ureader, uwriter = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream, limit=_CHUNK), self.connect_timeout
            )
        except (TimeoutError, OSError):
            return False  # upstream unreachable: the client gets a reset
        conn.writers.append(uwriter)
        return await self._splice(creader, cwriter, ureader, uwriter)

    async def _splice(
        self,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        ureader: asyncio.StreamReader,
        uwriter: asyncio.StreamWriter,
    ) -> bool:
        """Pump both ways until both sides have sent EOF (True) or one fails (False)."""
        pumps = [
            asyncio.create_task(self._pump(creader, uwriter)),
            asyncio.create_task(self._pump(ureader, cwriter)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            # Also when we are cancelled (reset_all, close): pumps must not outlive their
            # connection.
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        for pump in pumps:
            failure = None if pump.cancelled() else pump.exception()
            if failure is not None and not isinstance(failure, OSError):
                raise failure
        return all(not p.cancelled() and p.exception() is None for p in pumps)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await self._flowing.wait()
            data = await reader.read(_CHUNK)
            if self._delay > 0:
                await asyncio.sleep(self._delay)
            # Checked again right before forwarding, with no await in between, so nothing
            # (not even an EOF) gets through once blackhole() has returned.
            await self._flowing.wait()
            if not data:
                # Pass the half-close on; the other direction may still have data to deliver.
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()


async def _finish(writers: list[asyncio.StreamWriter], clean: bool) -> None:
    """Close both halves: FIN after a clean end, RST after a failure."""
    for writer in writers:
        if clean:
            writer.close()
        else:
            _reset(writer)
    for writer in writers:
        try:
            # Bounded: a peer that stopped reading would keep a FIN-close waiting forever.
            await asyncio.wait_for(writer.wait_closed(), 5.0)
        except TimeoutError:
            writer.transport.abort()
        except OSError:
            pass
