"""Django requests per second: no pool, Django's own pool, millpond's backend (PostgreSQL).

A request is a real WSGI call into Django (``WSGIHandler``: URL resolution, a view running
``SELECT 1`` through ``connection.cursor()``, the response closed, which sends Django's
``request_finished`` and so closes — or returns to its pool — the connection). ``--threads``
threads make requests at once. The modes are database aliases of one Django process, all on
the same PostgreSQL database with psycopg 3:

- ``stock``: Django's backend, ``CONN_MAX_AGE = 0``: a new connection per request;
- ``django-pool``: the same backend with ``OPTIONS["pool"]`` (psycopg_pool);
- ``millpond``: ``millpond.integrations.django.postgresql`` with its default full reset
  (``DISCARD ALL`` at every return: each request gets a session as clean as a new one);
- ``millpond-rollback``: the same with ``reset="rollback"``, what Django's pool does.

Both pools hold ``--pool-size`` connections (``min_size = max_size``). The modes run in
alternating blocks of about 0.3 s (so a burst of load on a shared machine hits all of them)
for ``--seconds`` per mode in all; requests per second is the median of the per-block rates,
the ratio the median of the per-round ratios to ``stock``. No timed assertion: ratios only.

    python benchmarks/django_requests.py [--threads 8] [--pool-size 4] [--seconds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import threading
import time
from typing import Any

import _common as c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 0.3  # seconds per block
MODES = ["stock", "django-pool", "millpond", "millpond-rollback"]


def _setup(pool_size: int) -> Any:
    """Configure Django once for this process; the WSGI application."""
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from django.conf import settings

    base = {
        "HOST": c.PG_HOST, "PORT": str(c.PG_PORT), "USER": c.PG_USER, "NAME": c.PG_DB,
        "CONN_MAX_AGE": 0,
    }
    pg, ours = "django.db.backends.postgresql", "millpond.integrations.django.postgresql"
    pool = {"min_size": pool_size, "max_size": pool_size, "timeout": 30}
    settings.configure(
        DEBUG=False, SECRET_KEY="bench", ALLOWED_HOSTS=["*"], USE_TZ=True,
        ROOT_URLCONF=__name__, MIDDLEWARE=[], INSTALLED_APPS=[], LOGGING_CONFIG=None,
        DATABASES={
            "default": {**base, "ENGINE": pg},
            "stock": {**base, "ENGINE": pg},
            "django-pool": {**base, "ENGINE": pg, "OPTIONS": {"pool": pool}},
            "millpond": {**base, "ENGINE": ours, "OPTIONS": {"pool": pool}},
            "millpond-rollback": {
                **base, "ENGINE": ours, "OPTIONS": {"pool": {**pool, "reset": "rollback"}},
            },
        },
    )
    import django
    from django.core.handlers.wsgi import WSGIHandler

    django.setup()
    return WSGIHandler()


def view(request: Any, alias: str) -> Any:
    from django.db import connections
    from django.http import HttpResponse

    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return HttpResponse(b"ok")


def _urlpatterns() -> list[Any]:
    from django.urls import path

    return [path("q/<str:alias>/", view)]


def __getattr__(name: str) -> Any:
    # ROOT_URLCONF is this module: Django reads urlpatterns only after setup()
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


def _call(app: Any, alias: str) -> None:
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": f"/q/{alias}/", "SERVER_NAME": "bench",
        "SERVER_PORT": "80", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
    }
    status: list[str] = []
    result = app(environ, lambda s, h, e=None: status.append(s))
    try:
        b"".join(result)
    finally:
        result.close()  # request_finished: the connection is closed or given back
    if not status or not status[0].startswith("200"):
        raise RuntimeError(f"{alias}: {status}")


def _block(app: Any, alias: str, threads: int, seconds: float) -> float:
    """Requests per second of ``threads`` threads on ``alias`` over about ``seconds``."""
    counts = [0] * threads
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def worker(i: int) -> None:
        start.wait()
        try:
            while not stop.is_set():
                _call(app, alias)
                counts[i] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def run(threads: int = 8, pool_size: int = 4, seconds: float = 3.0) -> dict[str, Any]:
    app = _setup(pool_size)
    for alias in MODES:  # warm up: pools filled, code paths imported
        _block(app, alias, threads, 0.1)
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    rounds = max(1, round(seconds / BLOCK))
    for _ in range(rounds):
        for alias in MODES:
            rates[alias].append(_block(app, alias, threads, BLOCK))
    from millpond.integrations.django import close_pools

    close_pools()
    ratios = {
        m: c.median([r / s for r, s in zip(rates[m], rates["stock"], strict=True)])
        for m in MODES
    }
    return {
        "threads": threads, "pool_size": pool_size, "rounds": rounds,
        "rate": {m: c.median(rates[m]) for m in MODES}, "ratio": ratios,
    }


def render(r: dict[str, Any]) -> str:
    rows = [[m, f"{r['rate'][m]:,.0f}", f"{r['ratio'][m]:.2f}x"] for m in MODES]
    return (
        f"Django requests ({r['threads']} threads, pools of {r['pool_size']}, "
        f"{r['rounds']} rounds; ratio to stock, median per round)\n\n"
        + c.table(["mode", "requests/s", "vs stock"], rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    problem = c.server_up(c.pg_connect)
    if problem:
        raise SystemExit(f"PostgreSQL: {problem}")
    print(render(run(args.threads, args.pool_size, args.seconds)))


if __name__ == "__main__":
    main()
