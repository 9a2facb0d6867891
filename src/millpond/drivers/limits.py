"""The server's connection limits, read once when a pool opens ("pool too large for the server").

An adapter that knows its server answers ``server_limits(conn)`` with a :class:`ServerLimits`:
each limit that applies to this pool's sessions, with how many sessions count against it now.
The SQL and the reading of its one row live here, shared by the sync and async adapters of a
server; the pool decides what to say (:func:`tightest`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MYSQL_SQL",
    "PG_SQL",
    "Limit",
    "ServerLimits",
    "fetch_row",
    "mysql_limits",
    "mysql_server_limits",
    "mysql_sql",
    "pg_limits",
    "server_info",
    "tightest",
]


@dataclass(frozen=True, slots=True)
class Limit:
    """One ceiling on this pool's sessions."""

    #: sessions it allows
    value: int
    #: where it comes from, for the warning ("rolconnlimit 3 of role 'app' (pg_roles)")
    source: str
    #: sessions that count against it now, this pool's own included
    in_use: int


@dataclass(frozen=True, slots=True)
class ServerLimits:
    limits: tuple[Limit, ...]
    #: a pooler noticed between the pool and the server: then the counts are not this
    #: pool's to judge, and nothing is checked (what was noticed, for the log)
    pooler: str | None = None


def tightest(limits: ServerLimits, cap: int, own: int) -> tuple[Limit, int, int] | None:
    """The limit a pool of ``cap`` sessions cannot fit under, with the sessions of others
    that count against it and the headroom left for this pool; None if every limit has room.
    ``own`` (this pool's sessions open now) is part of its budget, not of the others'."""
    worst: tuple[Limit, int, int] | None = None
    for lim in limits.limits:
        others = max(lim.in_use - own, 0)
        headroom = max(lim.value - others, 0)
        if headroom < cap and (worst is None or headroom < worst[2]):
            worst = (lim, others, headroom)
    return worst


# -- PostgreSQL ------------------------------------------------------------------------------

#: one round trip. reserved_connections exists from PostgreSQL 16 (missing_ok → NULL before).
#: Only client backends count: walsenders and background workers have slots of their own.
#: pg_stat_activity shows every session's user and database to any role.
PG_SQL = """SELECT
 current_setting('max_connections')::int,
 current_setting('superuser_reserved_connections')::int,
 coalesce(current_setting('reserved_connections', true), '0')::int,
 (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
 (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user),
 (SELECT datconnlimit FROM pg_database WHERE datname = current_database()),
 (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
 (SELECT count(*) FROM pg_stat_activity
   WHERE backend_type = 'client backend' AND usename = current_user),
 (SELECT count(*) FROM pg_stat_activity
   WHERE backend_type = 'client backend' AND datname = current_database()),
 current_user, current_database(), pg_backend_pid()"""


def pg_limits(row: Sequence[Any], client_pid: int | None) -> ServerLimits:
    """Read :data:`PG_SQL`'s row. ``client_pid`` is the backend pid the driver was told at
    connect (BackendKeyData): a pooler (pgbouncer, pgcat, odyssey) hands out its own, so one
    that differs from ``pg_backend_pid()`` means the server's counts are the pooler's."""
    max_conn, su_reserved, reserved, superuser, rolconn, datconn = (row[i] for i in range(6))
    total, by_role, by_db, role, db, server_pid = (row[i] for i in range(6, 12))
    if client_pid is not None and int(client_pid) != int(server_pid):
        return ServerLimits(
            (),
            pooler=f"the driver's backend pid {client_pid} is not the "
            f"server's {server_pid}: a pooler such as pgbouncer sits in between",
        )
    if superuser:
        # superusers may take the reserved slots and are exempt from role and database limits
        return ServerLimits((Limit(int(max_conn), f"max_connections {max_conn}", int(total)),))
    source = f"max_connections {max_conn} minus superuser_reserved_connections {su_reserved}"
    if reserved:
        source += f" and reserved_connections {reserved}"
    limits = [Limit(int(max_conn) - int(su_reserved) - int(reserved), source, int(total))]
    if rolconn is not None and int(rolconn) >= 0:  # -1: no limit
        limits.append(
            Limit(int(rolconn), f"rolconnlimit {rolconn} of role {role!r} (pg_roles)", int(by_role))
        )
    if datconn is not None and int(datconn) >= 0:
        limits.append(
            Limit(
                int(datconn), f"datconnlimit {datconn} of database {db!r} (pg_database)", int(by_db)
            )
        )
    return ServerLimits(tuple(limits))


# -- MariaDB / MySQL -------------------------------------------------------------------------

#: The session value of max_user_connections is the account's own MAX_USER_CONNECTIONS when
#: it has one (else the global value), so no privilege on mysql.user is needed. Without the
#: PROCESS privilege PROCESSLIST shows only this user's threads: exactly what the per-account
#: limit counts. MySQL 5.7+ moved GLOBAL_STATUS to performance_schema; MariaDB keeps it here.
MYSQL_SQL = """SELECT @@GLOBAL.max_connections, @@GLOBAL.max_user_connections,
 @@SESSION.max_user_connections,
 (SELECT VARIABLE_VALUE FROM {status} WHERE VARIABLE_NAME = 'Threads_connected'),
 (SELECT COUNT(*) FROM information_schema.PROCESSLIST
   WHERE USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1)),
 CURRENT_USER()"""


def mysql_sql(server_info: object) -> str:
    """:data:`MYSQL_SQL` for the server the driver says it reached (its handshake version)."""
    text = server_info if isinstance(server_info, str) else ""
    mysql = bool(text) and "mariadb" not in text.lower()
    status = "performance_schema.global_status" if mysql else "information_schema.GLOBAL_STATUS"
    return MYSQL_SQL.format(status=status)


def mysql_limits(row: Sequence[Any]) -> ServerLimits:
    max_conn, global_user, session_user, threads, by_user, account = row[:6]
    limits = [Limit(int(max_conn), f"max_connections {max_conn} (@@max_connections)", int(threads))]
    # 0 = no per-account limit; MariaDB's -1 refuses every non-SUPER login, so no pool runs
    if int(session_user) > 0:
        if int(session_user) != int(global_user):
            source = f"MAX_USER_CONNECTIONS {session_user} of account {_text(account)!r}"
        else:
            source = f"max_user_connections {session_user} (@@max_user_connections, per account)"
        limits.append(Limit(int(session_user), source, int(by_user)))
    return ServerLimits(tuple(limits))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


# -- running it ------------------------------------------------------------------------------


def fetch_row(conn: Any, sql: str) -> Sequence[Any]:
    """Run ``sql`` on a DB-API connection and return its one row, leaving no transaction
    open (the query may have begun one outside autocommit; the session state ``configure``
    set is committed already)."""
    try:
        cur = conn.cursor()
        try:
            cur.execute(sql)
            row = cur.fetchone()
        finally:
            cur.close()
    finally:
        conn.rollback()
    if row is None:
        raise LookupError("the limits query returned no row")
    return tuple(row)


def server_info(conn: Any) -> object:
    """The version string a MySQL driver got in the handshake (no round trip), or None."""
    info = getattr(conn, "server_info", None)  # mysql-connector: get_server_info is deprecated
    if isinstance(info, str):
        return info
    get = getattr(conn, "get_server_info", None)
    return get() if callable(get) else None


def mysql_server_limits(conn: Any) -> ServerLimits:
    """:meth:`server_limits` of the sync MySQL/MariaDB adapters."""
    return mysql_limits(fetch_row(conn, mysql_sql(server_info(conn))))
