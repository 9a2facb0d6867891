"""``millpond bench`` on a scratch SQLite file: results, output forms and one-line errors."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from millpond.cli import bench, main


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own directory: the default database is created in the cwd."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = main(["bench", *args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


def assert_clean(mode: dict[str, Any]) -> None:
    assert mode["requests"] > 0
    assert mode["ok"] == mode["requests"]
    assert mode["errors"] == 0
    assert mode["first_error"] is None
    assert mode["throughput_rps"] > 0
    assert all(v is not None and v >= 0 for v in mode["latency_ms"].values())
    assert all(v is not None and v >= 0 for v in mode["wait_ms"].values())


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


# -- results -------------------------------------------------------------------------------------


def test_default_sqlite_file_both_modes(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    report = run_json(capsys, "--duration", "0.3", "--concurrency", "3")
    assert set(report["modes"]) == {"no_pool", "pool"}
    for mode in report["modes"].values():
        assert_clean(mode)
    assert report["interrupted"] is False
    assert report["driver"] == "sqlite3"
    assert report["concurrency"] == report["pool_size"] == 3
    # the pool opened its size once; without it every request opened one
    assert report["modes"]["pool"]["connections_opened"] == 3
    no_pool = report["modes"]["no_pool"]
    assert no_pool["connections_opened"] == no_pool["requests"]
    assert report["speedup"] > 0
    db = in_tmp / bench.DEFAULT_DB_FILE
    assert db.exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute(f"SELECT COUNT(*) FROM {bench.TABLE}").fetchone() == (bench.ROWS,)


def test_requests_read_and_write(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    report = run_json(capsys, "--requests", "120", "--workload", "read", "--pool-size", "2")
    assert report["pool_size"] == 2 and report["workload"] == "read"
    for mode in report["modes"].values():
        assert_clean(mode)
        assert mode["requests"] == 120  # an exact budget, shared by the threads

    report = run_json(capsys, "--requests", "50", "--workload", "write", "--concurrency", "2")
    for mode in report["modes"].values():
        assert_clean(mode)
    with sqlite3.connect(in_tmp / bench.DEFAULT_DB_FILE) as conn:
        (total,) = conn.execute(f"SELECT SUM(value) FROM {bench.TABLE}").fetchone()
    # every write committed, each adding 1 to a row's value (initially its id): 50 per mode
    # and the one trial run that checks the query before the threads start
    assert total == bench.ROWS * (bench.ROWS + 1) // 2 + 2 * 50 + 1


def test_custom_sql_and_explicit_url(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    url = f"sqlite:///{in_tmp / 'other.db'}"
    report = run_json(capsys, url, "--requests", "40", "--sql", "SELECT 2 + 2")
    assert report["custom_sql"] is True and report["sql"] == "SELECT 2 + 2"
    assert str(in_tmp / "other.db") in report["target"]
    for mode in report["modes"].values():
        assert_clean(mode)
    assert not (in_tmp / bench.DEFAULT_DB_FILE).exists()


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
def test_table_output(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                      rich: bool) -> None:
    if rich:
        pytest.importorskip("rich")
    else:
        monkeypatch.setitem(sys.modules, "rich", None)  # as if the `cli` extra were absent
    assert main(["bench", "--requests", "30", "--concurrency", "2"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # no progress display when stderr is not a terminal
    assert "no pool" in out and "millpond Pool" in out
    assert "req/s" in out and "wait p99" in out
    assert "the throughput of a connection per request" in out


def test_ctrl_c_prints_partial_results(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_pool", interrupted)
    code = main(["bench", "--requests", "30", "--json"])
    out, _ = capsys.readouterr()
    assert code == 130
    report = json.loads(out)
    assert report["interrupted"] is True
    assert list(report["modes"]) == ["no_pool"]
    assert_clean(report["modes"]["no_pool"])


def test_python_m_millpond(in_tmp: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "millpond", "bench", "--duration", "1", "--json"],
        cwd=in_tmp, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["modes"]) == {"no_pool", "pool"}
    for mode in report["modes"].values():
        assert_clean(mode)


# -- errors --------------------------------------------------------------------------------------


def test_bad_url_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "nosuchdb://host/db"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("millpond bench: error: ")
    assert "nosuchdb" in err


def test_asyncio_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "postgresql+asyncpg://u@127.0.0.1/db"]) == 2
    assert "AsyncPool" in one_line_error(capsys)


def test_missing_driver(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                        ) -> None:
    monkeypatch.setitem(sys.modules, "pymysql", None)  # as if PyMySQL were not installed
    assert main(["bench", "mysql://root@127.0.0.1/test"]) == 2
    assert "not installed" in one_line_error(capsys)


def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg")
    # port 1: nothing listens there, so the connect is refused at once
    assert main(["bench", "postgresql://app:s3cret@127.0.0.1:1/test", "--duration", "1"]) == 1
    err = one_line_error(capsys)
    assert "cannot connect" in err
    assert "s3cret" not in err


def test_bad_sql(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    assert main(["bench", "--sql", "SELEKT 1", "--duration", "1"]) == 2
    err = one_line_error(capsys)
    assert "the query failed" in err and "SELEKT" in err


def test_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--duration", "0"]) == 2
    assert "--duration" in one_line_error(capsys)
