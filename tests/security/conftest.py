"""Fixtures for the security tests.

* ``pgbouncer`` (session): a real pgbouncer (Debian's package) in transaction mode on a free
  port of 127.0.0.1, in front of the shared PostgreSQL (``pg_url``). A missing binary is
  installed with apt-get; if that fails the tests skip, except under ``CI=true``, where they
  fail: CI must not go green by quietly skipping.
* ``tenant_role`` (session): a NOLOGIN role on the shared PostgreSQL for ``SET ROLE``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true requires pgbouncer")
    pytest.skip(message)


def _find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((p for p in PGBOUNCER_PATHS if os.access(p, os.X_OK)), None)


def _install_pgbouncer() -> str:
    """Install Debian's pgbouncer package if it is missing; the binary's path."""
    found = _find_pgbouncer()
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        _unavailable("pgbouncer is not installed and apt-get cannot install it here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log: list[str] = []
    for attempt in (["apt-get", "install", "-y", "pgbouncer"], ["apt-get", "update"],
                    ["apt-get", "install", "-y", "pgbouncer"]):  # fmt: skip
        done = subprocess.run(attempt, capture_output=True, text=True, env=env, check=False)
        log.append(f"$ {' '.join(attempt)} -> {done.returncode}\n{done.stderr[-1500:]}")
        found = _find_pgbouncer()
        if found:
            return found
    _unavailable("pgbouncer could not be installed:\n" + "\n".join(log))
    raise AssertionError("unreachable")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PgBouncer:
    port: int
    user: str
    database: str
    root: Path

    @property
    def url(self) -> str:
        """A URL for a Pool of any PostgreSQL driver, through pgbouncer."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def log_text(self) -> str:
        try:
            return (self.root / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture(scope="session")
def pgbouncer(pg_url: str) -> Iterator[PgBouncer]:
    binary = _install_pgbouncer()
    target = urlsplit(pg_url)
    user = target.username or "postgres"
    database = target.path.lstrip("/") or "test"
    # pgbouncer refuses to run as root: run it as the postgres account (else nobody)
    account = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                account = pwd.getpwnam(name)
                break
    root = Path(tempfile.mkdtemp(prefix="millpond-pgbouncer-"))
    port = _free_port()
    (root / "userlist.txt").write_text(f'"{user}" ""\n')
    (root / "pgbouncer.ini").write_text(
        f"""[databases]
{database} = host={target.hostname or "127.0.0.1"} port={target.port or 5432} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {root}/userlist.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
ignore_startup_parameters = extra_float_digits,options
logfile = {root}/pgbouncer.log
pidfile = {root}/pgbouncer.pid
log_connections = 0
log_disconnections = 0
"""
    )
    if account is not None:
        for path in (root, *root.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
    proc = subprocess.Popen(
        [binary, str(root / "pgbouncer.ini")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=root,
        user=account.pw_uid if account else None,
        group=account.pw_gid if account else None,
        extra_groups=[] if account else None,
        start_new_session=True,
    )
    bouncer = PgBouncer(port=port, user=user, database=database, root=root)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                _unavailable(f"pgbouncer exited with {proc.returncode}:\n{bouncer.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    _unavailable(f"pgbouncer did not listen on {port}:\n{bouncer.log_text()}")
                time.sleep(0.05)
        yield bouncer
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # immediate shutdown: clients are gone by now
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tenant_role(pg_url: str) -> Iterator[str]:
    """A NOLOGIN role the test user may ``SET ROLE`` to; dropped at the end."""
    role = "mp_tenant_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" NOLOGIN')
        admin.execute(f'GRANT "{role}" TO CURRENT_USER')
    yield role
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')
