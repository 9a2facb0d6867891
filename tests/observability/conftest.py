"""Fixtures for the exporters' tests: a PostgreSQL URL that carries a password (trust
authentication ignores it), so every test can check it never reaches a label."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pytest

PASSWORD = "pw-s3cr3t-never-shown"


@pytest.fixture
def pg_url_with_password(pg_url: str) -> str:
    parts = urlsplit(pg_url)
    user = parts.username or "postgres"
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{PASSWORD}@{host}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))
