"""millpond: a fast, safe database connection pool for threads and asyncio."""

from millpond._async.pool import AsyncPool
from millpond._core.events import PoolEvent
from millpond._core.histogram import HistogramSnapshot
from millpond._core.stats import PoolStats
from millpond._sync.pool import Pool
from millpond.errors import (
    ConfigError,
    ConnectError,
    ForeignConnection,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyWaiters,
    WrongEventLoop,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncPool",
    "ConfigError",
    "ConnectError",
    "ForeignConnection",
    "HistogramSnapshot",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolEvent",
    "PoolStats",
    "PoolTimeout",
    "TooManyWaiters",
    "WrongEventLoop",
    "__version__",
]
