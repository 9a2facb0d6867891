"""Django's MySQL/MariaDB backend on a millpond pool: mysqlclient, or PyMySQL installed as
``MySQLdb`` (``pymysql.install_as_MySQLdb()``).

Only the connect and close of Django's own ``DatabaseWrapper`` change; see
:mod:`millpond.integrations.django`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.db.backends.mysql import base  # type: ignore[import-untyped]

from millpond.integrations.django.pooling import PooledWrapperMixin

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(PooledWrapperMixin, base.DatabaseWrapper):  # type: ignore[misc]
    def _millpond_configure(self, conn_params: Mapping[str, Any]) -> Callable[[Any], None]:
        autocommit = bool(self.settings_dict.get("AUTOCOMMIT", True))
        # get_connection_params() validated and stored the level; "" or None: the server's
        isolation_level: str | None = self.isolation_level or None
        auto_is_null: list[bool] = []  # learnt from the first connection

        def configure(conn: Any) -> None:
            # as Django does at connect (a workaround for old mysqlclient encoders)
            encoders = getattr(conn, "encoders", None)
            if encoders is not None and encoders.get(bytes) is bytes:
                encoders.pop(bytes)
            cursor = conn.cursor()
            try:
                if not auto_is_null:
                    cursor.execute("SELECT @@SQL_AUTO_IS_NULL")
                    auto_is_null.append(bool(cursor.fetchone()[0]))
                # Django's session settings, one statement each: PyMySQL has no
                # multi-statements unless the user asked for them
                if auto_is_null[0]:
                    cursor.execute("SET SQL_AUTO_IS_NULL = 0")
                if isolation_level:
                    cursor.execute(
                        f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation_level.upper()}"
                    )
            finally:
                cursor.close()
            if bool(conn.get_autocommit()) != autocommit:
                conn.autocommit(autocommit)

        return configure
