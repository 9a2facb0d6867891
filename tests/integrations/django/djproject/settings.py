"""Settings from the environment, so that each test process picks its backend and database.

``MP_DJ_BACKEND``: postgresql | mysql; ``MP_DJ_ENGINE``: millpond (default) | stock (Django's
backend, a new connection per request) | django-pool (Django's own PostgreSQL pool);
``MP_DJ_NAME``: the database; ``MP_DJ_APP``: a unique application_name (PostgreSQL);
``MP_DJ_POOL``: JSON of pool options.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

BACKEND = os.environ.get("MP_DJ_BACKEND", "postgresql")
ENGINE_KIND = os.environ.get("MP_DJ_ENGINE", "millpond")
POOL = json.loads(os.environ.get("MP_DJ_POOL", '{"max_size": 4, "timeout": 20}'))

SECRET_KEY = "millpond-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "Europe/Paris"  # not the server's: the session time zone must be set and kept
INSTALLED_APPS = ["django.contrib.contenttypes", "djproject.shop"]
ROOT_URLCONF = "djproject.urls"
MIDDLEWARE: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING_CONFIG = None

if BACKEND == "mysql":
    import pymysql

    pymysql.install_as_MySQLdb()
    url = urlsplit(os.environ.get("MILLPOND_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"))
    _db = {
        "ENGINE": "django.db.backends.mysql",
        "USER": url.username or "root",
        "PASSWORD": url.password or "",
        "HOST": url.hostname or "127.0.0.1",
        "PORT": str(url.port or 3306),
        "OPTIONS": {"init_command": "SET SESSION innodb_lock_wait_timeout = 17"},
    }
else:
    url = urlsplit(os.environ.get("MILLPOND_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    _db = {
        "ENGINE": "django.db.backends.postgresql",
        "USER": url.username or "postgres",
        "PASSWORD": url.password or "",
        "HOST": url.hostname or "127.0.0.1",
        "PORT": str(url.port or 5432),
        "OPTIONS": {"application_name": os.environ.get("MP_DJ_APP", "millpond-django")},
    }

_db["NAME"] = os.environ.get("MP_DJ_NAME", "test")
_db["CONN_MAX_AGE"] = 0
_db["TEST"] = {"NAME": "test_" + _db["NAME"]}
if ENGINE_KIND == "millpond":
    _db["ENGINE"] = f"millpond.integrations.django.{BACKEND}"
    _db["OPTIONS"]["pool"] = POOL
elif ENGINE_KIND == "django-pool":
    _db["OPTIONS"]["pool"] = {"min_size": POOL.get("max_size", 4), **POOL}
    _db["OPTIONS"]["pool"].pop("timeout", None)

DATABASES = {"default": _db}
