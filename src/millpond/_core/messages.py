"""Errors and warnings both shells raise, built from the core's state (no I/O)."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from millpond.errors import ConnectError, ForeignConnection, PoolClosed, PoolError, PoolTimeout

if TYPE_CHECKING:
    from millpond._core.record import ConnRecord
    from millpond._core.state import PoolCore

#: a connect in flight this long (seconds) is named in a checkout timeout's message
HUNG_CONNECT = 1.0

__all__ = [
    "borrower_stack",
    "closed_error",
    "connect_error",
    "connect_failure",
    "first_line",
    "foreign_error",
    "format_stack",
    "fresh_error",
    "garbage_collected",
    "leak_held",
    "leak_returned",
    "min_size_timeout",
    "timeout_error",
]

#: frames of millpond itself (shells, compat layers, integrations) are not "where it was
#: borrowed": the stack starts at the first frame of the caller's own code
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def borrower_stack(frame: Any) -> traceback.StackSummary:
    """Where a connection was borrowed. Source lines are read only when the stack is shown."""
    while frame is not None and frame.f_code.co_filename.startswith(_OWN_DIR):
        frame = frame.f_back
    return traceback.StackSummary.extract(traceback.walk_stack(frame), limit=12, lookup_lines=False)


def format_stack(stack: traceback.StackSummary | None) -> str:
    if stack is None:
        return "  (unknown)"
    return "".join(reversed(stack.format()))


def first_line(stack: traceback.StackSummary | None) -> str:
    if not stack:
        return "unknown"
    f = stack[0]
    return f"{f.filename}:{f.lineno} in {f.name}"


def closed_error(core: PoolCore, opened: bool) -> PoolClosed:
    if not opened:
        return PoolClosed(
            f"pool {core.name!r} is not open; call pool.open() or use it as a context manager"
        )
    return PoolClosed(f"pool {core.name!r} is closed")


def timeout_error(core: PoolCore, budget: float, now: float) -> PoolTimeout:
    msg = (
        f"pool {core.name!r}: no connection available within {budget:g}s "
        f"(size={core.size}, in_use={len(core.lent)}, idle={len(core.idle)}, "
        f"waiting={len(core.waiters)}, max_size={core.max_size}"
    )
    started = [at for at, _gen in core.connecting.values()]
    if started and now - min(started) >= HUNG_CONNECT:
        # "size=0" alone reads like a busy pool; connects that never finish are another story
        msg += (
            f"; {len(started)} connect(s) have not finished, the oldest started "
            f"{now - min(started):.1f}s ago: the server or the network may be hanging"
        )
    if core.closing:
        msg += f"; {core.closing} close(s) in flight still count against the cap"
    oldest = core.oldest_borrower(now)
    if oldest is not None and oldest.borrower is not None:
        msg += (
            f"; oldest borrower has held its connection for {now - oldest.lent_at:.1f}s, "
            f"borrowed at {first_line(oldest.borrower)}"
        )
    return PoolTimeout(msg + ")")


def connect_error(core: PoolCore) -> ConnectError:
    """A fresh ConnectError carrying the last connect failure (each caller gets its own)."""
    last = core.last_error
    if isinstance(last, ConnectError):
        err = ConnectError(str(last))
        err.__cause__ = last.__cause__
        return err
    return ConnectError(f"pool {core.name!r}: the database cannot be reached")


def foreign_error(core: PoolCore, conn: Any) -> ForeignConnection:
    if any(r.conn is conn for r in core.idle):
        return ForeignConnection(
            f"pool {core.name!r}: this connection was already returned (returned twice?)"
        )
    return ForeignConnection(
        f"pool {core.name!r}: this connection is not lent by this pool "
        "(returned twice, or it belongs to another pool)"
    )


def connect_failure(
    core: PoolCore,
    description: str,
    exc: BaseException,
    redact: Callable[[str], str],
    secrets: Iterable[str],
) -> ConnectError:
    """Wrap a driver's connect error, with every secret stripped from both (driver messages
    often echo the DSN)."""
    exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
    cause: BaseException = exc
    if any(s in str(exc) for s in secrets):  # the text did not come from args: replace it
        cause = PoolError(redact(str(exc)))
    failure = ConnectError(
        f"pool {core.name!r}: cannot connect to {description}: {type(exc).__name__}: {cause}"
    )
    failure.__cause__ = cause
    return failure


def fresh_error(error: BaseException) -> BaseException:
    """A copy of an error shared by several waiters (a failed connect, a close), so that each
    caller raises its own object and tracebacks do not pile up across threads or tasks."""
    try:
        copy = type(error)(*error.args)
    except Exception:
        return error
    copy.__cause__ = error.__cause__
    return copy


def min_size_timeout(core: PoolCore, budget: float) -> PoolTimeout:
    return PoolTimeout(
        f"pool {core.name!r}: {core.size} of min_size={core.min_size} connections open "
        f"after {budget:g}s"
    )


def leak_held(core: PoolCore, rec: ConnRecord, now: float) -> str:
    return (
        f"pool {core.name!r}: a connection has been held for {now - rec.lent_at:.1f}s "
        f"(leak_timeout={core.leak_timeout:g}s); borrowed at:\n{format_stack(rec.borrower)}"
    )


def leak_returned(core: PoolCore, rec: ConnRecord, now: float) -> str:
    return (
        f"pool {core.name!r}: a leaked connection came back after {now - rec.lent_at:.1f}s "
        f"(borrowed at {first_line(rec.borrower)})"
    )


def garbage_collected(core: PoolCore, rec: ConnRecord) -> str:
    where = first_line(rec.borrower) if rec.borrower else "unknown (set leak_timeout to record where)"
    return (
        f"pool {core.name!r}: a connection was garbage-collected without being returned; "
        f"its slot is recovered. Borrowed at: {where}"
    )
