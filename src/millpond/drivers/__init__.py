"""Driver adapters: one module per driver, behind :class:`SyncAdapter`."""

from millpond.drivers.base import SyncAdapter, TxStatus, redact

__all__ = ["SyncAdapter", "TxStatus", "redact"]
