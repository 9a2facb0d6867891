"""Django's PostgreSQL backend (psycopg 3 or psycopg2, whichever Django uses) on a millpond pool.

Only the connect and close of Django's own ``DatabaseWrapper`` change; see
:mod:`millpond.integrations.django`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.db.backends.postgresql import base  # type: ignore[import-untyped]
from django.db.backends.postgresql.psycopg_any import (  # type: ignore[import-untyped]
    IsolationLevel,
    is_psycopg3,
)

from millpond.integrations.django.pooling import PooledWrapperMixin

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(PooledWrapperMixin, base.DatabaseWrapper):  # type: ignore[misc]
    @property
    def pool(self) -> None:
        # Django's own psycopg_pool stays off: OPTIONS["pool"] means millpond's here
        return None

    def _millpond_signature(self) -> tuple[Any, ...]:
        # psycopg 3's adapters and the session time zone follow these settings
        return (settings.USE_TZ, self.timezone_name)

    def _millpond_configure(self, conn_params: Mapping[str, Any]) -> Callable[[Any], None]:
        autocommit = bool(self.settings_dict.get("AUTOCOMMIT", True))
        # Django's own session set-up (time zone, assume_role); this wrapper's settings are
        # those of every thread's wrapper of the alias, which the pool's signature checks
        configure_session = self._configure_connection

        def configure(conn: Any) -> None:
            if not is_psycopg3:
                # as Django does at connect: JSONField decodes itself
                extras = importlib.import_module("psycopg2.extras")
                extras.register_default_jsonb(conn_or_curs=conn, loads=lambda x: x)
            conn.autocommit = True
            configure_session(conn)
            conn.autocommit = autocommit

        return configure

    def _millpond_after_borrow(self, conn: Any) -> None:
        # Django reads the isolation level from OPTIONS at every connect; a pooled
        # connection gets it the same way (client-side: psycopg sends it with BEGIN)
        level = self.settings_dict["OPTIONS"].get("isolation_level")
        if level is None:
            self.isolation_level = IsolationLevel.READ_COMMITTED
            if conn.isolation_level is not None:
                conn.isolation_level = None
            return
        try:
            self.isolation_level = IsolationLevel(level)
        except ValueError:
            raise ImproperlyConfigured(
                f"Invalid transaction isolation level {level} specified. Use one of the "
                "psycopg.IsolationLevel values."
            ) from None
        if conn.isolation_level != self.isolation_level:
            conn.isolation_level = self.isolation_level

    def ensure_timezone(self) -> bool:
        # Django closes its pool here so that new connections get the new time zone; the
        # pool's signature includes the time zone, so the next connect makes a new pool
        if self.connection is None:
            return False
        return bool(self._configure_timezone(self.connection))
