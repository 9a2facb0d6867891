"""Shared fixtures: the real database servers and a scratch SQLite file.

``pg_url`` and ``mysql_url`` check once per session that their server accepts TCP
connections. An unreachable server skips the tests that need it, except under ``CI=true``,
where it fails them: CI must not go green by quietly skipping. Point the tests elsewhere with
``MILLPOND_PG_URL`` / ``MILLPOND_MYSQL_URL``. A package that ``pytest.importorskip`` cannot
import fails the same way under ``CI=true``: a venv that lacks a driver must not pass.
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

#: how pytest.importorskip words its skip
_IMPORT_SKIP = "could not import"

PG_URL = os.environ.get("MILLPOND_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("MILLPOND_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


@functools.cache
def _unreachable(url: str, default_port: int) -> str | None:
    """Why the server behind ``url`` cannot be reached, or None if it can (asked once)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        socket.create_connection((host, port), timeout=2.0).close()
    except OSError as exc:
        return f"{host}:{port} is unreachable ({exc})"
    return None


def require_server(url: str, default_port: int, what: str) -> str:
    """``url`` if its server is up; else skip the test, or fail it under CI=true."""
    problem = _unreachable(url, default_port)
    if problem is None:
        return url
    message = f"{what} at {problem}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true requires every database server to be running")
    pytest.skip(message)


def require_package(module: str, extra: str) -> Any:
    """``module`` imported; if it is not installed, skip the test, or fail it under CI=true
    (the ``test`` extra installs it there)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} is not installed (pip install 'millpond[{extra}]'): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(message)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A PostgreSQL URL (database ``test``) whose server was reachable."""
    return require_server(PG_URL, 5432, "PostgreSQL")


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """A MariaDB/MySQL URL (database ``test``) whose server was reachable."""
    return require_server(MYSQL_URL, 3306, "MariaDB")


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A path for a SQLite database file that does not exist yet, removed after the test."""
    return tmp_path / "millpond-test.sqlite"


def _fail_import_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if os.environ.get("CI") != "true" or not report.skipped:
        return
    longrepr = report.longrepr
    # a skip's longrepr is (path, line, "Skipped: <reason>")
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if _IMPORT_SKIP in reason:
        report.outcome = "failed"
        report.longrepr = f"{reason}; CI=true requires every test dependency to be installed"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_import_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_import_skip(report)
    return report
