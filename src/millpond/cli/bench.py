"""``millpond bench``: what a pool buys you, and how big it should be, on your own database.

The same requests run side by side in one command, one mode after another: no pool (a new
connection per request), millpond (``Pool`` with threads, ``AsyncPool`` with asyncio tasks for
the asyncio URL schemes) and every installed peer pool that applies to the database, over
one or several pool sizes (a sweep). It reports throughput, latency, the wait for a connection,
errors and connections opened, then advises the smallest pool within 5% of the best throughput.

With no URL it benchmarks an SQLite file it creates in the current directory, so it runs on a
fresh machine with no server. This package uses millpond's public API only: ``millpond.Pool``,
``millpond.AsyncPool``, ``millpond.errors`` and the driver adapters of ``millpond.drivers``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import millpond
from millpond.cli import bench_output, bench_plot
from millpond.cli.bench_measure import (
    Interrupted,
    RunLimits,
    RunResult,
    drive_tasks,
    drive_threads,
    one_line,
)
from millpond.cli.bench_modes import (
    ASYNC_MODES,
    MODE_KEYS,
    SYNC_MODES,
    AsyncSession,
    Mode,
    SyncSession,
    Target,
    installed,
)
from millpond.cli.bench_sql import (
    ROWS,
    TABLE,
    WORKLOADS,
    ServerInfo,
    Workload,
    async_sql_for,
    database_of,
    make_async_work,
    make_sync_work,
    prepare_async,
    prepare_sync,
    server_info_async,
    server_info_sync,
)
from millpond.drivers import SyncAdapter
from millpond.drivers.async_base import AsyncAdapter
from millpond.errors import ConfigError

__all__ = ["DEFAULT_DB_FILE", "ROWS", "TABLE", "BenchError", "add_parser", "run"]

DEFAULT_DB_FILE = "millpond-bench.sqlite"
# Without --duration or --requests the runs share this many seconds (each between the two
# bounds), so the first command a user types answers in about ten seconds however many modes
# are installed.
DEFAULT_BUDGET = 10.0
MIN_RUN, MAX_RUN = 0.5, 5.0
DEFAULT_CONCURRENCY = 8
_ASYNC_SCHEME_HINTS = ("+asyncpg", "+aiomysql", "+aiosqlite", "+psycopg_async", "+asyncmy")

# exit codes (also in --help)
EXIT_OK = 0
EXIT_FAILED = 1  # the database could not be reached, or no run served a request
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class BenchError(Exception):
    """A failure to report as one line, with the exit code to leave with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# -- arguments -----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seconds(text: str, *, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not zero):
        kind = "a number of seconds, 0 or more" if zero else "a positive number of seconds"
        raise argparse.ArgumentTypeError(f"{text} must be {kind}")
    return value


def _duration(text: str) -> float:
    return _seconds(text, zero=False)


def _think(text: str) -> float:
    return _seconds(text, zero=True)


def _sizes(text: str) -> list[int]:
    sizes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        sizes.append(_positive_int(part))
    if not sizes:
        raise argparse.ArgumentTypeError("give one size or a comma-separated list, e.g. 1,2,4,8")
    if max(sizes) > 1000:
        raise argparse.ArgumentTypeError(f"{max(sizes)} connections is more than a bench needs")
    return sorted(set(sizes))


def _modes(text: str) -> list[str]:
    keys: list[str] = []
    for part in text.split(","):
        key = part.strip().lower().replace("-", "_")
        key = {"no_pool": "nopool", "none": "nopool", "mysql_connector": "mysqlconnector"}.get(
            key, key
        )
        if not key:
            continue
        if key not in MODE_KEYS:
            raise argparse.ArgumentTypeError(
                f"unknown mode {part.strip()!r}; modes: {', '.join(MODE_KEYS)}"
            )
        keys.append(key)
    if not keys:
        raise argparse.ArgumentTypeError(f"give at least one mode of: {', '.join(MODE_KEYS)}")
    return list(dict.fromkeys(keys))


def _plot_path(text: str) -> str:
    suffix = os.path.splitext(text)[1].lower()
    if suffix not in (".png", ".svg", ".pdf"):
        raise argparse.ArgumentTypeError(f"{text!r}: the file name must end in .png, .svg or .pdf")
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{text!r}: the directory {parent} does not exist")
    return text


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="measure what a pool buys and how big it should be, on your database",
        description=(
            "Run the same requests with a new connection per request (no pool), through "
            "millpond and through every installed peer pool, over one or several pool sizes, "
            "and report throughput, latency, the wait for a connection, errors and connections "
            "opened, with advice on the pool size."
        ),
        epilog=(
            f"With no URL, an SQLite file {DEFAULT_DB_FILE!r} is created in the current "
            f"directory. The read and write workloads use a table {TABLE!r} ({ROWS} rows), "
            "created if missing. asyncio URLs (postgresql+asyncpg://, postgresql+psycopg_async://, "
            "mysql+aiomysql://, sqlite+aiosqlite:///) run asyncio tasks and millpond.AsyncPool. "
            "Every pool starts full and keeps its own defaults except its size. "
            "Exit status: 0 done, 1 the database could not be reached (or no request "
            "succeeded), 2 bad usage (option, URL, missing driver, failing query), "
            "130 interrupted (partial results are printed)."
        ),
    )
    p.add_argument(
        "url",
        nargs="?",
        help="database URL, e.g. postgresql://user@host/db, mysql://user@host/db, "
        f"postgresql+asyncpg://..., sqlite:///file (default: ./{DEFAULT_DB_FILE})",
    )
    work = p.add_argument_group("the requests")
    work.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        default="select1",
        help="; ".join(f"{w.name}: {w.help}" for w in WORKLOADS.values()) + " (default: select1)",
    )
    work.add_argument(
        "--sql",
        metavar="QUERY",
        help="run QUERY instead of a workload (rows are fetched, then committed; it runs once "
        "first, as a check)",
    )
    work.add_argument(
        "--think-time",
        type=_think,
        default=0.0,
        metavar="S",
        help="seconds each worker waits between requests, holding no connection (default: 0)",
    )
    amount = work.add_mutually_exclusive_group()
    amount.add_argument(
        "--duration",
        type=_duration,
        metavar="S",
        help=f"seconds per run (default: about {DEFAULT_BUDGET:g} s in all, shared by the runs)",
    )
    amount.add_argument(
        "--requests",
        type=_positive_int,
        metavar="N",
        help="requests per run, instead of a duration",
    )
    load = p.add_argument_group("the load and the pools")
    load.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help=f"threads (asyncio tasks for an asyncio URL) issuing requests (default: "
        f"{DEFAULT_CONCURRENCY}, or the largest pool size if that is more)",
    )
    load.add_argument(
        "--pool-size",
        type=_sizes,
        metavar="N[,N...]",
        help="pool size, or a comma-separated sweep such as 1,2,4,8,16 (default: 1, 2, 4... "
        "up to the concurrency)",
    )
    load.add_argument(
        "--modes",
        type=_modes,
        metavar="M[,M...]",
        help=f"modes to run, of: {', '.join(MODE_KEYS)} (default: every one installed that "
        "applies to the database)",
    )
    load.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="processes that will each run a pool, for the advice on the server's "
        "max_connections (default: 1)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the results as JSON")
    out.add_argument(
        "--plot",
        type=_plot_path,
        metavar="FILE.png",
        help="draw throughput and p99 latency against pool size, per mode (needs matplotlib: "
        "pip install 'millpond[plot]')",
    )
    p.set_defaults(handler=run)
    return p


# -- choosing the modes --------------------------------------------------------------------------


@dataclass
class ModePlan:
    modes: list[Mode]
    skipped: list[dict[str, Any]] = field(default_factory=list)


def _skip(mode: Mode, reason: str) -> dict[str, Any]:
    return {
        "mode": mode.key,
        "label": mode.label,
        "reason": reason,
        "install": f"pip install 'millpond[{mode.install}]'" if mode.install else None,
    }


def _uses(mode: Mode, driver: str) -> bool:
    return mode.drivers is None or driver in mode.drivers


def plan_modes(asyncio_url: bool, driver: str, requested: Sequence[str] | None) -> ModePlan:
    """The modes that run for this target, and the peers for its database that cannot (with
    what would bring them). A mode named in ``--modes`` that cannot run is an error instead."""
    database = database_of(driver)
    mine = ASYNC_MODES if asyncio_url else SYNC_MODES
    other = SYNC_MODES if asyncio_url else ASYNC_MODES
    plan = ModePlan([])
    reasons: dict[str, str] = {}
    for mode in mine:
        if mode.database is not None and mode.database != database:
            reasons.setdefault(mode.key, f"it is for {mode.database}, not {database}")
            continue
        if mode.library is not None and not installed(mode.library):
            reason = f"not installed: pip install 'millpond[{mode.install}]'"
        elif not _uses(mode, driver):
            reason = f"it runs on another driver: compare it with a {mode.scheme}:// URL"
        else:
            plan.modes.append(mode)
            continue
        reasons[mode.key] = reason
        plan.skipped.append(_skip(mode, reason))
    runnable = {m.key for m in plan.modes}
    for mode in other:
        # a peer for this database on the other side (threads / asyncio): say how to try it
        if mode.key in runnable or mode.key in {s["mode"] for s in plan.skipped}:
            continue
        if mode.database is None or mode.database != database or mode.scheme is None:
            reasons.setdefault(mode.key, "it does not apply to this URL")
            continue
        kind = "asyncio" if mode.asyncio else "threads"
        reason = f"{kind}: compare it with a {mode.scheme}:// URL"
        reasons[mode.key] = reason
        plan.skipped.append(_skip(mode, reason))
    if requested is None:
        return plan
    for key in requested:
        if key not in runnable:
            label = next(m.label for m in (*mine, *other) if m.key == key)
            why = reasons.get(key, "it does not apply to this URL")
            raise BenchError(f"--modes {key}: {label} cannot run here: {why}", EXIT_USAGE)
    order = {key: i for i, key in enumerate(requested)}
    return ModePlan(sorted((m for m in plan.modes if m.key in order), key=lambda m: order[m.key]))


# -- before the runs -----------------------------------------------------------------------------


def _is_async_url(url: str) -> bool:
    scheme = url.partition("://")[0].lower()
    return any(scheme.endswith(h) for h in _ASYNC_SCHEME_HINTS)


def _resolve(url: str, asyncio_url: bool) -> Target:
    try:
        if asyncio_url:
            from millpond.drivers.async_url import resolve_async

            a_adapter = resolve_async(url)
            return Target(url, a_adapter.name, async_adapter=a_adapter)
        from millpond.drivers.url import resolve

        s_adapter = resolve(url)
        return Target(url, s_adapter.name, sync_adapter=s_adapter)
    except ConfigError as exc:
        raise BenchError(one_line(exc), EXIT_USAGE) from None


def _cannot_connect(
    description: str, redact: Callable[[str], str], exc: BaseException
) -> BenchError:
    return BenchError(f"cannot connect to {description}: {redact(one_line(exc))}", EXIT_FAILED)


def _failed(
    workload: Workload, sql: str | None, redact: Callable[[str], str], exc: BaseException
) -> BenchError:
    what = "the query" if sql is not None else f"the {workload.name} workload"
    return BenchError(f"{what} failed: {redact(one_line(exc))}", EXIT_USAGE)


def _preflight_sync(
    adapter: SyncAdapter,
    workload: Workload,
    sql: str | None,
    work: Callable[[Any, random.Random], None],
    default_db: bool,
) -> ServerInfo | None:
    """Connect once and run the work once, so a wrong URL, a missing table or bad SQL is one
    clear message before any worker starts; read the server's connection limit meanwhile."""
    try:
        conn = adapter.connect()
    except Exception as exc:
        raise _cannot_connect(adapter.description, adapter.redact, exc) from None
    try:
        paramstyle = getattr(adapter.module, "paramstyle", None)
        if sql is None and (workload.table or default_db):
            try:
                prepare_sync(conn, paramstyle, sqlite_file=default_db)
            except Exception as exc:
                raise BenchError(
                    f"cannot create the {TABLE} table: {adapter.redact(one_line(exc))}", EXIT_USAGE
                ) from None
        try:
            work(conn, random.Random(0))  # a writing workload commits this trial run too
            conn.rollback()
        except Exception as exc:
            raise _failed(workload, sql, adapter.redact, exc) from None
        return server_info_sync(conn, database_of(adapter.name))
    finally:
        with contextlib.suppress(Exception):  # it has served its purpose
            adapter.close(conn)


async def _preflight_async(
    adapter: AsyncAdapter,
    workload: Workload,
    sql: str | None,
    work: Callable[[Any, random.Random], Any],
    default_db: bool,
) -> ServerInfo | None:
    dialect = async_sql_for(adapter.name)
    try:
        conn = await adapter.connect()
    except Exception as exc:
        raise _cannot_connect(adapter.description, adapter.redact, exc) from None
    try:
        if sql is None and (workload.table or default_db):
            try:
                await prepare_async(conn, dialect, sqlite_file=default_db)
            except Exception as exc:
                raise BenchError(
                    f"cannot create the {TABLE} table: {adapter.redact(one_line(exc))}", EXIT_USAGE
                ) from None
        try:
            await work(conn, random.Random(0))
            await dialect.rollback(conn)
        except Exception as exc:
            raise _failed(workload, sql, adapter.redact, exc) from None
        return await server_info_async(conn, database_of(adapter.name), dialect)
    finally:
        with contextlib.suppress(Exception):
            await adapter.close(conn)


# -- the runs ------------------------------------------------------------------------------------


@dataclass
class Bench:
    """One invocation: what to run, and what has been measured so far (kept when Ctrl-C
    cuts it short)."""

    target: Target
    runs: list[tuple[Mode, int | None]]  # (mode, pool size; None for no pool)
    limits: RunLimits
    results: list[RunResult] = field(default_factory=list)
    interrupted: bool = False

    def label(self, mode: Mode, size: int | None) -> str:
        return mode.label if size is None else f"{mode.label}, size {size}"

    def total(self) -> float:
        return self.limits.duration or float(self.limits.requests or 0)

    def start(self, mode: Mode, size: int | None) -> RunResult:
        result = RunResult(mode.key, mode.label, size, self.limits.concurrency)
        self.results.append(result)
        return result


def _setup_failed(result: RunResult, redact: Callable[[str], str], exc: BaseException) -> None:
    # one failed attempt: the row shows 0 req/s and the error, and the sweep goes on
    result.errors = result.requests = 1
    result.first_error = "the pool did not open: " + redact(one_line(exc))


def run_sync(
    bench: Bench, work: Callable[[Any, random.Random], None], progress: bench_output.Progress
) -> None:
    adapter = bench.target.sync_adapter
    assert adapter is not None
    for index, (mode, size) in enumerate(bench.runs):
        assert mode.open_sync is not None
        result = bench.start(mode, size)
        try:
            session: SyncSession = mode.open_sync(bench.target, size or 1)
        except KeyboardInterrupt:  # while the pool opened: nothing measured in this run
            bench.results.pop()
            bench.interrupted = True
            return
        except Exception as exc:
            _setup_failed(result, adapter.redact, exc)
            continue
        try:
            with progress.run(index, bench.label(mode, size), bench.total()) as update:
                drive_threads(result, session.borrow, work, bench.limits, update)
        except Interrupted:
            bench.interrupted = True
        finally:
            result.connections_opened = session.opened()
            if result.first_error:
                result.first_error = adapter.redact(result.first_error)
            result.finish()
            try:
                session.close()
            except KeyboardInterrupt:
                bench.interrupted = True
            except Exception:  # a pool that fails to close changes nothing measured
                pass
        if bench.interrupted:
            return


async def run_async(
    bench: Bench, work: Callable[[Any, random.Random], Any], progress: bench_output.Progress
) -> None:
    adapter = bench.target.async_adapter
    assert adapter is not None
    for index, (mode, size) in enumerate(bench.runs):
        assert mode.open_async is not None
        result = bench.start(mode, size)
        try:
            session: AsyncSession = await mode.open_async(bench.target, size or 1)
        except asyncio.CancelledError:  # Ctrl-C while the pool opened: nothing measured here
            bench.results.pop()
            raise
        except Exception as exc:
            _setup_failed(result, adapter.redact, exc)
            continue
        try:
            with progress.run(index, bench.label(mode, size), bench.total()) as update:
                await drive_tasks(result, session.borrow, work, bench.limits, update)
        except Interrupted:
            bench.interrupted = True
        finally:
            result.connections_opened = session.opened()
            if result.first_error:
                result.first_error = adapter.redact(result.first_error)
            result.finish()
            with contextlib.suppress(Exception):
                await session.close()
        if bench.interrupted:
            return


class _SigintCancels:
    """Ctrl-C under asyncio: cancel the bench's task instead of raising KeyboardInterrupt
    wherever the loop happens to be, so every pool still closes and the partial results
    print. (asyncio.run cancels the main task too, but then re-raises KeyboardInterrupt
    where the bench wants to print what it measured and exit normally.)"""

    def __init__(self) -> None:
        self.fired = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_sigint() -> None:
            self.fired = True
            task.cancel()

        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not main thread
            return
        self._loop = loop

    def remove(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGINT)
            self._loop = None


async def _async_main(
    bench: Bench,
    workload: Workload,
    sql: str | None,
    default_db: bool,
    progress: bench_output.Progress,
) -> ServerInfo | None:
    adapter = bench.target.async_adapter
    assert adapter is not None
    work = make_async_work(workload, sql, async_sql_for(adapter.name))
    sigint = _SigintCancels()
    sigint.install()
    server: ServerInfo | None = None
    try:
        server = await _preflight_async(adapter, workload, sql, work, default_db)
        with progress:
            await run_async(bench, work, progress)
    except asyncio.CancelledError:
        if not sigint.fired:
            raise
        bench.interrupted = True
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    finally:
        sigint.remove()
    return server


# -- the command ---------------------------------------------------------------------------------


def run(
    args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        return _run(args, out, err)
    except BenchError as exc:
        err.write(f"millpond bench: error: {exc}\n")
        return exc.code
    except KeyboardInterrupt:  # before the first run started: nothing to show
        err.write("millpond bench: interrupted before any results\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise  # the command line's own business (see millpond.cli.main)
    except Exception as exc:
        # a bug of ours, or a failure nobody foresaw: still one line; MILLPOND_DEBUG=1 shows
        # the traceback for a bug report
        if os.environ.get("MILLPOND_DEBUG"):
            raise
        err.write(f"millpond bench: error: {one_line(exc)} (MILLPOND_DEBUG=1 for details)\n")
        return EXIT_FAILED


def _default_sizes(concurrency: int) -> list[int]:
    sizes = [1]
    while sizes[-1] * 2 <= concurrency:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != concurrency:
        sizes.append(concurrency)
    return sizes


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.plot:
        try:
            bench_plot.check_available()
        except bench_plot.PlotUnavailable as exc:
            raise BenchError(str(exc), EXIT_USAGE) from None
    default_db = args.url is None
    url: str = args.url if not default_db else "sqlite:///" + os.path.abspath(DEFAULT_DB_FILE)
    asyncio_url = _is_async_url(url)
    target = _resolve(url, asyncio_url)
    plan = plan_modes(asyncio_url, target.driver, args.modes)

    sizes: list[int] = args.pool_size or []
    concurrency: int = args.concurrency or max(DEFAULT_CONCURRENCY, *sizes, 1)
    if not sizes:
        sizes = _default_sizes(concurrency)
    runs: list[tuple[Mode, int | None]] = []
    for mode in plan.modes:
        runs += [(mode, s) for s in sizes] if mode.pooled else [(mode, None)]
    if args.requests is not None:
        duration: float | None = None
    elif args.duration is not None:
        duration = args.duration
    else:
        duration = round(min(MAX_RUN, max(MIN_RUN, DEFAULT_BUDGET / max(1, len(runs)))), 2)
    limits = RunLimits(concurrency, duration, args.requests, args.think_time)
    bench = Bench(target, runs, limits)
    workload = WORKLOADS[args.workload]
    progress = bench_output.Progress(err, len(runs))

    server: ServerInfo | None = None
    if asyncio_url:
        try:
            server = asyncio.run(_async_main(bench, workload, args.sql, default_db, progress))
        except KeyboardInterrupt:  # where the loop cannot take over SIGINT (Windows)
            if not bench.results:
                raise
            bench.interrupted = True
    else:
        adapter = target.sync_adapter
        assert adapter is not None
        work = make_sync_work(workload, args.sql, getattr(adapter.module, "paramstyle", None))
        server = _preflight_sync(adapter, workload, args.sql, work, default_db)
        try:
            with progress:
                run_sync(bench, work, progress)
        except KeyboardInterrupt:  # between two runs: what was measured stands
            bench.interrupted = True

    report = _report(bench, target, workload, args, sizes, plan, server)
    if args.plot and report["runs"]:
        try:
            bench_plot.write_plot(report, args.plot)
            report["plot"] = args.plot
        except Exception as exc:
            err.write(f"millpond bench: error: cannot write the plot: {one_line(exc)}\n")
            return EXIT_FAILED
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
    elif report["runs"]:
        ran = {r["mode"] for r in report["runs"]}
        notes = [(m.label, m.note) for m in plan.modes if m.note and m.key in ran]
        bench_output.render(report, out, notes)
    if bench.interrupted:
        err.write(
            "millpond bench: interrupted: "
            + (
                "partial results above\n"
                if report["runs"] and not args.json
                else "partial results\n"
                if report["runs"]
                else "no results\n"
            )
        )
        return EXIT_INTERRUPTED
    if report["runs"] and not any(r["ok"] for r in report["runs"]):
        first = next((r["first_error"] for r in report["runs"] if r["first_error"]), "")
        err.write(f"millpond bench: error: no request succeeded: {first}\n")
        return EXIT_FAILED
    return EXIT_OK


def _report(
    bench: Bench,
    target: Target,
    workload: Workload,
    args: argparse.Namespace,
    sizes: list[int],
    plan: ModePlan,
    server: ServerInfo | None,
) -> dict[str, Any]:
    adapter = target.sync_adapter or target.async_adapter
    assert adapter is not None
    report: dict[str, Any] = {
        "millpond_version": millpond.__version__,
        "target": adapter.description,
        "driver": target.driver,
        "database": database_of(target.driver),
        "asyncio": target.async_adapter is not None,
        "workload": "custom" if args.sql is not None else workload.name,
        "sql": args.sql if args.sql is not None else workload.sql.replace("{id}", "<id>"),
        "custom_sql": args.sql is not None,
        "think_time_s": bench.limits.think,
        "concurrency": bench.limits.concurrency,
        "pool_sizes": sizes,
        "duration_s": bench.limits.duration,
        "requests_per_run": bench.limits.requests,
        "processes": args.processes,
        "server": None
        if server is None
        else {"max_connections": server.max_connections, "connections_in_use": server.in_use},
        "modes": [{"mode": m.key, "label": m.label} for m in plan.modes],
        "skipped": plan.skipped,
        "runs": [r.summary() for r in bench.results],
        "interrupted": bench.interrupted,
        "advice": None,
        "speedup": None,
        "plot": None,
    }
    report["advice"] = bench_output.advise(report, server)
    report["speedup"] = bench_output.speedup(report)
    return report
