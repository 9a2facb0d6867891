"""The gunicorn config file of the tests: the two-line setup of docs/integrations.md."""

from millpond.integrations.gunicorn import on_exit, post_fork, worker_exit

__all__ = ["on_exit", "post_fork", "worker_exit"]
