"""Flask: one pool per app, one connection per application context.

    from millpond.integrations.flask import Millpond

    db = Millpond()                     # or Millpond(app)
    def create_app():
        app = Flask(__name__)
        app.config["MILLPOND_URL"] = "postgresql://app@db/app"
        app.config["MILLPOND_OPTIONS"] = {"max_size": 4, "timeout": 5}
        db.init_app(app)
        return app

    @app.get("/")
    def index():
        conn = db.connection()          # the same connection for the whole request
        ...

The connection is borrowed on the first ``db.connection()`` of an application context (a
request, a CLI command, ``with app.app_context()``) and returned when that context tears down;
if the request raised, it is rolled back first. Uncommitted work is rolled back on return in
any case (the pool's reset). ``init_app`` creates the pool; its first connections open in the
background, so an app factory or a CLI command does not wait for the database. The pool is
closed at process exit.
"""

from __future__ import annotations

import atexit
from typing import Any

from flask import Flask, current_app, g

import millpond
from millpond.integrations.pool_options import build_pool_kwargs

__all__ = ["Millpond"]

_EXTENSION = "millpond"


class Millpond:
    """The Flask extension. ``app``: initialise it for this app at once (else ``init_app``)."""

    def __init__(self, app: Flask | None = None) -> None:
        # one key in flask.g per extension object, so two Millpond objects on one app (two
        # databases) each keep their own request connection
        self._g_key = f"_millpond_connection_{id(self)}"
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Create the pool of ``app`` from its config and return connections at teardown.

        Raises :class:`millpond.ConfigError` when ``MILLPOND_URL`` is missing or
        ``MILLPOND_OPTIONS`` is not a dict of ``Pool`` options."""
        url = app.config.get("MILLPOND_URL")
        if not url:
            raise millpond.ConfigError(
                f"app {app.name!r} has no MILLPOND_URL in its config; set it before init_app"
            )
        kwargs = build_pool_kwargs(app.config.get("MILLPOND_OPTIONS"), source="MILLPOND_OPTIONS")
        kwargs.setdefault("name", app.name)
        pools: dict[int, millpond.Pool] = app.extensions.setdefault(_EXTENSION, {})
        if id(self) in pools:
            raise millpond.ConfigError(f"Millpond.init_app was already called for {app.name!r}")
        pool = millpond.Pool(url, **kwargs)
        pools[id(self)] = pool
        app.teardown_appcontext(self._teardown)
        atexit.register(pool.close)

    @property
    def pool(self) -> millpond.Pool:
        """The pool of the current app (needs an app context)."""
        return self._pool_of(current_app)

    def pool_of(self, app: Flask) -> millpond.Pool:
        """The pool of ``app``, outside an app context too."""
        return self._pool_of(app)

    def connection(self) -> Any:
        """The connection of the current application context: borrowed on the first call,
        the same object on every later call until the context ends."""
        conn = g.get(self._g_key)
        if conn is None:
            conn = self._pool_of(current_app).getconn()
            setattr(g, self._g_key, conn)
        return conn

    def _pool_of(self, app: Flask) -> millpond.Pool:
        pool = app.extensions.get(_EXTENSION, {}).get(id(self))
        if pool is None:
            raise RuntimeError(
                f"Millpond is not initialised for app {app.name!r}; call init_app(app)"
            )
        return pool  # type: ignore[no-any-return]

    def _teardown(self, exc: BaseException | None) -> None:
        conn = g.pop(self._g_key, None)
        if conn is None:
            return
        pool = self._pool_of(current_app)
        if exc is None:
            pool.putconn(conn)
            return
        # the request failed: undo its work before anyone else gets this connection, even
        # with reset=None; a connection that cannot roll back is not lent again
        try:
            conn.rollback()
        except Exception:
            pool.putconn(conn, discard=True)
        else:
            pool.putconn(conn)
