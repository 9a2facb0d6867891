"""DBUtils' ``PooledDB`` and ``PersistentDB`` on millpond: change the import, keep the code.

::

    from millpond.compat.dbutils import PooledDB   # was: from dbutils.pooled_db import PooledDB

    pool = PooledDB(psycopg2, maxconnections=5, host="127.0.0.1", dbname="test")
    db = pool.connection()            # a proxy, as with DBUtils
    cur = db.cursor(); cur.execute("SELECT 1"); cur.fetchall()
    db.close()                        # back to the pool (so does ``del db``)

As in DBUtils: ``creator`` is a DB-API 2 module or a function returning connections, and every
other argument keeps its meaning (``mincached`` opened at start, ``maxcached`` idle kept,
``maxshared`` shared connections for modules with threadsafety > 1, ``maxconnections`` with
``blocking`` or ``TooManyConnectionsError``, ``maxusage`` operations before a reconnect,
``setsession`` run on every new connection, ``failures``/``isfatal``/``ping`` for the
"hardened" connections, which reconnect and retry a statement when the connection is lost
outside a transaction). Connections come wrapped, as DBUtils wraps them: the proxy's ``close()``
returns the connection, after which the proxy raises ``InvalidConnectionError``.

What millpond adds: an idle connection is validated before it is lent, with the driver's own
cheap ping (DBUtils pings only drivers that have a ``ping()`` method, which psycopg2 and sqlite3
lack), every connection goes back rolled back, a cursor refuses use once its connection went
back to the pool (``InvalidCursorError``), the pool is fork-safe, and ``stats()``.
``pool_options=`` passes millpond.Pool options: ``timeout`` bounds what ``blocking=True`` waits,
``leak_timeout`` reports connections never closed, and so on.
"""

from __future__ import annotations

from millpond.compat.dbutils._peer import __version__
from millpond.compat.dbutils.persistent_db import PersistentDB, PersistentDBError
from millpond.compat.dbutils.pooled_db import (
    InvalidConnection,
    InvalidConnectionError,
    NotSupportedError,
    PooledDB,
    PooledDBError,
    PooledDedicatedDBConnection,
    PooledSharedDBConnection,
    SharedDBConnection,
    TooManyConnections,
    TooManyConnectionsError,
)
from millpond.compat.dbutils.steady_db import (
    InvalidCursor,
    InvalidCursorError,
    SteadyDBConnection,
    SteadyDBCursor,
    SteadyDBError,
)

__all__ = [
    "InvalidConnection",
    "InvalidConnectionError",
    "InvalidCursor",
    "InvalidCursorError",
    "NotSupportedError",
    "PersistentDB",
    "PersistentDBError",
    "PooledDB",
    "PooledDBError",
    "PooledDedicatedDBConnection",
    "PooledSharedDBConnection",
    "SharedDBConnection",
    "SteadyDBConnection",
    "SteadyDBCursor",
    "SteadyDBError",
    "TooManyConnections",
    "TooManyConnectionsError",
    "__version__",
]
