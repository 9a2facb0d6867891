"""Drop-in layers for code written against psycopg2.pool, mysql.connector.pooling and DBUtils.

Each layer keeps its peer's names, signatures, return types, exceptions and observable
behaviour, and lends connections from a :class:`millpond.Pool` underneath::

    from millpond.compat import psycopg2 as pool          # was: from psycopg2 import pool
    from millpond.compat import mysql as pooling          # was: from mysql.connector import pooling
    from millpond.compat.dbutils import PooledDB          # was: from dbutils.pooled_db import PooledDB

The layers use millpond's public API only. What they share lives in private modules of this
package: ``_shared`` (the options a compat pool takes, opening the engine pool the way the peers
open theirs, borrowing under the peer's own limit) and ``_reclaim`` (connections whose proxy was
dropped without ``close()``, and what a forked child must leave alone). Importing this package
starts nothing; the first compat pool starts the reclaimer thread.
See ``docs/migrating.md`` for what stays identical and what could not.
"""

from __future__ import annotations

__all__: list[str] = []
