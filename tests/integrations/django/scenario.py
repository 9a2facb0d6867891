"""One process, one Django: a scenario of the backend tests, printed as JSON on stdout.

Run by ``test_django_backend.py`` in a subprocess (Django's settings are process-global), with
the environment of ``djproject.settings`` and ``MP_DJ_SCENARIO``: ``requests`` (migrations,
16 threads through the test client, session isolation, a raising view, the server-side cap)
or ``testcase`` (Django's test runner on ``djproject.shop.tests``: test database creation,
TestCase rollback) or ``wrapper`` (what Django's own test suite pokes: a second
``init_connection_state()``, ``is_usable()`` after ``_close()``, ``close()`` after fork).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproject.settings")

import django

django.setup()
# the raising view's traceback is expected; the parent reads the status codes
logging.getLogger("django.request").setLevel(logging.CRITICAL)

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import close_old_connections, connection, connections  # noqa: E402
from django.test import Client  # noqa: E402

THREADS = 16
ROUNDS = int(os.environ.get("MP_DJ_ROUNDS", "6"))


def server_sessions() -> int:
    """Sessions the server has for this test's database (its own monitor connection aside)."""
    if settings.BACKEND == "postgresql":
        import psycopg

        with psycopg.connect(
            host=settings.DATABASES["default"]["HOST"], port=settings.DATABASES["default"]["PORT"],
            user=settings.DATABASES["default"]["USER"], dbname="postgres", autocommit=True,
        ) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (settings.DATABASES["default"]["OPTIONS"]["application_name"],),
            ).fetchone()
            return int(row[0]) if row else 0
    import pymysql

    conn = pymysql.connect(
        host=settings.DATABASES["default"]["HOST"], port=int(settings.DATABASES["default"]["PORT"]),
        user=settings.DATABASES["default"]["USER"], password=settings.DATABASES["default"]["PASSWORD"],
    )
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = %s",
                (settings.DATABASES["default"]["NAME"],),
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def open_transactions() -> int:
    """Server sessions of this test left inside a transaction."""
    if settings.BACKEND == "postgresql":
        import psycopg

        with psycopg.connect(
            host=settings.DATABASES["default"]["HOST"], port=settings.DATABASES["default"]["PORT"],
            user=settings.DATABASES["default"]["USER"], dbname="postgres", autocommit=True,
        ) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND state LIKE 'idle in transaction%%'",
                (settings.DATABASES["default"]["OPTIONS"]["application_name"],),
            ).fetchone()
            return int(row[0]) if row else 0
    import pymysql

    conn = pymysql.connect(
        host=settings.DATABASES["default"]["HOST"], port=int(settings.DATABASES["default"]["PORT"]),
        user=settings.DATABASES["default"]["USER"], password=settings.DATABASES["default"]["PASSWORD"],
    )
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM information_schema.INNODB_TRX t"
                " JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id"
                " WHERE p.DB = %s",
                (settings.DATABASES["default"]["NAME"],),
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def pool_stats() -> dict[str, Any] | None:
    if settings.ENGINE_KIND != "millpond":
        return None
    from millpond.integrations.django import get_pool

    s = get_pool().stats()
    return {"size": s.size, "idle": s.idle, "in_use": s.in_use, "waiting": s.waiting}


def request(client: Client, path: str) -> Any:
    response = client.get(path)
    # the test client keeps Django from closing connections at the end of a request (its
    # own tests share one); a server's request_finished does this
    close_old_connections()
    return response


def scenario_requests() -> dict[str, Any]:
    out: dict[str, Any] = {}
    call_command("migrate", verbosity=0)
    from djproject.shop import views
    from djproject.shop.models import Item, Order

    Item.objects.create(name="widget", stock=10_000)
    connection.close()

    # the session settings Django applies at connect, on a fresh and on a reused connection
    client = Client()
    out["session"] = [request(client, "/session/").json() for _ in range(3)]

    # one thread: set, then show on (very likely) the same pooled connection
    solo_leaks = 0
    for _ in range(20):
        request(client, "/leak-set/")
        solo_leaks += request(client, "/leak-show/").json()["leaked"]
    out["solo_leaks"] = solo_leaks

    peak = 0
    stop = threading.Event()

    def monitor() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, server_sessions())
            time.sleep(0.02)

    errors: list[str] = []
    statuses: dict[str, int] = {}
    leaks = 0
    shows = 0
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def worker() -> None:
        nonlocal leaks, shows
        c = Client(raise_request_exception=False)
        start.wait()
        try:
            for i in range(ROUNDS):
                for path in ("/order/", "/leak-set/", "/leak-show/", "/boom/" if i % 3 == 0 else "/order/"):
                    r = request(c, path)
                    with lock:
                        statuses[f"{path}{r.status_code}"] = statuses.get(f"{path}{r.status_code}", 0) + 1
                        if path == "/leak-show/":
                            shows += 1
                            leaks += r.json()["leaked"]
        except Exception as exc:  # reported, not raised: the parent asserts on it
            errors.append(repr(exc))
        finally:
            connections.close_all()

    mon = threading.Thread(target=monitor)
    mon.start()
    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    mon.join()
    out.update(
        errors=errors, statuses=statuses, leaks=leaks, shows=shows, peak_sessions=peak,
        committed=views.committed,
        orders_kept=Order.objects.filter(note="kept").count(),
        orders_doomed=Order.objects.filter(note="doomed").count(),
        orders_boom=Order.objects.filter(note="boom").count(),
        stock=Item.objects.get(name="widget").stock,
    )
    connection.close()
    out["open_transactions"] = open_transactions()
    out["pool_after"] = pool_stats()
    out["sessions_after"] = server_sessions()
    return out


def scenario_testcase() -> dict[str, Any]:
    from django.test.utils import get_runner

    runner = get_runner(settings)(verbosity=0, interactive=False)
    failures = runner.run_tests(["djproject.shop.tests"])
    return {"failures": failures}


def _session_setting() -> str:
    """The session setting Django's init_connection_state() applies on this backend."""
    with connection.cursor() as cursor:
        if settings.BACKEND == "postgresql":
            cursor.execute("SHOW TIME ZONE")
        else:
            cursor.execute(
                "SHOW SESSION VARIABLES"
                " WHERE Variable_name IN ('tx_isolation', 'transaction_isolation')"
            )
        row = cursor.fetchone()
        return str(row[-1])


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_backend_pid()" if settings.BACKEND == "postgresql" else "SELECT CONNECTION_ID()"
        )
        return int(cursor.fetchone()[0])


def scenario_wrapper() -> dict[str, Any]:
    """What Django's own test suite pokes on a wrapper: init_connection_state() by hand,
    is_usable() after _close(), close() in a forked child."""
    out: dict[str, Any] = {}
    # init_connection_state() called again reapplies Django's session set-up
    out["setting_at_borrow"] = _session_setting()
    with connection.cursor() as cursor:
        if settings.BACKEND == "postgresql":
            cursor.execute("SET TIME ZONE 'America/New_York'")
        else:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    out["setting_changed"] = _session_setting()
    connection.init_connection_state()
    out["setting_after_init"] = _session_setting()

    # is_usable() after the connection went back: False, not an AttributeError
    connection._close()
    out["usable_after_close"] = connection.is_usable()
    connection.close()

    # fork with a connection borrowed: the child's close() leaves the parent's session alone
    parent_pid = _backend_pid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        report: dict[str, Any] = {}
        try:
            connection.close()
            report["closed"] = True
            report["pid"] = _backend_pid()
            connection.close()
            report["in_use"] = pool_stats()["in_use"]  # type: ignore[index]
        except BaseException as exc:
            report["error"] = repr(exc)
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    with os.fdopen(read) as f:
        out["child"] = json.loads(f.read())
    out["child_status"] = status
    # the parent's connection survived the child: same session, still answering
    out["parent_same_session"] = _backend_pid() == parent_pid
    out["parent_other_than_child"] = parent_pid != out["child"].get("pid")
    connection.close()
    out["pool_after"] = pool_stats()
    return out


def main() -> None:
    name = os.environ["MP_DJ_SCENARIO"]
    result = {
        "requests": scenario_requests, "testcase": scenario_testcase, "wrapper": scenario_wrapper,
    }[name]()
    if settings.ENGINE_KIND == "millpond":
        from millpond.integrations.django import close_pools

        close_pools()
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
