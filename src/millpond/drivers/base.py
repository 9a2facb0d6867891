"""The sync driver protocol, and the generic DB-API 2.0 adapter every driver refines.

A pool talks to a database only through a :class:`SyncAdapter`. One adapter instance serves one
pool; it knows how to open a connection and everything driver-specific about using one. The
generic adapter's answers are the honest fallbacks for a driver we know nothing about: a
``SELECT 1`` ping, "unknown" transaction status (so the pool always rolls back), and no full
reset beyond a rollback.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import os
import select
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from millpond.drivers.limits import ServerLimits
from millpond.errors import ConfigError, PoolError

__all__ = [
    "ConnectParams",
    "SyncAdapter",
    "TxStatus",
    "is_secret_key",
    "load_driver",
    "redact",
    "scrub_error",
    "shutdown_socket",
    "socket_quiet",
]


class TxStatus(enum.IntEnum):
    """What a connection's session looks like when it comes back to the pool."""

    IDLE = 0  # no transaction open: nothing to roll back
    INTRANS = 1  # a transaction is open (work may be uncommitted)
    INERROR = 2  # the transaction failed and must be rolled back
    UNKNOWN = 3  # the driver cannot tell: roll back to be safe
    BROKEN = 4  # the connection is closed or its socket is gone


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***`` (longest first, so prefixes never leak)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def is_secret_key(key: str) -> bool:
    """password, passwd, sslpassword, ssl_key_password, password1..3 (MySQL MFA)."""
    return "password" in key or key == "passwd"


def scrub_error(exc: BaseException, secrets: Iterable[str]) -> BaseException:
    """``exc`` with ``secrets`` redacted from its args and those of its whole cause/context
    chain. If its text still shows a secret (it did not come from args), a PoolError with the
    redacted text and no chain stands in for it: the caller raises what this returns."""
    found = tuple(s for s in secrets if s)
    if not found:
        return exc
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.args = tuple(redact(a, found) if isinstance(a, str) else a for a in link.args)
        link = link.__cause__ or link.__context__
    text = str(exc)
    if any(s in text for s in found):
        return PoolError(f"{type(exc).__name__}: {redact(text, found)}")
    return exc


class ConnectParams(dict[str, Any]):
    """A driver's ``connect()`` keyword arguments, where a password may be a zero-argument
    callable (an async one too, for AsyncPool) returning the current secret.

    Rotating credentials (cloud IAM tokens, vault leases) must not live in a string the pool
    keeps: the callable is called at every connect, its result goes into the arguments of that
    one call only. A failed connect's error is scrubbed, along its whole cause/context chain,
    of that result and of the adapter's own ``secrets`` (drivers echo DSNs, and the pool's
    redaction reaches only the top error's args). Without a callable the call costs what
    ``connect(**params)`` did.
    """

    def __init__(
        self, kwargs: Mapping[str, Any] | None = None, secrets: Iterable[str] = ()
    ) -> None:
        super().__init__(kwargs or {})
        self.secrets = tuple(s for s in secrets if s)

    def _live(self) -> list[str]:
        return [k for k, v in self.items() if callable(v) and is_secret_key(k)]

    def call(self, connect: Callable[..., Any]) -> Any:
        live = self._live()
        kwargs: dict[str, Any] = self
        if live:
            kwargs = dict(self)
            for key in live:
                kwargs[key] = _check_secret(key, self[key]())
        try:
            return connect(**kwargs)
        except Exception as exc:
            clean = scrub_error(exc, self.secrets + _texts(kwargs, live))
            if clean is exc:
                raise
            raise clean from None

    async def acall(self, connect: Callable[..., Any]) -> Any:
        live = self._live()
        kwargs: dict[str, Any] = self
        if live:
            kwargs = dict(self)
            for key in live:
                value = self[key]()
                if inspect.isawaitable(value):
                    value = await value
                kwargs[key] = _check_secret(key, value)
        try:
            return await connect(**kwargs)
        except Exception as exc:
            clean = scrub_error(exc, self.secrets + _texts(kwargs, live))
            if clean is exc:
                raise
            raise clean from None


def _check_secret(key: str, value: object) -> object:
    if not isinstance(value, (str, bytes)):
        # the type only: the value may be a secret of the wrong type
        raise ConfigError(
            f"connect_kwargs[{key!r}] is a callable that returned {type(value).__name__}; "
            "it must return the secret as a str (or bytes)"
        )
    return value


def _texts(kwargs: Mapping[str, Any], keys: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for key in keys:
        value = kwargs[key]
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if isinstance(text, str) and text:
            out.append(text)
    return tuple(out)


def load_driver(module_name: str, extra: str | None) -> Any:
    """Import a driver library on first use, turning a missing one into a ConfigError.

    Drivers are imported only here, when a pool for them is built, so that ``import millpond``
    stays cheap and works with none of them installed.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        top = module_name.partition(".")[0]
        if isinstance(exc, ModuleNotFoundError) and exc.name in (module_name, top):
            hint = f": pip install 'millpond[{extra}]'" if extra else ""
            raise ConfigError(f"the {module_name!r} driver is not installed{hint}") from exc
        # installed but broken (a missing shared library, say): the cause is the useful part
        raise ConfigError(f"the {module_name!r} driver failed to import: {exc}") from exc


def shutdown_socket(fd: int) -> bool:
    """Shut down the socket behind ``fd`` in both directions (through a duplicate, so the
    driver's own descriptor stays valid until it closes it): blocked reads return at once."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()
    return True


def socket_quiet(fd: int | None) -> bool:
    """True unless the idle socket behind ``fd`` has something to read: end-of-file (the
    server hung up: failover, a terminated backend, an idle timeout), an error, or data
    nobody asked for (the server's goodbye message). A zero-timeout poll, no round trip;
    ``None`` (no socket known) counts as quiet."""
    if fd is None or fd < 0:
        return True
    try:
        if _poll is not None:
            p = _poll()
            p.register(fd, _POLL_EVENTS)
            return not p.poll(0)
        readable, _, failed = select.select([fd], [], [fd], 0)
        return not (readable or failed)
    except (OSError, ValueError):
        return False  # a descriptor that cannot even be polled: let the ping decide


def fileno_fd(conn: Any) -> int | None:
    """The descriptor behind a connection's ``fileno()`` (psycopg, psycopg2 and their
    async forms): None if it has no such method, -1 if it refuses (closed)."""
    fileno = getattr(conn, "fileno", None)
    if not callable(fileno):
        return None
    try:
        fd = fileno()
    except Exception:  # closed: the ping that follows says so
        return -1
    return fd if isinstance(fd, int) else None


def alive_by_socket(socket_fd: Callable[[Any], int | None], conn: Any) -> bool:
    """An adapter's ``socket_alive``: quiet socket (or none known) → True; end-of-file,
    unread data, or a driver whose internals changed under ``socket_fd`` → False, so the
    pool pings it."""
    try:
        fd = socket_fd(conn)
    except Exception:
        return False
    return fd is None or (fd >= 0 and socket_quiet(fd))


_poll = getattr(select, "poll", None)  # not on Windows
_POLL_EVENTS = getattr(select, "POLLIN", 1) | getattr(select, "POLLPRI", 2)


class SyncAdapter:
    """Generic DB-API 2.0 adapter: ``connect`` is a zero-argument callable.

    Subclasses override what their driver does better. Every method but :meth:`connect` takes a
    connection this adapter opened. Methods that do I/O may raise the driver's exceptions; the
    pool decides what a failure means.
    """

    #: short driver name shown in ``repr(pool)`` and errors ("psycopg", "sqlite3", ...)
    name: str = "dbapi"
    #: the pip extra that installs this driver, for error messages
    extra: str | None = None
    #: True when :meth:`full_reset` restores a pristine session (not just a rollback)
    supports_full_reset: bool = False
    #: exception classes that mean "the connection is gone" (refined per driver)
    disconnect_errors: tuple[type[BaseException], ...] = ()

    @classmethod
    def server_pooler_kwargs(cls, kind: str) -> dict[str, Any]:
        """Connect arguments this driver needs behind the server-side pooler ``kind``
        ("pgbouncer-transaction"); the user's own arguments win over them."""
        return {}

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        description: str = "dbapi",
        secrets: Iterable[str] = (),
        module: Any = None,
    ) -> None:
        if not callable(connect):
            raise ConfigError(f"connect target must be callable, got {type(connect).__name__}")
        self._connect = connect
        #: a redacted, human-readable target ("postgresql://app@127.0.0.1/test")
        self.description = description
        self.secrets: tuple[str, ...] = tuple(s for s in secrets if s)
        self.module = module
        if module is not None:
            op = getattr(module, "OperationalError", None)
            ie = getattr(module, "InterfaceError", None)
            self.disconnect_errors = tuple(
                e for e in (op, ie) if isinstance(e, type) and issubclass(e, BaseException)
            )

    # -- opening and closing ---------------------------------------------------------------

    def connect(self) -> Any:
        """Open one new connection (blocking). Raises the driver's error on failure."""
        return self._connect()

    def close(self, conn: Any) -> None:
        """Close a connection, swallowing nothing: the caller logs and moves on."""
        conn.close()

    def interrupt(self, conn: Any) -> bool:
        """From another thread, make a call blocked on ``conn`` fail now (a ping that overran
        ``ping_timeout``): shut its socket down. The connection is discarded afterwards.
        False if the driver exposes no socket."""
        fileno = getattr(conn, "fileno", None)
        if not callable(fileno):
            return False
        return shutdown_socket(fileno())

    def socket_fd(self, conn: Any) -> int | None:
        """The descriptor of the connection's socket, None if the driver exposes none."""
        return fileno_fd(conn)

    def socket_alive(self, conn: Any) -> bool:
        """Cheap liveness check of an idle connection, without a round trip: False when its
        socket shows end-of-file or unread data (the pool then pings it), True when quiet
        or when the driver exposes no socket."""
        return alive_by_socket(self.socket_fd, conn)

    def is_closed(self, conn: Any) -> bool:
        """True if the connection is known to be closed (the user closed it, or it broke)."""
        closed = getattr(conn, "closed", False)
        return bool(closed) if not callable(closed) else False

    # -- health ----------------------------------------------------------------------------

    def ping(self, conn: Any) -> None:
        """Prove the connection answers; raise if it does not. Leaves no transaction open
        that was not open before (the pool pings only idle connections)."""
        cur = conn.cursor()
        try:
            cur.execute("SELECT 1")
            cur.fetchall()
        finally:
            cur.close()
        # the ping may have begun an implicit transaction on non-autocommit drivers
        conn.rollback()

    def is_disconnect(self, exc: BaseException, conn: Any | None = None) -> bool:
        """True if ``exc`` (raised while using ``conn``) means the connection is dead."""
        if conn is not None and self.is_closed(conn):
            return True
        return bool(self.disconnect_errors) and isinstance(exc, self.disconnect_errors)

    def server_limits(self, conn: Any) -> ServerLimits | None:
        """The server's connection limits that apply to this connection's sessions, read in
        one query when a pool opens (see :mod:`millpond.drivers.limits`); None when the
        adapter does not know its server. Must leave no transaction open."""
        return None

    # -- session state ---------------------------------------------------------------------

    def status(self, conn: Any) -> TxStatus:
        """The transaction status; called on every return, so keep it free of I/O."""
        return TxStatus.UNKNOWN

    def rollback(self, conn: Any) -> None:
        conn.rollback()

    def commit(self, conn: Any) -> None:
        """Commit, including a transaction :meth:`begin` opened explicitly in autocommit mode
        (some drivers' ``commit()`` does nothing in autocommit mode)."""
        conn.commit()

    def full_reset(self, conn: Any) -> None:
        """Restore a pristine session. The generic adapter can only roll back."""
        conn.rollback()

    def get_autocommit(self, conn: Any) -> bool | None:
        """The connection's autocommit mode, or None if the driver has no such notion."""
        value = getattr(conn, "autocommit", None)
        if callable(value):  # some drivers expose autocommit as a method
            return None
        return None if value is None else bool(value)

    def set_autocommit(self, conn: Any, value: bool) -> None:
        conn.autocommit = value

    def begin(self, conn: Any) -> None:
        """Start a transaction explicitly. Called by ``transaction()`` only when the
        connection is in autocommit mode; otherwise DB-API begins implicitly."""
        cur = conn.cursor()
        try:
            cur.execute("BEGIN")
        finally:
            cur.close()

    # -- presentation ----------------------------------------------------------------------

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"
