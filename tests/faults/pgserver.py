"""A private, throw-away PostgreSQL cluster that fault tests may stop, restart and kill.

The shared server on 127.0.0.1:5432 must never be disturbed, so tests that need a server to
die get their own: ``initdb`` into a temporary directory once, then ``start`` / ``stop`` /
``restart`` / ``kill`` it as often as needed (a restart is much cheaper than an initdb).

PostgreSQL refuses to run as root. When we are root, initdb and the postmaster run as an
unprivileged account (``postgres``, else ``nobody``; override with ``MILLPOND_PG_OS_USER``)
that owns the temporary directory.

No postgres process may outlive us: ``close()``, a ``weakref.finalize`` (which also runs at
interpreter exit) and, for sessions that were SIGKILLed before either could run, a sweep of
stale directories whenever a new cluster is created.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import psycopg

StopMode = Literal["smart", "fast", "immediate"]

_STOP_SIGNALS: dict[str, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
_DIR_PREFIX = "millpond-pg-"
_OWNER_FILE = "owner.pid"
_ADMIN_APP = "millpond-faults-admin"


def find_pg_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, or None when they are not installed.

    ``MILLPOND_PG_BINDIR`` wins; then the directory ``initdb`` on PATH really lives in (so
    that ``postgres`` comes from the same version); then the newest Debian-style install.
    """
    candidates: list[Path] = []
    if env := os.environ.get("MILLPOND_PG_BINDIR"):
        candidates.append(Path(env))
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)

    def version(bindir: Path) -> int:
        name = bindir.parent.name
        return int(name) if name.isdigit() else 0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    return None


def _pick_port() -> int:
    """A free TCP port on 127.0.0.1 *below* the ephemeral range.

    The port has to survive restarts. An ephemeral port could be taken, while the server is
    down, as the source port of some unrelated outgoing connection, and the restart would then
    fail to bind.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(20000, low) if low > 20100 else 0
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError("no free TCP port on 127.0.0.1")


def _cluster_pids(datadir: str) -> list[int]:
    """Every live process of the cluster in ``datadir``.

    Backends call setsid() and are orphaned when the postmaster dies, so neither the process
    group nor the parent pid finds them all; their working directory does: the postmaster
    chdirs into the data directory and every child inherits it. Zombies have no cwd, so an
    unreaped process does not count. Linux only; elsewhere this finds nothing.
    """
    pids = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                cwd = os.readlink(f"/proc/{entry.name}/cwd")
            except OSError:
                continue
            if cwd == datadir:
                pids.append(int(entry.name))
    return pids


def _kill_cluster(datadir: str, timeout: float = 10.0) -> None:
    """SIGKILL every process of the cluster and wait until none is left."""
    deadline = time.monotonic() + timeout
    while pids := _cluster_pids(datadir):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"postgres processes {pids} of {datadir} survived SIGKILL")
        time.sleep(0.01)


def _remove_orphaned_shm(datadir: str) -> None:
    """Drop the SysV segment a crashed postmaster left behind.

    After a clean shutdown postgres removes it; after a SIGKILL only the next start of the same
    data directory would, and a cluster that is thrown away is never started again, so each
    crashed session would leak one segment. postmaster.pid (still there after a crash) says
    which one; it is removed only if nothing is attached to it any more.
    """
    try:
        lines = Path(datadir, "postmaster.pid").read_text().splitlines()
        key, shmid = (int(x) for x in lines[6].split())
        table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except (OSError, IndexError, ValueError):
        return
    for row in table:
        cols = row.split()
        # columns: key shmid perms size cpid lpid nattch ...
        if len(cols) > 6 and int(cols[1]) == shmid and int(cols[0]) == key and cols[6] == "0":
            libc_name = ctypes.util.find_library("c")
            if libc_name is not None:
                ipc_rmid = 0
                ctypes.CDLL(libc_name, use_errno=True).shmctl(shmid, ipc_rmid, None)
            return


def _owner_alive(root: Path) -> bool:
    try:
        pid = int((root / _OWNER_FILE).read_text())
    except (OSError, ValueError):
        # Unreadable or not yet written: possibly a session that is still setting up.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale(base: Path) -> None:
    """Destroy clusters whose owning test session died without cleaning up (e.g. SIGKILL)."""
    for root in base.glob(_DIR_PREFIX + "*"):
        if root.is_dir() and not _owner_alive(root):
            _destroy(_State(root=root, datadir=str(root / "data")))


@dataclass
class _State:
    """What cleanup needs; kept apart from DisposablePostgres so the finalizer holds no
    reference to the object it finalizes."""

    root: Path
    datadir: str
    proc: subprocess.Popen[bytes] | None = None


def _destroy(state: _State) -> None:
    if state.proc is not None:
        with contextlib.suppress(OSError):
            state.proc.kill()
        state.proc.wait()
        state.proc = None
    with contextlib.suppress(RuntimeError):
        _kill_cluster(state.datadir)
    _remove_orphaned_shm(state.datadir)
    shutil.rmtree(state.root, ignore_errors=True)


class DisposablePostgres:
    """A PostgreSQL cluster of our own on 127.0.0.1, superuser ``postgres`` with trust auth.

    Durability is off (fsync, synchronous_commit, full_page_writes): the data is thrown away
    anyway, and crash recovery after ``kill()`` still works. ``timings`` records how long the
    last initdb / start / restart took, in seconds.
    """

    def __init__(
        self,
        *,
        max_connections: int = 50,
        shared_buffers: str = "16MB",
        bindir: Path | None = None,
        base_dir: Path | None = None,
        os_user: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        found = bindir or find_pg_bindir()
        if found is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, postgres) not found")
        self.bindir = found
        self.default_max_connections = max_connections
        self.max_connections = max_connections
        self.startup_timeout = startup_timeout
        self.timings: dict[str, float] = {}
        self._uid, self._gid = self._os_account(os_user)
        self._started_once = False

        base = base_dir or Path(tempfile.gettempdir())
        _sweep_stale(base)
        root = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=base)).resolve()
        (root / _OWNER_FILE).write_text(str(os.getpid()))
        self._state = _State(root=root, datadir=str(root / "data"))
        self._finalizer = weakref.finalize(self, _destroy, self._state)
        if self._uid is not None and self._gid is not None:
            os.chown(root, self._uid, self._gid)
        self.port = _pick_port()
        self._logfile = root / "postgres.log"
        self._initdb(max_connections, shared_buffers)

    # -- setup ---------------------------------------------------------------------------

    @staticmethod
    def _os_account(os_user: str | None) -> tuple[int | None, int | None]:
        if os.geteuid() != 0:
            return None, None
        names = [os_user or os.environ.get("MILLPOND_PG_OS_USER") or "postgres", "nobody"]
        for name in names:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return entry.pw_uid, entry.pw_gid
        raise RuntimeError(f"running as root and none of the accounts {names} exists")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        # C messages so tests can match them; a fixed TZ spares initdb its zoneinfo scan.
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        return env

    def _run_as_owner(self, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=self._state.root,
            env=self._env(),
            user=self._uid,
            group=self._gid,
            extra_groups=[] if self._uid is not None else None,
            check=False,
        )

    def _initdb(self, max_connections: int, shared_buffers: str) -> None:
        started = time.monotonic()
        result = self._run_as_owner(
            [
                str(self.bindir / "initdb"),
                "-D",
                self._state.datadir,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # durability of a throw-away cluster is worthless
                "--no-instructions",
            ]
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{output}")
        # Appended last, so these win over initdb's own choices. The port is not here: it is
        # given on the command line, so a port clash at first start can be retried.
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self._state.root}'",
            "max_connections": str(max_connections),
            # Every test client is the superuser anyway; without reserved slots the limit is
            # exactly max_connections and may go as low as 1.
            "superuser_reserved_connections": "0",
            "shared_buffers": f"'{shared_buffers}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
        }
        with open(Path(self._state.datadir, "postgresql.conf"), "a") as conf:
            conf.write("\n# millpond fault tests\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        self.timings["initdb"] = time.monotonic() - started

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        proc = self._state.proc
        return proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        proc = self._state.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def root(self) -> Path:
        """The temporary directory holding the data directory, socket and log."""
        return self._state.root

    def process_ids(self) -> list[int]:
        """Every live process of this cluster, postmaster and orphans alike (Linux only)."""
        return _cluster_pids(self._state.datadir)

    @property
    def url(self) -> str:
        return self.url_at(self.port)

    def url_at(self, port: int) -> str:
        """The server's URL as seen through something listening on ``port`` (a proxy)."""
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def start(self, timeout: float | None = None) -> None:
        """Start the postmaster (no-op if it runs) and wait until it accepts connections."""
        if not self._finalizer.alive:
            raise RuntimeError("this DisposablePostgres was closed")
        if self.running:
            return
        # Orphans of a killed postmaster would hold its shared memory, and a new postmaster
        # refuses to start while they do.
        _kill_cluster(self._state.datadir)
        started = time.monotonic()
        for attempt in range(5):
            log_offset = self._logfile.stat().st_size if self._logfile.exists() else 0
            try:
                self._spawn()
                self.wait_ready(timeout if timeout is not None else self.startup_timeout)
            except RuntimeError:
                self._reap()
                clash = "could not bind" in self.log_text(log_offset)
                # The port is ours for good once the server has started; before that a clash
                # with another session's probe is a race we can retry with another port.
                if clash and not self._started_once and attempt < 4:
                    self.port = _pick_port()
                    continue
                raise
            break
        self._started_once = True
        self.timings["start"] = time.monotonic() - started

    def _spawn(self) -> None:
        fd = os.open(self._logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._state.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", self._state.datadir, "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                cwd=self._state.root,
                env=self._env(),
                user=self._uid,
                group=self._gid,
                extra_groups=[] if self._uid is not None else None,
                # Keep the terminal's Ctrl-C away from the postmaster: shutting it down is
                # our job, done in order by close() / the finalizer.
                start_new_session=True,
            )
        finally:
            os.close(fd)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the postmaster accepts connections; RuntimeError if it dies or is slow.

        Readiness comes from postmaster.pid (what ``pg_ctl -w`` reads) rather than from a probe
        connection, which would linger in pg_stat_activity and skew connection counts.
        """
        proc = self._state.proc
        if proc is None:
            raise RuntimeError("the server is not running")
        pidfile = Path(self._state.datadir, "postmaster.pid")
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {proc.returncode}:\n{self.log_text()[-4000:]}"
                )
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                # Line 1 must be our pid: a killed postmaster leaves its "ready" file behind.
                if len(lines) >= 8 and lines[0] == str(proc.pid) and lines[7].strip() == "ready":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready after {timeout}s:\n{self.log_text()}")
            time.sleep(0.01)

    def stop(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        """Shut the server down (``fast``: abort sessions, clean shutdown; ``immediate``: no
        checkpoint, crash recovery on next start; ``smart``: wait for sessions to end)."""
        proc = self._state.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(_STOP_SIGNALS[mode])
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would, and then its orphaned backends.

        Left alone the backends would notice the postmaster's death and exit within moments
        anyway; killing them at once makes the outage immediate for the test and lets
        ``start()`` run straight away (it runs crash recovery).
        """
        proc = self._state.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        self._reap()

    def _reap(self) -> None:
        proc = self._state.proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self._state.proc = None
        _kill_cluster(self._state.datadir)

    def restart(self, mode: StopMode = "fast") -> None:
        started = time.monotonic()
        self.stop(mode)
        self.start()
        self.timings["restart"] = time.monotonic() - started

    def close(self) -> None:
        """Stop the server cleanly if it runs, then remove every trace of it."""
        if self._finalizer.alive:
            with contextlib.suppress(RuntimeError, OSError):
                self.stop("fast", timeout=10)
        self._finalizer()

    def __enter__(self) -> DisposablePostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_text(self, offset: int = 0) -> str:
        """The server log from byte ``offset`` on (for failure messages)."""
        try:
            with open(self._logfile, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    # -- introspection and configuration -------------------------------------------------

    def admin_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        """A fresh autocommit superuser connection straight to the server (no proxy)."""
        return psycopg.connect(
            self.url, autocommit=True, connect_timeout=5, application_name=_ADMIN_APP
        )

    def connection_count(self, application_name: str | None = None) -> int:
        """Client backends on the server, other than the one asking; only those with the given
        ``application_name`` if one is given. Needs a free connection slot."""
        query = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        params: tuple[str, ...] = ()
        if application_name is not None:
            query += " AND application_name = %s"
            params = (application_name,)
        with self.admin_connection() as conn:
            row = conn.execute(query, params).fetchone()
        assert row is not None
        return int(str(row[0]))

    def wait_connection_count(
        self, expected: int, application_name: str | None = None, timeout: float = 5.0
    ) -> int:
        """Poll ``connection_count`` until it equals ``expected`` or ``timeout`` passes; the last
        count. Backends leave pg_stat_activity a little after their client disconnects."""
        deadline = time.monotonic() + timeout
        while True:
            count = self.connection_count(application_name)
            if count == expected or time.monotonic() > deadline:
                return count
            time.sleep(0.02)

    def terminate_clients(self) -> None:
        """Disconnect every client session except the one doing it."""
        with self.admin_connection() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )

    def set_max_connections(self, n: int) -> None:
        """ALTER SYSTEM SET max_connections and restart, which it needs to take effect.

        Needs a free connection slot: a server saturated by a test has to be restarted first
        (``reset()`` does that).
        """
        if n < 1:
            # Checked here: a value the server rejects would leave it unable to start, with no
            # connection left to take the setting back.
            raise ValueError(f"max_connections must be at least 1, not {n}")
        with self.admin_connection() as conn:
            conn.execute(f"ALTER SYSTEM SET max_connections = {int(n)}")
        self.restart()
        self.max_connections = n

    def reset(self) -> None:
        """Back to the state a test expects: running, default max_connections, no clients."""
        self.start()
        if self.max_connections != self.default_max_connections:
            self.restart()  # drops every session, so the ALTER SYSTEM below gets a slot
            self.set_max_connections(self.default_max_connections)
            return
        try:
            self.terminate_clients()
        except psycopg.OperationalError:
            self.restart()  # saturated: no slot to ask from
