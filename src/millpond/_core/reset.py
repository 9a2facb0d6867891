"""Which steps a returned connection needs before the next borrower may have it.

A pure decision, shared by both shells: they read the session's state without I/O (the
driver's transaction status, whether autocommit drifted from the pool's setting), ask
:func:`reset_steps` what to do, and carry the steps out with their own I/O verbs.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

__all__ = ["Step", "reset_steps"]


class Step(enum.Enum):
    ROLLBACK = "rollback"  # end the borrower's transaction
    FULL_RESET = "full_reset"  # a pristine session (DISCARD ALL, reset-connection)
    CONFIGURE = "configure"  # run configure= again: the full reset wiped what it set
    CALLBACK = "callback"  # the user's reset= callable
    RESTORE_AUTOCOMMIT = "restore_autocommit"  # back to the mode the pool opened it in


#: the steps that change the server session, and so count as a reset in ``stats()``
RESETTING = frozenset({Step.ROLLBACK, Step.FULL_RESET, Step.CALLBACK})


def reset_steps(
    policy: str | Callable[[Any], Any] | None,
    *,
    dirty: bool,
    broken: bool,
    autocommit_drift: bool,
    full_reset_supported: bool,
    configure: bool,
) -> tuple[tuple[Step, ...], str | None]:
    """The steps for one return, or a reason to discard the connection instead.

    ``dirty``: the driver reports a transaction open (or cannot tell). ``broken``: it reports
    the session unusable. ``autocommit_drift``: the borrower changed the autocommit mode.
    A borrower who only toggled autocommit owes the server no ROLLBACK, whatever the policy.
    """
    if broken:
        return (), "broken"
    steps: list[Step] = []
    if policy == "full":
        if not full_reset_supported:
            return (), "reset_by_reconnect"
        steps.append(Step.FULL_RESET)
        if configure:
            steps.append(Step.CONFIGURE)
        # a full reset may also reset the server's autocommit: always check it afterwards
        steps.append(Step.RESTORE_AUTOCOMMIT)
        return tuple(steps), None
    if dirty and policy is not None:
        steps.append(Step.ROLLBACK)
    if callable(policy):
        steps.append(Step.CALLBACK)
        steps.append(Step.RESTORE_AUTOCOMMIT)
    elif autocommit_drift:
        steps.append(Step.RESTORE_AUTOCOMMIT)
    return tuple(steps), None
