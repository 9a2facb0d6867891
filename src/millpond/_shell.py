"""What the threaded and the asyncio shell share: neither a lock nor an ``await``.

Building and checking the configuration, naming, choosing the driver adapter, ``repr``,
timeouts, the decisions a return needs before its I/O, noticing garbage-collected
connections, and the logging half of carrying out the core's plan. Each shell
(``_sync/pool.py``, ``_async/pool.py``) adds only its I/O verbs and its two fast paths.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from queue import Empty, SimpleQueue
from typing import Any, ClassVar

from millpond._config import PoolConfig, ResetPolicy, check_timeout, server_pooler_reset
from millpond._core import messages
from millpond._core.events import HOT_KINDS, KINDS, EventKind, PoolEvent
from millpond._core.record import ConnRecord, Plan, Waiter
from millpond._core.reset import Step, reset_steps
from millpond._core.state import PoolCore
from millpond.drivers.base import TxStatus
from millpond.drivers.limits import ServerLimits, tightest
from millpond.errors import ConfigError, ConnectError

__all__ = ["RESET_TIMEOUT", "Listener", "PoolBase", "Unsubscribe", "log"]

Listener = Callable[[PoolEvent], object]
Unsubscribe = Callable[[], None]

log = logging.getLogger("millpond")

#: how long a reset on return (rollback, full reset) may take before the connection is
#: closed instead (its socket shut down, or the asyncio connection terminated)
RESET_TIMEOUT = 10.0
#: inside ``ping_window``, a connection idle longer than this gets the socket check (a
#: zero-timeout poll: end-of-file or unread data means ping it) instead of nothing; one
#: returned more recently is lent unchecked, so a hot checkout/return loop pays nothing
PEEK_AFTER = 0.001


class PoolBase:
    """The options, the core and the driver adapter of one pool."""

    #: "Pool" or "AsyncPool", for repr
    _kind: ClassVar[str]
    #: prefix of generated pool names
    _prefix: ClassVar[str]

    def __init__(
        self,
        target: Any,
        *,
        connect_kwargs: Mapping[str, Any] | None = None,
        min_size: int = 1,
        max_size: int = 10,
        max_overflow: int = 0,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float | None = 1800.0,
        max_idle: float | None = 600.0,
        max_uses: int = 0,
        pre_ping: bool = True,
        ping_window: float = 0.5,
        reset: ResetPolicy = "rollback",
        configure: Callable[[Any], Any] | None = None,
        leak_timeout: float | None = None,
        keepalive: float | None = None,
        ping_timeout: float = 5.0,
        name: str | None = None,
        open: bool | None = None,
        workers: int = 2,
        clock: Callable[[], float] | None = None,
        server_pooler: str | None = None,
        check_server_limits: bool = True,
    ) -> None:
        """Create a pool of connections to ``target``.

        ``target``: a URL (``postgresql://user@host/db``, ``mysql://...``, ``sqlite:///f.db``;
        the scheme picks the driver), a DB-API 2.0 module, a zero-argument callable that
        returns a new connection, or a driver adapter instance.

        Options (every one is checked here; a bad value raises :class:`millpond.ConfigError`
        naming it, before anything starts):

        - ``connect_kwargs``: keyword arguments for the driver's ``connect()``, over the URL's
          parts. A password may be a zero-argument callable, called at every connect.
        - ``min_size`` (1): connections kept open even when idle.
        - ``max_size`` (10): connections the pool keeps at most.
        - ``max_overflow`` (0): extra connections opened under load, closed when returned
          if nobody waits.
        - ``timeout`` (30.0): seconds a caller may wait for a connection: queueing,
          connecting and validating under one deadline. ``math.inf`` waits forever.
        - ``max_waiting`` (0 = unbounded): callers allowed to queue; the next one gets
          :class:`millpond.TooManyWaiters` at once.
        - ``max_lifetime`` (1800.0): retire a connection after this long (minus up to 10%
          jitter); ``None`` = never.
        - ``max_idle`` (600.0): close connections idle this long, above ``min_size``.
        - ``max_uses`` (0 = unlimited): retire a connection after this many checkouts.
        - ``pre_ping`` (True) and ``ping_window`` (0.5): validate a connection on checkout
          unless it was returned (or opened) less than ``ping_window`` seconds ago; within
          the window, one idle over 1 ms is pinged only if its socket shows the server hung up.
        - ``ping_timeout`` (5.0): a ping unanswered this long counts as dead.
        - ``reset`` ("rollback"): on return, "rollback" (only when a transaction is open),
          "full" (a pristine session), ``None`` (nothing: unsafe) or a callable.
        - ``configure``: ``callable(conn)`` run on every new connection (and again after a
          full reset); an ``AsyncPool`` awaits it if it returns an awaitable.
        - ``leak_timeout``: seconds; a connection held longer is reported with the
          borrower's stack on the ``millpond`` logger.
        - ``keepalive``: seconds; idle connections are pinged in the background this often.
        - ``server_pooler``: "pgbouncer-transaction" when pgbouncer in transaction mode sits
          between the pool and the server.
        - ``check_server_limits`` (True): after the first connect, read the server's
          connection limits in one query and log a WARNING if ``max_size + max_overflow``
          cannot fit under them (docs/reliability.md, "Pool too large for the server").
        - ``name``: shown in ``repr``, logs, errors and stats (default ``pool-N``).
        - ``open``: ``Pool`` opens in the constructor unless ``open=False``
          (then ``pool.open()``); an ``AsyncPool`` opens only with ``await pool.open()`` or
          ``async with``, so ``open=True`` is refused there.
        - ``workers`` (2): threads for background closes and keepalive pings. Connects
          get threads of their own, as many as are in flight (up to the cap), so a hung
          connect never holds back the others.
        - ``clock``: a monotonic clock (``millpond.testing.FakeClock`` in tests).
        """
        if open is not None and not isinstance(open, bool):
            raise ConfigError(f"open={open!r} must be True or False")
        if clock is not None and not callable(clock):
            raise ConfigError(f"clock={clock!r} must be a callable returning monotonic seconds")
        config = PoolConfig(
            min_size=min_size,
            max_size=max_size,
            max_overflow=max_overflow,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            max_uses=max_uses,
            pre_ping=pre_ping,
            ping_window=ping_window,
            reset=reset,
            configure=configure,
            leak_timeout=leak_timeout,
            keepalive=keepalive,
            ping_timeout=ping_timeout,
            name=name,
            workers=workers,
            server_pooler=server_pooler,
            check_server_limits=check_server_limits,
        )
        self._check_open(open)
        self._adapter = self._resolve_target(target, connect_kwargs, server_pooler)
        self.name: str = name if name is not None else f"{self._prefix}-{self._next_number()}"
        self._reset: ResetPolicy = server_pooler_reset(config, self.name, log)
        self._config = config
        self._clock: Callable[[], float] = clock or time.monotonic
        self._core = PoolCore(config, self.name)
        # "rollback" and None act only when the session is not idle; the others always do
        self._reset_always = self._resets_always = self._reset not in ("rollback", None)
        self._full_reset_ok = bool(getattr(self._adapter, "supports_full_reset", True))
        self._status = self._adapter.status
        self._get_autocommit = self._adapter.get_autocommit
        alive = getattr(self._adapter, "socket_alive", None)
        self._socket_alive: Callable[[Any], bool] = alive if callable(alive) else _quiet
        self._peek_after = PEEK_AFTER if config.pre_ping else math.inf
        # ``_leak_timeout`` not None (and ``_reset_always`` true) also divert checkouts (and
        # returns) from the fast paths while a listener wants checkout/checkin events: the
        # fast paths then need no test of their own (see _divert)
        self._leak_timeout = leak_timeout
        self._track_leaks = leak_timeout is not None
        self._subscriptions: tuple[_Subscription, ...] = ()
        self._subscribing = threading.Lock()
        self._default_timeout = float(timeout)
        #: records of lent connections the garbage collector took; filled from weakref
        #: callbacks (any thread, any moment), drained by the housekeeper
        self._gc_queue: SimpleQueue[ConnRecord] = SimpleQueue()
        self._gc_notify: Callable[[], None] = _nothing
        #: taken (never released) by the first connect that gets to check the server's limits
        self._limits_once = self._limits_lock(config)
        self._init_shell(open)

    # -- what each shell provides ------------------------------------------------------------

    @classmethod
    def _next_number(cls) -> int:  # pragma: no cover - shells override
        raise NotImplementedError

    def _check_open(self, open: bool | None) -> None:
        """Refuse an ``open`` argument this shell cannot honour."""

    def _init_shell(self, open: bool | None) -> None:  # pragma: no cover - shells override
        """Set up the shell's own machinery (locks or loop state), then open if asked."""
        raise NotImplementedError

    def _resolve_target(
        self, target: Any, connect_kwargs: Mapping[str, Any] | None, server_pooler: str | None
    ) -> Any:  # pragma: no cover - shells override
        raise NotImplementedError

    # -- decisions before I/O ----------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self._default_timeout
        return check_timeout("timeout", timeout)

    def _return_steps(
        self, rec: ConnRecord, conn: Any, discard: bool, error: BaseException | None
    ) -> tuple[tuple[Step, ...], str | None]:
        """What a returned connection needs (read without I/O), or why it must be closed."""
        if discard:
            return (), "discarded"
        adapter = self._adapter
        if error is not None and adapter.is_disconnect(error, conn):
            return (), "broken"
        status = self._status(conn)
        ac = rec.autocommit
        return reset_steps(
            self._reset,
            dirty=status is not TxStatus.IDLE,
            broken=status is TxStatus.BROKEN,
            autocommit_drift=ac is not None and self._get_autocommit(conn) != ac,
            full_reset_supported=self._full_reset_ok,
            configure=self._config.configure is not None,
        )

    def _hand_over(self, rec: ConnRecord, frame: Any) -> Any:
        """The last step of a slow checkout: the connection leaves the record, and with
        leak tracking on, the record learns where it was borrowed."""
        conn = rec.conn
        rec.conn = None
        if self._track_leaks:
            rec.leak_reported = False
            rec.borrower = messages.borrower_stack(frame)
        return conn

    @staticmethod
    def _served(waiter: Waiter) -> ConnRecord:
        """What a woken waiter was handed, or the error it was failed with (its own copy)."""
        if waiter.error is not None:
            raise messages.fresh_error(waiter.error)
        rec = waiter.rec
        assert rec is not None
        return rec

    def _reset_failure(self, exc: BaseException, conn: Any) -> str:
        """Why a connection whose reset raised ``exc`` is closed; counts the failure."""
        self._core.reset_failed()
        return "broken" if self._adapter.is_disconnect(exc, conn) else "reset_failed"

    def _connect_failure(self, exc: BaseException) -> ConnectError:
        ad = self._adapter
        return messages.connect_failure(self._core, ad.description, exc, ad.redact, ad.secrets)

    # -- garbage-collected connections -------------------------------------------------------

    def _watch(self, rec: ConnRecord, conn: Any) -> None:
        """Notice a lent connection that is garbage-collected instead of returned."""
        queue = self._gc_queue
        notify = self._gc_notify

        def collected(_ref: weakref.ref[Any], rec: ConnRecord = rec) -> None:
            # may run inside the garbage collector, on any thread: no I/O, no pool state
            queue.put(rec)
            notify()

        try:
            rec.ref = weakref.ref(conn, collected)
        except TypeError:
            rec.pin = conn

    def _collect_garbage(self, now: float) -> bool:
        """Give back the slots of collected connections (call under the shell's lock or on
        its loop). True if any was recovered."""
        core = self._core
        found = False
        while True:
            try:
                rec = self._gc_queue.get_nowait()
            except Empty:
                return found
            if core.collected(rec, now):
                found = True
                log.warning(messages.garbage_collected(core, rec))

    # -- the server's limits, checked once at the first connect -------------------------------

    def _limits_lock(self, config: PoolConfig) -> threading.Lock | None:
        if not config.check_server_limits:
            return None
        if config.server_pooler is not None:
            log.debug(
                "pool %r: server's connection limits not checked: behind %s the server counts "
                "the pooler's sessions, not this pool's; the ceiling for this pool is the "
                "pooler's max_client_conn",
                self.name,
                config.server_pooler,
            )
            return None
        if not callable(getattr(self._adapter, "server_limits", None)):
            return None  # an adapter of the user's own, older than this check
        return threading.Lock()

    def _limits_due(self) -> bool:
        """True once per pool, for the first connection that opens (any thread)."""
        once = self._limits_once
        return once is not None and once.acquire(blocking=False)

    def _limits_failed(self, exc: Exception, conn: Any) -> bool:
        """Log a failed check at DEBUG. Re-raise ``exc`` if the connection went with it (then
        it counts as a failed connect); True if it left a transaction to roll back."""
        log.debug(
            "pool %r: could not read the server's connection limits: %s", self.name, self._text(exc)
        )
        if isinstance(exc, TimeoutError) or self._adapter.is_disconnect(exc, conn):
            raise exc
        return self._status(conn) not in (TxStatus.IDLE, TxStatus.UNKNOWN)

    def _report_limits(self, limits: ServerLimits | None) -> None:
        """One WARNING when ``max_size + max_overflow`` cannot fit under a server limit."""
        if limits is None:
            return
        if limits.pooler is not None:
            log.info(
                "pool %r: server's connection limits not checked: %s; the sessions the server "
                "counts are the pooler's, so the ceiling for this pool is the pooler's "
                "max_client_conn (set server_pooler= to say so and silence this)",
                self.name,
                limits.pooler,
            )
            return
        core = self._core
        cap = core.cap
        # this pool's sessions the server may already count (the checking one included)
        found = tightest(limits, cap, own=core.size + core.opening)
        if found is None:
            return
        limit, others, headroom = found
        log.warning(
            "pool %r is too large for the server: max_size + max_overflow = %d, but %s; "
            "%d other session(s) count against it now, so headroom for this pool is %d "
            "connection(s); connects beyond that will fail",
            self.name,
            cap,
            limit.source,
            others,
            headroom,
        )

    # -- events ------------------------------------------------------------------------------

    def subscribe(
        self, listener: Listener, kinds: Iterable[str] | None = None
    ) -> Unsubscribe:
        """Call ``listener(event)`` with a :class:`millpond.PoolEvent` for each event of
        ``kinds`` (default: every kind). Returns a function that unsubscribes it.

        Listeners run outside the pool's lock, on the thread (or, for an ``AsyncPool``, on the
        event loop, synchronously) where the event happened: they must be quick and must not
        block. One that raises is logged at WARNING the first time (DEBUG after) and never
        breaks the pool. Listening to "checkout" or "checkin" sends every checkout and return
        through the pool's slow path (a few microseconds more each); the other kinds cost
        nothing until they happen.
        """
        if not callable(listener):
            raise ConfigError(f"listener={listener!r} is not callable")
        wanted = KINDS if kinds is None else frozenset(kinds)
        unknown = wanted - KINDS
        if unknown or not wanted:
            raise ConfigError(
                f"kinds={sorted(wanted)!r}: event kinds are {', '.join(sorted(KINDS))}"
            )
        sub = _Subscription(listener, wanted)
        with self._subscribing:
            self._subscriptions = (*self._subscriptions, sub)
            self._divert()

        def unsubscribe() -> None:
            with self._subscribing:
                self._subscriptions = tuple(s for s in self._subscriptions if s is not sub)
                self._divert()

        return unsubscribe

    def unsubscribe(self, listener: Listener) -> None:
        """Stop every subscription of ``listener`` (nothing happens if it has none)."""
        with self._subscribing:
            self._subscriptions = tuple(
                # ==, not is: a bound method is a new object at each attribute access
                s for s in self._subscriptions if s.listener != listener
            )
            self._divert()

    def _divert(self) -> None:
        """Send checkouts and returns down the slow path while a listener wants them (the
        slow path emits their events), by the two flags the fast paths already test."""
        hot = any(s.kinds & HOT_KINDS for s in self._subscriptions)
        leak_timeout = self._config.leak_timeout
        self._leak_timeout = math.inf if hot and leak_timeout is None else leak_timeout
        self._reset_always = hot or self._resets_always

    def _emit(
        self,
        kind: EventKind,
        duration: float | None = None,
        reason: str | None = None,
        error: str | None = None,
    ) -> None:
        """Deliver one event (call outside the lock). Nothing is built without a listener."""
        subs = self._subscriptions
        if not subs:
            return
        event: PoolEvent | None = None
        for sub in subs:
            if kind not in sub.kinds:
                continue
            if event is None:
                event = PoolEvent(kind, self.name, duration, reason, error)
            try:
                sub.listener(event)
            except Exception:
                level = logging.DEBUG if sub.warned else logging.WARNING
                sub.warned = True
                log.log(
                    level,
                    "pool %r: event listener %r raised on a %r event (ignored)",
                    self.name,
                    sub.listener,
                    kind,
                    exc_info=True,
                )

    # -- logging -----------------------------------------------------------------------------

    def _text(self, exc: BaseException) -> str:
        """A driver error as a log line may show it: redacted, never empty."""
        return self._adapter.redact(str(exc)) or type(exc).__name__

    def _log_plan(self, plan: Plan) -> None:
        if plan.leaks:
            now = self._clock()
            for rec in plan.leaks:
                log.warning(messages.leak_held(self._core, rec, now))
                self._emit("leak", duration=now - rec.lent_at)

    def _log_leak_returned(self, rec: ConnRecord, now: float) -> None:
        log.warning(messages.leak_returned(self._core, rec, now))

    def _needs_ping(self, rec: ConnRecord, conn: Any, now: float) -> bool:
        """A checkout pings a connection idle for ``ping_window``, and one idle for less
        whose socket shows end-of-file or unread data (a backend killed right after the
        return: failover, ``pg_terminate_backend``, ``idle_session_timeout``)."""
        idle_for = now - rec.last_used
        if idle_for >= self._core.ping_window:
            return True
        return idle_for >= self._peek_after and not self._socket_alive(conn)

    def _log_ping_failed(self, exc: BaseException, keepalive: bool = False) -> None:
        what = "an idle connection failed its keepalive ping" if keepalive else (
            "discarding a connection that failed its ping"
        )
        log.info("pool %r: %s: %s", self.name, what, self._text(exc))

    def _log_closed_in_use(self) -> None:
        log.warning(
            "pool %r closed with %d connection(s) still in use; they are closed when returned",
            self.name,
            len(self._core.lent),
        )

    def _log_close_failed(self, reason: str, exc: BaseException) -> None:
        log.debug(
            "pool %r: closing a connection (%s) failed: %s", self.name, reason, self._text(exc)
        )

    def __repr__(self) -> str:
        core = self._core
        state = "closed" if core.closed else "open"
        ad = self._adapter
        return (
            f"<millpond.{self._kind} {self.name!r} {ad.name} {ad.description} {state} "
            f"size={core.size} idle={len(core.idle)} in_use={len(core.lent)} "
            f"max_size={core.max_size}>"
        )


class _Subscription:
    __slots__ = ("kinds", "listener", "warned")

    def __init__(self, listener: Listener, kinds: frozenset[str]) -> None:
        self.listener = listener
        self.kinds = kinds
        self.warned = False  # its first exception is logged at WARNING, later ones at DEBUG


def _nothing() -> None:
    pass


def _quiet(conn: Any) -> bool:
    """socket_alive for an adapter without one: nothing known, nothing to check."""
    return True
