"""The server fixtures of tests/conftest.py: an unreachable server skips its tests, except
under CI=true, where it fails them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_postgres_test_against_a_closed_port(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MILLPOND_PG_URL="postgresql://postgres@127.0.0.1:1/test")
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "-p", "no:hypothesispytest", "-p", "no:asyncio",  # faster start-up
         "tests/drivers/test_postgres.py::test_status"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("ci", [None, "false"])
def test_unreachable_server_skips(ci: str | None) -> None:
    out = run_postgres_test_against_a_closed_port(ci)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 skipped" in out.stdout
    assert "PostgreSQL at 127.0.0.1:1 is unreachable" in out.stdout


def test_unreachable_server_fails_under_ci() -> None:
    out = run_postgres_test_against_a_closed_port("true")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "2 errors" in out.stdout
    assert "CI=true requires every database server to be running" in out.stdout
