"""What both millpond backends share: the pool registry and the borrow/return cycle.

:class:`PooledWrapperMixin` goes in front of Django's own ``DatabaseWrapper`` in each
backend's MRO. Django keeps doing everything it does (cursors, ``atomic()``, savepoints,
``on_commit``, the schema editor, test databases); only where its wrapper would open or close
a server connection does the mixin borrow from, or return to, the alias's millpond pool.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.db import DEFAULT_DB_ALIAS, connections  # type: ignore[import-untyped]
from django.db.backends.base.base import (  # type: ignore[import-untyped]
    NO_DB_ALIAS,
    BaseDatabaseWrapper,
)

import millpond
from millpond.drivers import SyncAdapter
from millpond.drivers.url import resolve

__all__ = ["PooledWrapperMixin", "close_pools", "get_pool"]

#: Pool options the backend builds itself from the Django settings
_RESERVED = frozenset({"target", "connect_kwargs", "open"})

# alias -> (signature of the settings it was built from, the pool); one per process
_pools: dict[str, tuple[tuple[Any, ...], millpond.Pool]] = {}
_pools_lock = threading.Lock()


def _new_lock_in_child() -> None:
    # another thread may have held the lock at fork(); the child has only this thread
    global _pools_lock
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def pool_options(settings_dict: Mapping[str, Any], alias: str) -> dict[str, Any] | None:
    """The millpond Pool options that ``OPTIONS["pool"]`` asks for, or None without it;
    refuses the Django settings that contradict a pool."""
    if alias == NO_DB_ALIAS:
        # Django's connection to the maintenance database (test database creation,
        # "postgres"): short-lived and outside the application's sessions
        return None
    raw = settings_dict.get("OPTIONS", {}).get("pool")
    if raw is None or raw is False:
        return None
    if raw is True:
        options: dict[str, Any] = {}
    elif isinstance(raw, Mapping):
        options = dict(raw)
    else:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['OPTIONS']['pool'] must be True or a dict of millpond.Pool "
            f"options, got {type(raw).__name__}"
        )
    reserved = sorted(_RESERVED.intersection(options))
    if reserved:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['OPTIONS']['pool'] cannot set {', '.join(reserved)}: the "
            "backend builds the connection from the other DATABASES settings"
        )
    max_age = settings_dict.get("CONN_MAX_AGE", 0)
    if max_age != 0:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] has CONN_MAX_AGE={max_age!r}, but the millpond pool keeps "
            "the connections: set CONN_MAX_AGE to 0 (each request returns its connection to "
            "the pool at its end) and use the pool's max_lifetime to retire old ones"
        )
    if settings_dict.get("CONN_HEALTH_CHECKS"):
        if options.get("pre_ping") is False:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}] has CONN_HEALTH_CHECKS=True but its pool has "
                "pre_ping=False: the pool does the health checks, so drop one of the two"
            )
        # Django's health check runs before a request reuses its connection; the pool's
        # equivalent is a ping at every checkout
        options.setdefault("ping_window", 0.0)
    return options


def get_pool(alias: str = DEFAULT_DB_ALIAS) -> millpond.Pool:
    """The millpond pool behind Django's database ``alias`` in this process, made now if no
    query has made it yet. ``ImproperlyConfigured`` if that alias is not pooled by millpond."""
    wrapper = connections[alias]
    if not isinstance(wrapper, PooledWrapperMixin):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] does not use a millpond backend (ENGINE is "
            f"{wrapper.settings_dict.get('ENGINE')!r})"
        )
    pool = wrapper.millpond_pool()
    if pool is None:
        raise ImproperlyConfigured(f"DATABASES[{alias!r}]['OPTIONS'] has no 'pool' option")
    return pool


def close_pools(timeout: float = 5.0) -> None:
    """Close every millpond pool of this process (at worker shutdown, or in tests). The next
    query makes a new one."""
    with _pools_lock:
        pools = [pool for _, pool in _pools.values()]
        _pools.clear()
    for pool in pools:
        pool.close(timeout)


def _close_pool_of(alias: str, timeout: float) -> None:
    with _pools_lock:
        entry = _pools.pop(alias, None)
    if entry is not None:
        entry[1].close(timeout)


def _signature_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, bytes, int, float, bool)):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_signature_value(v) for v in value)
    # converters, adapter maps, cursor classes: the same object while the settings stay
    return ("id", id(value))


class PooledWrapperMixin:
    """Borrow at Django's connect, return at Django's ``close()``.

    A backend module combines it with Django's wrapper and supplies the driver-specific
    parts: :meth:`_millpond_configure` (the session settings Django applies at connect) and
    :meth:`_millpond_after_borrow`.
    """

    #: the pool the current connection came from (None: not pooled, or no connection)
    _millpond_source: millpond.Pool | None = None
    #: the process that borrowed it: a forked child inherits the wrapper, not the loan
    _millpond_pid: int = 0
    #: borrowed and not yet through Django's init_connection_state()
    _millpond_fresh: bool = False

    # provided by Django's DatabaseWrapper
    settings_dict: dict[str, Any]
    alias: str
    connection: Any
    Database: Any

    # -- what each backend provides ----------------------------------------------------------

    def _millpond_configure(self, conn_params: Mapping[str, Any]) -> Callable[[Any], None]:
        """A ``configure`` for the pool: the session settings Django applies at connect, run
        on every new connection and again after every full reset."""
        raise NotImplementedError  # pragma: no cover - each backend provides it

    def _millpond_after_borrow(self, conn: Any) -> None:
        """Client-side per-connection state Django sets at connect (no I/O)."""

    def _millpond_signature(self) -> tuple[Any, ...]:
        """Settings, beyond the connect parameters, that the pool's connections depend on."""
        return ()

    # -- the pool ----------------------------------------------------------------------------

    def _connect_params_without_pool(self) -> dict[str, Any]:
        # Django's backends copy OPTIONS into the driver's connect() arguments (and the
        # PostgreSQL one refuses "pool" under psycopg2), so they see OPTIONS without it
        settings_dict = self.settings_dict
        options = settings_dict.get("OPTIONS", {})
        if "pool" not in options:
            params: dict[str, Any] = super().get_connection_params()  # type: ignore[misc]
            return params
        self.settings_dict = {
            **settings_dict,
            "OPTIONS": {k: v for k, v in options.items() if k != "pool"},
        }
        try:
            params = super().get_connection_params()  # type: ignore[misc]
        finally:
            self.settings_dict = settings_dict
        return params

    def get_connection_params(self) -> dict[str, Any]:
        return self._connect_params_without_pool()

    def millpond_pool(self, conn_params: dict[str, Any] | None = None) -> millpond.Pool | None:
        """This alias's pool in this process (made on first use), None when not pooled.

        A pool is made from the settings of the moment; when they change (the test runner
        renames the database, ``override_settings`` changes the time zone) the old pool is
        closed, its lent connections as they come back, and a new one made.
        """
        options = pool_options(self.settings_dict, self.alias)
        if options is None:
            return None
        if conn_params is None:
            conn_params = self.get_connection_params()
        signature = (
            tuple(sorted((k, _signature_value(v)) for k, v in conn_params.items())),
            tuple(sorted((k, _signature_value(v)) for k, v in options.items())),
            self.settings_dict.get("AUTOCOMMIT", True),
            self._millpond_signature(),
        )
        entry = _pools.get(self.alias)
        if entry is not None and entry[0] == signature:
            return entry[1]
        stale: millpond.Pool | None = None
        with _pools_lock:
            entry = _pools.get(self.alias)
            if entry is not None and entry[0] == signature:
                return entry[1]
            pool = self._build_pool(conn_params, options)
            if entry is not None:
                stale = entry[1]
            _pools[self.alias] = (signature, pool)
        if stale is not None:
            # lent connections of the stale pool close as they come back
            stale.close(timeout=0)
        return pool

    def _build_pool(self, conn_params: dict[str, Any], options: dict[str, Any]) -> millpond.Pool:
        adapter: SyncAdapter = resolve(self.Database, conn_params)
        configure = self._millpond_configure(conn_params)
        user_configure = options.pop("configure", None)
        if user_configure is not None:
            if not callable(user_configure):
                raise ImproperlyConfigured(
                    f"DATABASES[{self.alias!r}]['OPTIONS']['pool']['configure'] must be a "
                    "callable taking the connection"
                )
            django_configure = configure

            def configure(conn: Any) -> None:
                django_configure(conn)
                user_configure(conn)

        # a full reset (DISCARD ALL, COM_RESET_CONNECTION) gives every request a session as
        # clean as a new connection; configure then reapplies Django's session settings
        options.setdefault("reset", "full" if adapter.supports_full_reset else "rollback")
        options.setdefault("name", f"django-{self.alias}")
        try:
            return millpond.Pool(adapter, configure=configure, **options)
        except (millpond.ConfigError, TypeError) as exc:
            raise ImproperlyConfigured(
                f"DATABASES[{self.alias!r}]['OPTIONS']['pool']: {exc}"
            ) from exc

    def close_pool(self) -> None:
        """Close this alias's pool (Django's own PostgreSQL backend has the same method; its
        test-database code calls it before cloning or dropping a database)."""
        _close_pool_of(self.alias, timeout=0 if self._millpond_source is not None else 5.0)

    # -- Django's connect and close ----------------------------------------------------------

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        pool = self.millpond_pool(conn_params)
        if pool is None:
            return super().get_new_connection(conn_params)  # type: ignore[misc]
        try:
            conn = pool.getconn()
        except millpond.ConnectError as exc:
            cause = exc.__cause__
            if isinstance(cause, self.Database.Error):
                # the driver's own error (redacted), so that Django wraps it in its
                # OperationalError as it does for a connect without a pool
                raise cause from exc
            raise
        try:
            self._millpond_after_borrow(conn)
        except BaseException:
            # Django keeps no reference to a connection its connect raised on: give it back
            # (the client-side state may be half set, so it goes back through the reset)
            pool.putconn(conn)
            raise
        self._millpond_source = pool
        self._millpond_pid = os.getpid()
        self._millpond_fresh = True
        return conn

    def init_connection_state(self) -> None:
        if self._millpond_source is None or not self._millpond_fresh:
            # not pooled, or called again by hand: Django's whole session set-up, as on
            # the stock backend
            super().init_connection_state()  # type: ignore[misc]
            return
        self._millpond_fresh = False
        # the pool's configure applied the backend's session settings when the connection
        # was opened, and again after every full reset: only Django's version check is left
        BaseDatabaseWrapper.init_connection_state(self)

    def is_usable(self) -> bool:
        if self.connection is None:
            # given back by _close(), where the stock wrapper would hold a closed connection
            return False
        return bool(super().is_usable())  # type: ignore[misc]

    def _close(self) -> None:
        pool = self._millpond_source
        if pool is None or self.connection is None:
            super()._close()  # type: ignore[misc]
            return
        conn = self.connection
        # the wrapper never touches the connection again: inside atomic() Django keeps its
        # reference (closed_in_transaction), and by then it may be lent to another thread
        self.connection = None
        self._millpond_source = None
        self._millpond_fresh = False
        if self._millpond_pid != os.getpid():
            # inherited across fork() (Django's parallel test workers, a fork after a
            # query): the parent's session; the child's pool keeps the object alive so that
            # no driver finalizer talks on the parent's socket, and nothing else touches it
            return
        with self.wrap_database_errors:  # type: ignore[attr-defined]
            pool.putconn(conn)
