"""Views that use what a pooled backend must keep working: atomic(), savepoints, on_commit,
select_for_update; and views that leave session state behind."""

from __future__ import annotations

import threading

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from djproject.shop.models import Item, Order

committed = 0
_committed_lock = threading.Lock()


def _count_commit() -> None:
    global committed
    with _committed_lock:
        committed += 1


def order(request: HttpRequest) -> JsonResponse:
    with transaction.atomic():
        item = Item.objects.select_for_update().get(name="widget")
        item.stock -= 1
        item.save(update_fields=["stock"])
        try:
            with transaction.atomic():  # a savepoint, rolled back
                Order.objects.create(item=item, note="doomed")
                raise ValueError("roll back the savepoint")
        except ValueError:
            pass
        Order.objects.create(item=item, note="kept")
        transaction.on_commit(_count_commit)
    return JsonResponse({"stock": item.stock})


def boom(request: HttpRequest) -> HttpResponse:
    with transaction.atomic():
        Order.objects.create(item=Item.objects.get(name="widget"), note="boom")
        raise RuntimeError("the view failed mid-transaction")


def _is_pg() -> bool:
    return settings.BACKEND == "postgresql"


def leak_set(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        if _is_pg():
            cursor.execute("SET statement_timeout = '4321ms'")
        else:
            cursor.execute("SET SESSION max_join_size = 4321")
    return JsonResponse({"set": True})


def leak_show(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        if _is_pg():
            cursor.execute("SHOW statement_timeout")
        else:
            cursor.execute("SELECT @@SESSION.max_join_size")
        (value,) = cursor.fetchone()
    return JsonResponse({"leaked": str(value) in ("4321ms", "4321")})


def session(request: HttpRequest) -> JsonResponse:
    """The session settings Django applies at connect."""
    with connection.cursor() as cursor:
        if _is_pg():
            cursor.execute("SHOW TIME ZONE")
            (zone,) = cursor.fetchone()
            return JsonResponse({"time_zone": zone, "autocommit": connection.get_autocommit()})
        cursor.execute("SELECT @@SESSION.innodb_lock_wait_timeout")
        (lock_wait,) = cursor.fetchone()
        # tx_isolation on MariaDB, transaction_isolation on MySQL 8
        cursor.execute(
            "SHOW SESSION VARIABLES WHERE Variable_name IN ('tx_isolation', 'transaction_isolation')"
        )
        isolation = cursor.fetchone()[1]
    return JsonResponse(
        {"lock_wait": int(lock_wait), "isolation": isolation, "autocommit": connection.get_autocommit()}
    )
