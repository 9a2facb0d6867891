"""One process, one Django: what the millpond backends refuse, printed as JSON on stdout.

Run by ``test_django_refusals.py`` in a subprocess (Django's settings are process-global) with
``MP_DJ_BACKEND`` (postgresql | mysql) and the server's URL in ``MILLPOND_PG_URL`` /
``MILLPOND_MYSQL_URL``. Every case is a database alias of its own; the output maps each alias
to the ``ImproperlyConfigured`` message its first connect (or ``get_pool``) raised, or to what
it did when nothing was refused. The aliases point at the existing ``test`` database and write
nothing.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any
from urllib.parse import urlsplit

BACKEND = os.environ["MP_DJ_BACKEND"]

if BACKEND == "mysql":
    import pymysql

    pymysql.install_as_MySQLdb()
    url = urlsplit(os.environ.get("MILLPOND_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"))
    BASE: dict[str, Any] = {
        "USER": url.username or "root", "PASSWORD": url.password or "",
        "HOST": url.hostname or "127.0.0.1", "PORT": str(url.port or 3306),
        "NAME": url.path.lstrip("/") or "test",
    }
else:
    url = urlsplit(os.environ.get("MILLPOND_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    BASE = {
        "USER": url.username or "postgres", "PASSWORD": url.password or "",
        "HOST": url.hostname or "127.0.0.1", "PORT": str(url.port or 5432),
        "NAME": url.path.lstrip("/") or "test",
    }

MILLPOND = f"millpond.integrations.django.{BACKEND}"
STOCK = f"django.db.backends.{BACKEND}"
BAD_ISOLATION: Any = 99 if BACKEND == "postgresql" else "chaos"


def alias(pool: Any = None, engine: str = MILLPOND, **settings: Any) -> dict[str, Any]:
    options: dict[str, Any] = dict(settings.pop("OPTIONS", {}))
    if pool is not None:
        options["pool"] = pool
    return {**BASE, "ENGINE": engine, "OPTIONS": options, "CONN_MAX_AGE": 0, **settings}


#: alias -> its settings; what each is expected to do is asserted by the test
CASES: dict[str, dict[str, Any]] = {
    "pool_not_a_dict": alias(pool=4),
    "pool_a_string": alias(pool="yes"),
    "pool_reserved_keys": alias(pool={"target": "postgresql://elsewhere/db", "open": False}),
    "pool_connect_kwargs": alias(pool={"connect_kwargs": {"connect_timeout": 1}}),
    "conn_max_age": alias(pool=True, CONN_MAX_AGE=60),
    "persistent_connections": alias(pool={"max_size": 2}, CONN_MAX_AGE=None),
    "health_checks_without_pre_ping": alias(
        pool={"pre_ping": False}, CONN_HEALTH_CHECKS=True
    ),
    "configure_not_callable": alias(pool={"configure": "SET search_path TO public"}),
    "unknown_pool_option": alias(pool={"max_sizee": 4}),
    "pool_option_out_of_range": alias(pool={"max_size": 0}),
    "bad_isolation_level": alias(pool=True, OPTIONS={"isolation_level": BAD_ISOLATION}),
    # not refused: the controls
    "health_checks_with_pool": alias(pool={"max_size": 2}, CONN_HEALTH_CHECKS=True),
    # CONN_MAX_AGE > 0 without a pool: Django's own persistent connections, allowed
    "pool_false": alias(pool=False, CONN_MAX_AGE=60),
    "no_pool_option": alias(CONN_MAX_AGE=60),
    "stock_engine": alias(engine=STOCK),
}

from django.conf import settings  # noqa: E402

settings.configure(
    DATABASES={"default": alias(pool=True), **CASES},
    USE_TZ=True, TIME_ZONE="UTC", INSTALLED_APPS=[], LOGGING_CONFIG=None,
)

import django  # noqa: E402

django.setup()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.db import connections  # noqa: E402

from millpond.integrations.django import close_pools, get_pool, pooling  # noqa: E402


def attempt(name: str) -> dict[str, Any]:
    """Connect on alias ``name``: the refusal, or what the connection and pool look like."""
    wrapper = connections[name]
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
            (one,) = cursor.fetchone()
    except ImproperlyConfigured as exc:
        entry = pooling._pools.get(name)
        # a refusal after the borrow must have given the connection back
        lent = None if entry is None else entry[1].stats().in_use
        return {"refused": str(exc), "pool_made": entry is not None, "lent_after": lent}
    out: dict[str, Any] = {"refused": None, "select": one}
    try:
        pool = get_pool(name)
    except ImproperlyConfigured as exc:
        out["get_pool"] = str(exc)
    else:
        out["get_pool"] = None
        out["in_use"] = pool.stats().in_use
        wrapper.close()
        # a checkout after the return: with CONN_HEALTH_CHECKS it must be pinged
        before = pool.stats().pings
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
        out["pings_on_reuse"] = pool.stats().pings - before
    wrapper.close()
    return out


def main() -> None:
    result = {name: attempt(name) for name in CASES}
    connections.close_all()
    close_pools()
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
