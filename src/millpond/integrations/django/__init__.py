"""Django database backends on millpond pools.

::

    DATABASES = {
        "default": {
            "ENGINE": "millpond.integrations.django.postgresql",  # or ...django.mysql
            "NAME": "app", "USER": "app", "HOST": "db",
            "OPTIONS": {"pool": {"max_size": 4, "timeout": 5}},     # or True for defaults
            "CONN_MAX_AGE": 0,
        }
    }

Each backend is Django's own (``django.db.backends.postgresql`` with psycopg 3 or psycopg2,
``django.db.backends.mysql`` with mysqlclient or PyMySQL as ``MySQLdb``) with its connect and
close replaced: where Django would open a server connection, the request's thread borrows one
from the alias's pool (at its first query); where Django closes it (``close()``, which Django
calls at the end of every request with ``CONN_MAX_AGE = 0``), the connection goes back.

- One :class:`millpond.Pool` per database alias per process, shared by every thread; after a
  ``fork()`` (gunicorn ``--preload``) the child's pool opens its own connections.
- ``OPTIONS["pool"]`` is ``True`` or a dict of ``millpond.Pool`` options (``max_size``,
  ``timeout``, ``max_lifetime``, ``leak_timeout``...; ``configure`` runs after Django's own
  session set-up). The default ``name`` is ``django-<alias>``, the default ``reset`` is
  ``"full"`` where the driver adapter can do it (``DISCARD ALL``, ``COM_RESET_CONNECTION``):
  every request gets a session as clean as a new connection.
- Session settings Django applies at connect (time zone, ``assume_role``, isolation level,
  ``SQL_AUTO_IS_NULL``; PyMySQL replays charset and ``init_command`` itself) are applied by the
  pool's ``configure`` on every new connection and again after every full reset.
- ``CONN_MAX_AGE`` other than 0 raises ``ImproperlyConfigured`` (the pool keeps connections;
  ``max_lifetime`` retires them); ``CONN_HEALTH_CHECKS = True`` means a ping at every checkout
  (``ping_window=0``) and contradicts ``pre_ping=False``.
- When the settings a pool was made from change (the test runner renames the database,
  ``override_settings`` changes the time zone) the next connect replaces the pool.

:func:`get_pool` gives the pool of an alias (``stats()``, ``resize()``, ``drain()``);
:func:`close_pools` closes every pool of the process.
"""

from millpond.integrations.django.pooling import close_pools, get_pool

__all__ = ["close_pools", "get_pool"]
