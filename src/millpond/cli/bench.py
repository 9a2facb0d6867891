"""``millpond bench``: what a pool saves you, measured on your own database.

Two modes run one after the other with the same threads and the same work:

* ``no pool``: every request opens a new connection, runs the work and closes it;
* ``millpond Pool``: every request borrows from a :class:`millpond.Pool` and gives back.

With no URL it benchmarks an SQLite file it creates in the current directory, so it runs on a
fresh machine with no server. This module uses millpond's public API only: ``millpond.Pool``,
``millpond.errors`` and the driver adapters that ``millpond.drivers.url`` resolves.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TextIO

import millpond
from millpond.drivers import SyncAdapter
from millpond.errors import ConfigError, ConnectError, PoolError

__all__ = ["DEFAULT_DB_FILE", "TABLE", "BenchError", "add_parser", "run"]

DEFAULT_DB_FILE = "millpond-bench.sqlite"
TABLE = "millpond_bench"
ROWS = 1000

# exit codes (also in --help)
EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class BenchError(Exception):
    """A failure to report as one line, with the exit code to leave with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# -- arguments ---------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="measure throughput and latency with and without the pool",
        description=(
            "Run the same work with a new connection per request (no pool) and through a "
            "millpond.Pool, side by side, and report throughput, latency, connection wait, "
            "errors and connections opened."
        ),
        epilog=(
            f"With no URL, an SQLite file {DEFAULT_DB_FILE!r} is created in the current "
            f"directory. The read and write workloads use a table {TABLE!r} ({ROWS} rows), "
            "created if missing. Exit status: 0 done, 1 the database could not be reached, "
            "2 bad usage (option, URL, missing driver, failing query), 130 interrupted "
            "(partial results are printed)."
        ),
    )
    p.add_argument(
        "url",
        nargs="?",
        help=f"database URL, e.g. postgresql://user@host/db, mysql://..., sqlite:///file "
        f"(default: ./{DEFAULT_DB_FILE})",
    )
    amount = p.add_mutually_exclusive_group()
    amount.add_argument(
        "--duration", type=_positive_float, metavar="S",
        help="seconds to run each mode (default: 5)",
    )
    amount.add_argument(
        "--requests", type=_positive_int, metavar="N",
        help="requests to run in each mode, instead of a duration",
    )
    p.add_argument("--concurrency", type=_positive_int, default=8, metavar="N",
                   help="threads issuing requests (default: 8)")
    p.add_argument("--pool-size", type=_positive_int, metavar="N",
                   help="the pool's size (default: the concurrency)")
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="select1",
                   help="select1: SELECT 1; read: a row by primary key; write: update a row "
                   "and commit (default: select1)")
    p.add_argument("--sql", metavar="QUERY",
                   help="run QUERY instead of the workload (rows are fetched, then committed; "
                   "it runs once more first, as a check)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=run)
    return p


# -- workloads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    sql: str  # "{id}" marks the one parameter, bound in the driver's own paramstyle
    table: bool = False  # needs the generated table
    commit: bool = False


WORKLOADS = {
    "select1": Workload("select1", "SELECT 1"),
    "read": Workload("read", f"SELECT id, name, value FROM {TABLE} WHERE id = {{id}}",
                     table=True),
    "write": Workload("write", f"UPDATE {TABLE} SET value = value + 1 WHERE id = {{id}}",
                      table=True, commit=True),
}

# DB-API paramstyle -> (placeholder, how to pass one value)
_PARAMSTYLES: dict[str, tuple[str, Callable[[int], Any]]] = {
    "qmark": ("?", lambda v: (v,)),
    "format": ("%s", lambda v: (v,)),
    "pyformat": ("%s", lambda v: (v,)),
    "numeric": (":1", lambda v: (v,)),
    "named": (":id", lambda v: {"id": v}),
}

Work = Callable[[Any, random.Random], None]


def make_work(workload: Workload, sql: str | None, paramstyle: str | None) -> Work:
    """The function one request runs on a connection: execute, fetch any rows, commit if the
    workload writes (a custom ``--sql`` always commits: it may write)."""
    commit = workload.commit or sql is not None
    query = sql if sql is not None else workload.sql
    bind: Callable[[int], Any] | None = None
    inline = False
    if sql is None and "{id}" in query:
        style = _PARAMSTYLES.get(paramstyle or "")
        if style is None:
            # a driver with an unusual paramstyle: an integer literal is safe to inline
            query, inline = query.replace("{id}", "%d"), True
        else:
            query, bind = query.replace("{id}", style[0]), style[1]

    def work(conn: Any, rng: random.Random) -> None:
        cur = conn.cursor()
        try:
            if bind is not None:
                cur.execute(query, bind(rng.randint(1, ROWS)))
            elif inline:
                cur.execute(query % rng.randint(1, ROWS))
            else:
                cur.execute(query)
            if cur.description is not None:
                cur.fetchall()
        finally:
            cur.close()
        if commit:
            conn.commit()

    return work


def prepare(conn: Any, paramstyle: str | None, sqlite_file: bool) -> None:
    """Create and fill the benchmark table if it is missing or short of rows."""
    cur = conn.cursor()
    try:
        if sqlite_file:
            # concurrent writers on one file: WAL lets readers run beside the writer
            cur.execute("PRAGMA journal_mode=WAL")
            cur.fetchall()
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} "
            "(id INTEGER PRIMARY KEY, name VARCHAR(40) NOT NULL, value INTEGER NOT NULL)"
        )
        conn.commit()
        cur.execute(f"SELECT COUNT(*) FROM {TABLE}")
        row = cur.fetchone()
        if row is not None and row[0] == ROWS:
            return
        cur.execute(f"DELETE FROM {TABLE}")
        rows = [(i, f"row-{i}", i) for i in range(1, ROWS + 1)]
        style = _PARAMSTYLES.get(paramstyle or "")
        if style is None or style[0] in (":1", ":id"):
            # numeric and named styles want other parameter shapes; these values are our
            # own integers and names, so literals are safe
            for i, name, value in rows:
                cur.execute(f"INSERT INTO {TABLE} (id, name, value) VALUES ({i}, '{name}', {value})")
        else:
            ph = style[0]
            cur.executemany(
                f"INSERT INTO {TABLE} (id, name, value) VALUES ({ph}, {ph}, {ph})", rows
            )
        conn.commit()
    finally:
        cur.close()


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class ModeResult:
    key: str
    label: str
    requests: int = 0  # finished, with or without error
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    waits: list[float] = field(default_factory=list)  # seconds to get a connection
    connections_opened: int = 0
    first_error: str | None = None
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        wait = sorted(self.waits)
        return {
            "label": self.label,
            "requests": self.requests,
            "ok": self.requests - self.errors,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed, 4),
            "throughput_rps": round((self.requests - self.errors) / self.elapsed, 1)
            if self.elapsed > 0 else 0.0,
            "latency_ms": {p: _ms(percentile(lat, q)) for p, q in
                           (("p50", 50), ("p95", 95), ("p99", 99))},
            "wait_ms": {p: _ms(percentile(wait, q)) for p, q in (("p50", 50), ("p99", 99))},
            "connections_opened": self.connections_opened,
            "first_error": self.first_error,
            "interrupted": self.interrupted,
        }


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile; None when there is nothing to rank."""
    if not sorted_values:
        return None
    k = math.ceil(pct / 100 * len(sorted_values)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 4)


class _Thread:
    """One request loop's private tallies: merged only after the threads are joined, so the
    loop itself takes no lock."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.done = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.waits: list[float] = []
        self.first_error: BaseException | None = None


Borrow = Callable[[], Any]  # returns a context manager yielding a connection


def drive(
    result: ModeResult,
    borrow: Borrow,
    work: Work,
    concurrency: int,
    duration: float | None,
    requests: int | None,
    progress: Progress,
) -> None:
    """Run the request loop on ``concurrency`` threads; fill ``result``. A KeyboardInterrupt
    stops the threads, keeps what they measured and is raised again."""
    stop = threading.Event()
    budget = itertools.count() if requests is not None else None
    tallies = [_Thread(seed) for seed in range(concurrency)]
    clock = time.perf_counter

    def loop(t: _Thread) -> None:
        rng = t.rng
        lat = t.latencies
        waits = t.waits
        while not stop.is_set():
            if budget is not None and requests is not None and next(budget) >= requests:
                return
            t0 = clock()
            try:
                with borrow() as conn:
                    t1 = clock()
                    work(conn, rng)
                t2 = clock()
            except Exception as exc:
                t.errors += 1
                if t.first_error is None:
                    t.first_error = exc
            else:
                waits.append(t1 - t0)
                lat.append(t2 - t0)
            t.done += 1

    threads = [threading.Thread(target=loop, args=(t,), name=f"millpond-bench-{i}", daemon=True)
               for i, t in enumerate(tallies)]
    start = clock()
    interrupted = False
    try:
        for th in threads:
            th.start()
        total = duration if duration is not None else float(requests or 0)
        with progress.task(result.label, total) as update:
            while True:
                elapsed = clock() - start
                done = sum(t.done for t in tallies)
                update(elapsed if duration is not None else done, done, elapsed)
                if duration is not None and elapsed >= duration:
                    break
                if not any(th.is_alive() for th in threads):
                    break
                time.sleep(min(0.1, duration - elapsed) if duration is not None else 0.05)
    except KeyboardInterrupt:
        interrupted = True
    stop.set()
    for th in threads:
        # a request in flight finishes (or fails) first; a wedged one is abandoned (daemon)
        th.join(timeout=10)
    result.elapsed = clock() - start
    result.interrupted = interrupted
    for t in tallies:
        result.requests += t.done
        result.errors += t.errors
        result.latencies += t.latencies
        result.waits += t.waits
        if result.first_error is None and t.first_error is not None:
            result.first_error = _one_line(t.first_error)
    if interrupted:
        raise KeyboardInterrupt


# -- the two modes -----------------------------------------------------------------------------


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


def run_no_pool(adapter: SyncAdapter, work: Work, opts: Options, progress: Progress,
                results: list[ModeResult]) -> None:
    # listed before it runs, so that Ctrl-C in the middle still reports what it measured
    result = ModeResult("no_pool", "no pool")
    results.append(result)
    opened = _Counter()

    @contextmanager
    def connect() -> Iterator[Any]:
        conn = adapter.connect()
        opened.add()
        try:
            yield conn
        finally:
            adapter.close(conn)

    try:
        drive(result, connect, work, opts.concurrency, opts.duration, opts.requests, progress)
    finally:
        result.connections_opened = opened.value
        if result.first_error:
            result.first_error = adapter.redact(result.first_error)


def run_pool(url: str, adapter: SyncAdapter, work: Work, opts: Options, progress: Progress,
             results: list[ModeResult]) -> None:
    result = ModeResult("pool", "millpond Pool")
    try:
        pool = millpond.Pool(url, min_size=opts.pool_size, max_size=opts.pool_size,
                             name="bench")
    except ConfigError as exc:
        raise BenchError(_one_line(exc), EXIT_USAGE) from None
    try:
        pool.open(wait=True, timeout=30)
    except ConnectError as exc:
        pool.close(timeout=1)
        raise BenchError(_one_line(exc), EXIT_UNREACHABLE) from None
    except PoolError as exc:
        pool.close(timeout=1)
        raise BenchError(f"the pool did not fill: {_one_line(exc)}", EXIT_UNREACHABLE) from None
    except BaseException:  # Ctrl-C while it fills
        pool.close(timeout=1)
        raise
    results.append(result)
    try:
        drive(result, pool.connection, work, opts.concurrency, opts.duration, opts.requests,
              progress)
    finally:
        result.connections_opened = pool.stats().connects
        pool.close(timeout=5)
        if result.first_error:
            result.first_error = adapter.redact(result.first_error)


# -- progress and output -----------------------------------------------------------------------


Update = Callable[[float, int, float], None]


class Progress:
    """A live indicator on stderr when it is a terminal: rich's if installed, else one
    rewritten line. Silent otherwise, so pipes and tests see only the results."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()

    @contextmanager
    def task(self, label: str, total: float) -> Iterator[Update]:
        if not self.live:
            yield lambda completed, done, elapsed: None
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, SpinnerColumn, TextColumn
            from rich.progress import Progress as RichProgress
        except ImportError:
            yield from self._plain(label)
            return
        with RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description:<14}"),
            BarColumn(),
            TextColumn("{task.fields[done]:>9,} requests  {task.fields[rate]:>9,.0f}/s"),
            console=Console(file=self.stream),
            transient=True,
        ) as bar:
            tid = bar.add_task(label, total=total or None, done=0, rate=0.0)

            def update(completed: float, done: int, elapsed: float) -> None:
                bar.update(tid, completed=completed, done=done,
                           rate=done / elapsed if elapsed > 0 else 0.0)

            yield update

    def _plain(self, label: str) -> Iterator[Update]:
        def update(completed: float, done: int, elapsed: float) -> None:
            rate = done / elapsed if elapsed > 0 else 0.0
            self.stream.write(f"\r{label:<14} {done:>9,} requests {rate:>9,.0f}/s {elapsed:5.1f}s")
            self.stream.flush()

        try:
            yield update
        finally:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:,.0f}"


# short enough for an 80-column terminal
COLUMNS = ("mode", "req/s", "p50", "p95", "p99", "wait p50", "wait p99", "errors", "conns")


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for m in report["modes"].values():
        lat, wait = m["latency_ms"], m["wait_ms"]
        rows.append([
            m["label"] + ("*" if m["interrupted"] else ""),
            f"{m['throughput_rps']:,.0f}",
            _fmt_ms(lat["p50"]), _fmt_ms(lat["p95"]), _fmt_ms(lat["p99"]),
            _fmt_ms(wait["p50"]), _fmt_ms(wait["p99"]),
            f"{m['errors']:,}", f"{m['connections_opened']:,}",
        ])
    return rows


def headline(report: dict[str, Any]) -> str:
    amount = (f"{report['duration_s']:g} s" if report["duration_s"] is not None
              else f"{report['requests_per_mode']:,} requests")
    what = f"--sql {report['sql']!r}" if report["custom_sql"] else f"workload {report['workload']}"
    return (f"millpond bench: {report['target']} ({report['driver']}), {what}, "
            f"{report['concurrency']} threads, pool of {report['pool_size']}, {amount} per mode")


def footer(report: dict[str, Any]) -> list[str]:
    lines = ["p50/p95/p99: request latency, ms; wait: ms to get a connection (no pool: to "
             "open one); conns: connections opened"]
    speedup = report.get("speedup")
    if speedup is not None:
        lines.append(f"millpond Pool: {speedup:.1f}x the throughput of a connection per request")
    for m in report["modes"].values():
        if m["first_error"]:
            lines.append(f"{m['label']}: first error: {m['first_error']}")
    if report["interrupted"]:
        lines.append("* interrupted: partial results")
    return lines


def render_plain(report: dict[str, Any], out: TextIO) -> None:
    rows = table_rows(report)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(COLUMNS)]
    out.write(headline(report) + "\n\n")
    out.write("  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                        for i, (h, w) in enumerate(zip(COLUMNS, widths, strict=True))) + "\n")
    for r in rows:
        out.write("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths, strict=True))) + "\n")
    out.write("\n" + "\n".join(footer(report)) + "\n")


def render(report: dict[str, Any], out: TextIO) -> None:
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        render_plain(report, out)
        return
    # piped output has no terminal width to go by; rich would assume 80 and squeeze columns
    console = Console(file=out, width=None if out.isatty() else 120)
    console.print(headline(report), highlight=False, markup=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for i, h in enumerate(COLUMNS):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for r in table_rows(report):
        table.add_row(*r)
    console.print(table)
    for line in footer(report):
        console.print(line, highlight=False, markup=False)


# -- the command -------------------------------------------------------------------------------


@dataclass
class Options:
    concurrency: int
    pool_size: int
    duration: float | None
    requests: int | None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not text:
        text = type(exc).__name__
    elif not isinstance(exc, PoolError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 500 else text[:497] + "..."


def _resolve(url: str) -> SyncAdapter:
    try:
        from millpond.drivers.url import resolve
    except ImportError:  # pragma: no cover - every released millpond has it
        raise BenchError("this millpond cannot resolve database URLs", EXIT_USAGE) from None
    try:
        return resolve(url)
    except ConfigError as exc:
        raise BenchError(_one_line(exc), EXIT_USAGE) from None


def _preflight(adapter: SyncAdapter, workload: Workload, sql: str | None, work: Work,
               default_db: bool) -> None:
    """Connect once and run the work once, so a wrong URL, a missing table or bad SQL is one
    clear message before any thread starts."""
    try:
        conn = adapter.connect()
    except Exception as exc:
        raise BenchError(
            f"cannot connect to {adapter.description}: {adapter.redact(_one_line(exc))}",
            EXIT_UNREACHABLE,
        ) from None
    try:
        paramstyle = getattr(adapter.module, "paramstyle", None)
        if sql is None and (workload.table or default_db):
            try:
                prepare(conn, paramstyle, sqlite_file=default_db)
            except Exception as exc:
                raise BenchError(
                    f"cannot create the {TABLE} table: {adapter.redact(_one_line(exc))}",
                    EXIT_USAGE,
                ) from None
        try:
            work(conn, random.Random(0))  # a writing workload commits this trial run too
            conn.rollback()
        except Exception as exc:
            what = "the query" if sql is not None else f"the {workload.name} workload"
            raise BenchError(f"{what} failed: {adapter.redact(_one_line(exc))}",
                             EXIT_USAGE) from None
    finally:
        with suppress(Exception):  # it has served its purpose; a failing close changes nothing
            adapter.close(conn)


def run(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None
        ) -> int:
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        return _run(args, out, err)
    except BenchError as exc:
        err.write(f"millpond bench: error: {exc}\n")
        return exc.code


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    default_db = args.url is None
    url: str = args.url if not default_db else "sqlite:///" + os.path.abspath(DEFAULT_DB_FILE)
    opts = Options(
        concurrency=args.concurrency,
        pool_size=args.pool_size or args.concurrency,
        duration=args.duration if args.duration is not None or args.requests else 5.0,
        requests=args.requests,
    )
    workload = WORKLOADS[args.workload]
    adapter = _resolve(url)
    work = make_work(workload, args.sql, getattr(adapter.module, "paramstyle", None))
    progress = Progress(err)
    report: dict[str, Any] = {
        "millpond_version": millpond.__version__,
        "target": adapter.description,
        "driver": adapter.name,
        "workload": "custom" if args.sql is not None else workload.name,
        "sql": args.sql if args.sql is not None else workload.sql.replace("{id}", "<id>"),
        "custom_sql": args.sql is not None,
        "concurrency": opts.concurrency,
        "pool_size": opts.pool_size,
        "duration_s": opts.duration,
        "requests_per_mode": opts.requests,
        "interrupted": False,
        "modes": {},
        "speedup": None,
    }
    results: list[ModeResult] = []
    try:
        _preflight(adapter, workload, args.sql, work, default_db)
        run_no_pool(adapter, work, opts, progress, results)
        run_pool(url, adapter, work, opts, progress, results)
    except KeyboardInterrupt:
        report["interrupted"] = True
    # a mode cut short by Ctrl-C filled its result before the interrupt went on
    for r in results:
        report["modes"][r.key] = r.summary()
    modes = report["modes"]
    if "no_pool" in modes and "pool" in modes and modes["no_pool"]["throughput_rps"] > 0:
        report["speedup"] = round(modes["pool"]["throughput_rps"]
                                  / modes["no_pool"]["throughput_rps"], 2)
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
    elif modes:
        render(report, out)
    else:
        err.write("millpond bench: interrupted before any results\n")
    return EXIT_INTERRUPTED if report["interrupted"] else EXIT_OK

