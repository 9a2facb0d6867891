"""Pool options taken from a framework's configuration, checked before a pool is built.

A typo in a settings file should fail at start-up with the setting's name, not as a
``TypeError`` about an unexpected keyword deep inside a request.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import millpond

__all__ = ["POOL_OPTIONS", "build_pool_kwargs"]

#: every keyword ``millpond.Pool`` and ``millpond.AsyncPool`` accept after the target
POOL_OPTIONS: frozenset[str] = frozenset(
    name
    for name, param in inspect.signature(millpond.Pool).parameters.items()
    if param.kind is inspect.Parameter.KEYWORD_ONLY
)


def build_pool_kwargs(
    options: object, *, source: str, reserved: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``options`` (from ``source``, a setting's name for the error message) as ``Pool``
    keyword arguments. Raises :class:`millpond.ConfigError` for a value that is not a mapping,
    a key that is not an option of ``Pool``, or a key in ``reserved`` (one the integration
    sets itself). The values are checked by the pool, whose errors name the option."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise millpond.ConfigError(
            f"{source} must be a dict of millpond Pool options, not {type(options).__name__}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if not isinstance(key, str):
            raise millpond.ConfigError(f"{source} has a key {key!r} that is not a string")
        if key in reserved:
            raise millpond.ConfigError(f"{source}[{key!r}] is set by the integration itself")
        if key not in POOL_OPTIONS:
            known = ", ".join(sorted(POOL_OPTIONS - reserved))
            raise millpond.ConfigError(
                f"{source}[{key!r}] is not a millpond Pool option; the options are: {known}"
            )
        kwargs[key] = value
    return kwargs
