"""``millpond bench`` end to end, as a user runs it: a subprocess per command.

Runs are kept small (a request budget, pool sizes of 1 to 4) so that the servers see a few
connections at a time and the whole file stays well under a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from millpond.cli import bench, bench_plot
from millpond.cli.bench_sql import ROWS, TABLE

MILLPOND = shutil.which("millpond", path=str(Path(sys.executable).parent))


def run_bench(
    *args: str, cwd: Path, hide: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``millpond bench ARGS`` in ``cwd``. ``hide`` makes an installed module look absent, as
    on a machine without it (the command then runs through ``python -c``)."""
    if hide is not None:
        code = (
            f"import sys; sys.modules[{hide!r}] = None; from millpond.cli import main; "
            f"sys.exit(main(['bench', *{list(args)!r}]))"
        )
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, "-m", "millpond", "bench", *args]
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("MILLPOND_DEBUG", None)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def bench_json(*args: str, cwd: Path) -> dict[str, Any]:
    proc = run_bench(*args, "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress display when stderr is not a terminal
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("millpond bench: error: ")
    return proc.stderr


def runs_of(report: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    return [r for r in report["runs"] if r["mode"] == mode]


def assert_clean(run: dict[str, Any]) -> None:
    assert run["requests"] > 0
    assert run["ok"] == run["requests"] and run["errors"] == 0, run["first_error"]
    assert run["first_error"] is None
    assert run["throughput_rps"] > 0
    assert all(v is not None and v >= 0 for v in run["latency_ms"].values())
    assert all(v is not None and v >= 0 for v in run["wait_ms"].values())
    assert run["interrupted"] is False


def assert_pools_opened_their_size(report: dict[str, Any]) -> None:
    for run in report["runs"]:
        if run["pool_size"] is None:
            # no pool: every request opened its own connection
            assert run["connections_opened"] == run["requests"]
        else:
            # warm pools opened their size once and never more
            assert run["connections_opened"] == run["pool_size"], run


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def with_scheme(url: str, scheme: str) -> str:
    return f"{scheme}://{url.partition('://')[2]}"


# -- SQLite: the default target ------------------------------------------------------------------


def test_default_run_with_no_arguments(tmp_path: Path) -> None:
    """The README's first command: no server, no option, a table and advice in ~10 s."""
    assert MILLPOND is not None, "the millpond console script is not installed"
    started = time.monotonic()
    proc = subprocess.run(
        [MILLPOND, "bench"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert took < 20, f"the default run took {took:.1f} s"
    out = proc.stdout
    for text in (
        "sqlite3",
        "no pool",
        "millpond Pool",
        "req/s",
        "p95",
        "wait",
        "conns",
        "the throughput of a new connection per request",
        "Advice: a pool of",
        "SQLite has no server",
    ):
        assert text in out, text
    with sqlite3.connect(tmp_path / bench.DEFAULT_DB_FILE) as conn:
        assert conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone() == (ROWS,)


def test_sweep_json_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "bench.png"
    report = bench_json(
        "--pool-size",
        "1,2,4",
        "--concurrency",
        "4",
        "--requests",
        "300",
        "--modes",
        "nopool,millpond,sqlalchemy",
        "--plot",
        str(plot),
        cwd=tmp_path,
    )
    assert report["pool_sizes"] == [1, 2, 4] and report["concurrency"] == 4
    assert report["driver"] == "sqlite3" and report["asyncio"] is False
    assert [m["mode"] for m in report["modes"]] == ["nopool", "millpond", "sqlalchemy"]
    assert [(r["mode"], r["pool_size"]) for r in report["runs"]] == [
        ("nopool", None),
        ("millpond", 1), ("millpond", 2), ("millpond", 4),
        ("sqlalchemy", 1), ("sqlalchemy", 2), ("sqlalchemy", 4),
    ]  # fmt: skip
    for run in report["runs"]:
        assert_clean(run)
        assert run["requests"] == 300  # an exact budget, shared by the workers
    assert_pools_opened_their_size(report)
    advice = report["advice"]
    assert advice["mode"] == "millpond" and advice["pool_size"] in (1, 2, 4)
    best = max(r["throughput_rps"] for r in runs_of(report, "millpond"))
    assert advice["best_throughput_rps"] == best
    assert advice["throughput_rps"] >= 0.95 * best
    # the advice is the smallest such size
    assert all(
        r["throughput_rps"] < 0.95 * best
        for r in runs_of(report, "millpond")
        if r["pool_size"] < advice["pool_size"]
    )
    assert report["speedup"]["throughput_ratio"] > 0
    assert report["plot"] == str(plot)
    width, height = png_size(plot)
    assert (width, height) == (
        bench_plot.FIGSIZE[0] * bench_plot.DPI,
        bench_plot.FIGSIZE[1] * bench_plot.DPI,
    )


def test_write_workload_commits_and_custom_sql(tmp_path: Path) -> None:
    report = bench_json(
        "--workload",
        "write",
        "--requests",
        "50",
        "--pool-size",
        "2",
        "--concurrency",
        "2",
        "--modes",
        "nopool,millpond",
        cwd=tmp_path,
    )
    for run in report["runs"]:
        assert_clean(run)
    with sqlite3.connect(tmp_path / bench.DEFAULT_DB_FILE) as conn:
        (total,) = conn.execute(f"SELECT SUM(value) FROM {TABLE}").fetchone()
    # every write committed, each adding 1 to a row's value (initially its id): 50 per run,
    # and the trial run that checks the query before the workers start
    assert total == ROWS * (ROWS + 1) // 2 + 2 * 50 + 1

    url = f"sqlite:///{tmp_path / 'other.db'}"
    report = bench_json(
        url, "--requests", "40", "--sql", "SELECT 2 + 2", "--pool-size", "1", cwd=tmp_path
    )
    assert report["custom_sql"] is True and report["sql"] == "SELECT 2 + 2"
    assert str(tmp_path / "other.db") in report["target"]
    for run in report["runs"]:
        assert_clean(run)


def test_think_time_paces_the_workers(tmp_path: Path) -> None:
    report = bench_json(
        "--think-time",
        "0.05",
        "--duration",
        "0.6",
        "--concurrency",
        "2",
        "--pool-size",
        "2",
        "--modes",
        "millpond",
        cwd=tmp_path,
    )
    (run,) = report["runs"]
    assert_clean(run)
    assert report["think_time_s"] == 0.05
    # two workers, each resting 50 ms between requests: at most ~40 requests a second
    assert run["throughput_rps"] < 45
    assert 10 <= run["requests"] <= 30


def test_missing_peer_is_listed_as_skipped(tmp_path: Path) -> None:
    proc = run_bench(
        "--requests",
        "20",
        "--pool-size",
        "1",
        "--concurrency",
        "1",
        cwd=tmp_path,
        hide="sqlalchemy",
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "skipped SQLAlchemy QueuePool: not installed: pip install 'millpond[peers]'" in proc.stdout
    )
    assert "millpond Pool" in proc.stdout


def test_plain_table_without_rich(tmp_path: Path) -> None:
    """Without the `cli` extra the same table comes out as plain text."""
    proc = run_bench(
        "--requests",
        "50",
        "--pool-size",
        "1,2",
        "--concurrency",
        "2",
        "--modes",
        "nopool,millpond",
        cwd=tmp_path,
        hide="rich",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("mode"))
    assert header.split() == [
        "mode",
        "size",
        "req/s",
        "p50",
        "p95",
        "p99",
        "wait",
        "p50",
        "wait",
        "p99",
        "errors",
        "conns",
    ]
    assert any(line.startswith("no pool") for line in lines)
    assert any(line.startswith("millpond Pool") for line in lines)
    assert any(line.startswith("Advice: a pool of") for line in lines)


def test_async_sqlite(tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    url = f"sqlite+aiosqlite:///{tmp_path / 'async.db'}"
    report = bench_json(
        url,
        "--workload",
        "read",
        "--pool-size",
        "1,2",
        "--concurrency",
        "3",
        "--requests",
        "60",
        cwd=tmp_path,
    )
    assert report["asyncio"] is True and report["driver"] == "aiosqlite"
    assert [m["label"] for m in report["modes"]] == ["no pool", "millpond AsyncPool"]
    for run in report["runs"]:
        assert_clean(run)
    assert_pools_opened_their_size(report)


# -- PostgreSQL and MariaDB ----------------------------------------------------------------------


@pytest.mark.postgres
def test_postgresql_against_the_peers(tmp_path: Path, pg_url: str) -> None:
    pytest.importorskip("psycopg")
    report = bench_json(
        pg_url,
        "--workload",
        "read",
        "--pool-size",
        "1,2",
        "--concurrency",
        "2",
        "--requests",
        "80",
        "--processes",
        "4",
        cwd=tmp_path,
    )
    assert report["database"] == "postgresql" and report["driver"] == "psycopg"
    ran = [m["mode"] for m in report["modes"]]
    assert ran[:2] == ["nopool", "millpond"]
    for peer in ("sqlalchemy", "dbutils", "psycopg_pool"):
        assert peer in ran or any(s["mode"] == peer for s in report["skipped"])
    skipped = {s["mode"]: s["reason"] for s in report["skipped"]}
    assert "postgresql+psycopg2://" in skipped["psycopg2"]
    assert "postgresql+asyncpg://" in skipped["asyncpg"]
    for run in report["runs"]:
        assert_clean(run)
    assert_pools_opened_their_size(report)
    assert report["server"]["max_connections"] > 0
    advice = report["advice"]
    assert advice["processes"] == 4
    assert advice["connections_needed"] == 4 * advice["pool_size"]
    assert "4 processes" in advice["text"] and "max_connections" in advice["text"]


@pytest.mark.postgres
def test_postgresql_psycopg2_pool_does_not_wait(tmp_path: Path, pg_url: str) -> None:
    pytest.importorskip("psycopg2")
    url = with_scheme(pg_url, "postgresql+psycopg2")
    # each request holds its connection 5 ms, so three threads on one connection overlap
    report = bench_json(
        url,
        "--modes",
        "millpond,psycopg2",
        "--sql",
        "SELECT pg_sleep(0.005)",
        "--pool-size",
        "1",
        "--concurrency",
        "3",
        "--requests",
        "30",
        cwd=tmp_path,
    )
    millpond_run, psycopg2_run = report["runs"]
    assert_clean(millpond_run)  # millpond queues the callers
    assert psycopg2_run["errors"] > 0  # psycopg2.pool refuses them
    assert "exhausted" in psycopg2_run["first_error"]


@pytest.mark.mysql
def test_mariadb_against_the_peers(tmp_path: Path, mysql_url: str) -> None:
    pytest.importorskip("pymysql")
    report = bench_json(
        mysql_url,
        "--workload",
        "read",
        "--pool-size",
        "1,2",
        "--concurrency",
        "2",
        "--requests",
        "80",
        cwd=tmp_path,
    )
    assert report["database"] == "mysql" and report["driver"] == "pymysql"
    for run in report["runs"]:
        assert_clean(run)
    assert_pools_opened_their_size(report)
    skipped = {s["mode"]: s["reason"] for s in report["skipped"]}
    assert "mysql+mysqlconnector://" in skipped["mysqlconnector"]
    assert report["server"]["max_connections"] > 0


@pytest.mark.mysql
def test_mariadb_mysql_connector_pool_write(tmp_path: Path, mysql_url: str) -> None:
    pytest.importorskip("mysql.connector")
    url = with_scheme(mysql_url, "mysql+mysqlconnector")
    report = bench_json(
        url,
        "--modes",
        "millpond,mysqlconnector",
        "--workload",
        "write",
        "--pool-size",
        "2",
        "--concurrency",
        "2",
        "--requests",
        "40",
        cwd=tmp_path,
    )
    assert [r["mode"] for r in report["runs"]] == ["millpond", "mysqlconnector"]
    for run in report["runs"]:
        assert_clean(run)
    assert_pools_opened_their_size(report)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("scheme", "peer"),
    [("postgresql+asyncpg", "asyncpg"), ("postgresql+psycopg_async", "psycopg_pool")],
)
def test_postgresql_asyncio(tmp_path: Path, pg_url: str, scheme: str, peer: str) -> None:
    pytest.importorskip(peer)
    report = bench_json(
        with_scheme(pg_url, scheme),
        "--pool-size",
        "1,2",
        "--concurrency",
        "3",
        "--requests",
        "80",
        cwd=tmp_path,
    )
    assert report["asyncio"] is True
    assert [m["mode"] for m in report["modes"]] == ["nopool", "millpond", peer]
    assert report["modes"][1]["label"] == "millpond AsyncPool"
    for run in report["runs"]:
        assert_clean(run)
    assert_pools_opened_their_size(report)


@pytest.mark.mysql
def test_mariadb_asyncio(tmp_path: Path, mysql_url: str) -> None:
    pytest.importorskip("aiomysql")
    report = bench_json(
        with_scheme(mysql_url, "mysql+aiomysql"),
        "--workload",
        "write",
        "--pool-size",
        "2",
        "--concurrency",
        "3",
        "--requests",
        "60",
        cwd=tmp_path,
    )
    assert [m["mode"] for m in report["modes"]] == ["nopool", "millpond", "aiomysql"]
    for run in report["runs"]:
        assert_clean(run)


# -- bad input: one line, the right exit status, never a traceback -------------------------------


@pytest.mark.parametrize(
    ("args", "hide", "code", "expected"),
    [
        (["--sql", "SELEKT 1"], None, 2, "the query failed"),
        (["nosuchdb://host/db"], None, 2, "unsupported URL scheme 'nosuchdb'"),
        (["mysql://root@127.0.0.1/test"], "pymysql", 2, "pip install 'millpond[pymysql]'"),
        (
            ["mysql+aiomysql://root@127.0.0.1/test"],
            "aiomysql",
            2,
            "pip install 'millpond[aiomysql]'",
        ),
        (["--plot", "out.png"], "matplotlib", 2, "pip install 'millpond[plot]'"),
        (["--duration", "0"], None, 2, "--duration"),
        (["--pool-size", "1,x"], None, 2, "--pool-size"),
        (["--modes", "nosuch"], None, 2, "unknown mode 'nosuch'"),
        (["--modes", "asyncpg"], None, 2, "asyncpg pool cannot run here"),
        (["--plot", "out.jpg"], None, 2, ".png"),
    ],
    ids=[
        "failing-sql",
        "bad-scheme",
        "missing-driver",
        "missing-async-driver",
        "missing-matplotlib",
        "bad-duration",
        "bad-size",
        "unknown-mode",
        "inapplicable-mode",
        "bad-plot-name",
    ],
)
def test_bad_input(
    tmp_path: Path, args: list[str], hide: str | None, code: int, expected: str
) -> None:
    err = one_line_error(run_bench(*args, cwd=tmp_path, hide=hide), code)
    assert expected in err


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+asyncpg"])
def test_unreachable_server(tmp_path: Path, scheme: str) -> None:
    pytest.importorskip("psycopg" if scheme == "postgresql" else "asyncpg")
    # port 1: nothing listens there, so the connect is refused at once
    err = one_line_error(run_bench(f"{scheme}://app:s3cret@127.0.0.1:1/test", cwd=tmp_path), 1)
    assert "cannot connect to" in err
    assert "s3cret" not in err


# -- Ctrl-C, with the live progress bar on a terminal --------------------------------------------


def interrupt_on_a_terminal(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (so the progress bar shows), press Ctrl-C once
    the first run is under way; return (exit status, stdout, what the terminal showed)."""
    pty = pytest.importorskip("pty")
    import fcntl
    import select
    import signal
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "millpond", "bench", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 30
    sent = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            if not sent and b"requests" in screen:
                time.sleep(0.5)  # let the run measure something
                proc.send_signal(signal.SIGINT)
                sent = True
            if sent and proc.poll() is not None and not ready:
                break
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert sent, f"the progress bar never showed: {screen[-500:]!r}"
    return proc.returncode, out, screen.decode(errors="replace")


@pytest.mark.parametrize("url", ["", "sqlite+aiosqlite:///async.db"], ids=["threads", "asyncio"])
def test_ctrl_c_prints_partial_results(tmp_path: Path, url: str) -> None:
    if url:
        pytest.importorskip("aiosqlite")
    args = [url] if url else []
    code, out, screen = interrupt_on_a_terminal(tmp_path, *args, "--duration", "20", "--json")
    assert code == 130
    assert "run 1 of" in screen  # the live progress bar
    assert "Traceback" not in screen
    assert "millpond bench: interrupted: partial results" in screen
    report = json.loads(out)
    assert report["interrupted"] is True
    first = report["runs"][0]
    assert first["mode"] == "nopool" and first["interrupted"] is True
    assert first["ok"] > 0 and first["elapsed_s"] < 20


def test_ctrl_c_table(tmp_path: Path) -> None:
    code, out, screen = interrupt_on_a_terminal(tmp_path, "--duration", "20")
    assert code == 130
    assert "no pool" in out and "* interrupted: partial results" in out
    assert "partial results above" in screen
