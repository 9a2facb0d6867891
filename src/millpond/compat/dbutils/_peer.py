"""What the DBUtils layer takes from DBUtils itself when it is installed: the exception
classes (each of the layer's errors is also DBUtils' own, so ``except PooledDBError`` in
existing code keeps catching) and the version it reports."""

from __future__ import annotations

import importlib
from typing import Any

import millpond


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:  # DBUtils itself is optional: the layer only borrows its error classes
        return None


POOLED: Any = _import("dbutils.pooled_db")
PERSISTENT: Any = _import("dbutils.persistent_db")
STEADY: Any = _import("dbutils.steady_db")

#: DBUtils' version where it is installed (code may check it), else millpond's
__version__: str = getattr(_import("dbutils"), "__version__", millpond.__version__)


def peer_class(module: Any, name: str) -> Any:
    """DBUtils' exception class ``name``, or a stand-in when DBUtils is not installed (one
    per name, so that no class lists the same base twice)."""
    cls = getattr(module, name, None) if module is not None else None
    if cls is None:
        cls = type(f"_Absent{name}", (Exception,), {"__module__": __name__})
    return cls


class PooledDBError(millpond.PoolError, peer_class(POOLED, "PooledDBError")):  # type: ignore[misc]
    """General PooledDB error (DBUtils' own where it is installed, and a millpond error)."""


class InvalidConnectionError(PooledDBError, peer_class(POOLED, "InvalidConnectionError")):  # type: ignore[misc]
    """Database connection is invalid (the proxy was closed)."""


class TooManyConnectionsError(PooledDBError, peer_class(POOLED, "TooManyConnectionsError")):  # type: ignore[misc]
    """Too many database connections were opened."""


class PersistentDBError(millpond.PoolError, peer_class(PERSISTENT, "PersistentDBError")):  # type: ignore[misc]
    """General PersistentDB error."""


class NotSupportedError(
    PooledDBError,
    peer_class(POOLED, "NotSupportedError"),  # type: ignore[misc]
    peer_class(PERSISTENT, "NotSupportedError"),  # type: ignore[misc]
):
    """DB-API module not supported (not thread-safe): DBUtils' pooled_db and persistent_db
    errors of that name in one class."""


class SteadyDBError(millpond.PoolError, peer_class(STEADY, "SteadyDBError")):  # type: ignore[misc]
    """General SteadyDB error."""


class InvalidCursorError(SteadyDBError, peer_class(STEADY, "InvalidCursorError")):  # type: ignore[misc]
    """Database cursor is invalid."""


# DBUtils' deprecated alias names
InvalidConnection = InvalidConnectionError
TooManyConnections = TooManyConnectionsError
InvalidCursor = InvalidCursorError
