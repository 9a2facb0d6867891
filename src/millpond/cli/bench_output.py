"""What ``millpond bench`` shows: the live progress bar, the results table, and the advice.

rich (the ``cli`` extra) draws the bar and the table; without it the same content comes out
as plain text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, TextIO

from millpond.cli.bench_sql import ServerInfo

__all__ = ["COLUMNS", "Progress", "advise", "headline", "render", "speedup", "table_rows"]

NEAR_BEST = 0.95  # the advice: the smallest pool within 5% of the best throughput

Update = Any  # Callable[[float, int, float], None]; spelled out in bench_measure


# -- progress ------------------------------------------------------------------------------------


class Progress:
    """A live display on ``stream`` while the runs go, when it is a terminal: rich's bars if
    installed, else one rewritten line. Silent otherwise, so pipes and tests see only results.

    Two bars: every run so far, and the run in progress (its requests and rate).
    """

    def __init__(self, stream: TextIO, runs: int) -> None:
        self.stream = stream
        self.runs = runs
        self.live = _isatty(stream)
        self._bar: Any = None
        self._overall: Any = None

    def __enter__(self) -> Progress:
        if not self.live:
            return self
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                SpinnerColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress
        except ImportError:
            return self
        self._bar = RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description:<28}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
            transient=True,
        )
        self._bar.__enter__()
        self._overall = self._bar.add_task("millpond bench", total=self.runs, info="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
            self._bar = None

    @contextlib.contextmanager
    def run(self, index: int, label: str, total: float) -> Iterator[Update]:
        """Track run ``index`` (from 0); ``total`` is its duration in seconds or its requests.
        Yields ``update(progress, requests, elapsed)``."""
        if not self.live:
            yield lambda progress, done, elapsed: None
            return
        bar = self._bar
        if bar is None:
            yield from self._plain(index, label)
            return
        overall = self._overall
        bar.update(overall, completed=index, info=f"run {index + 1} of {self.runs}")
        task = bar.add_task(label, total=total or None, info="")

        def update(progress: float, done: int, elapsed: float) -> None:
            rate = done / elapsed if elapsed > 0 else 0.0
            bar.update(task, completed=progress, info=f"{done:>9,} requests {rate:>9,.0f}/s")
            if total:
                bar.update(overall, completed=index + min(1.0, progress / total))

        try:
            yield update
        finally:
            bar.remove_task(task)
            bar.update(overall, completed=index + 1)

    def _plain(self, index: int, label: str) -> Iterator[Update]:
        def update(progress: float, done: int, elapsed: float) -> None:
            rate = done / elapsed if elapsed > 0 else 0.0
            self.stream.write(
                f"\r[{index + 1}/{self.runs}] {label:<28} {done:>9,} requests "
                f"{rate:>9,.0f}/s {elapsed:5.1f}s"
            )
            self.stream.flush()

        try:
            yield update
        finally:
            self.stream.write("\r" + " " * 78 + "\r")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


# -- analysis ------------------------------------------------------------------------------------


def _usable(run: dict[str, Any]) -> bool:
    return run["pool_size"] is not None and run["ok"] > 0 and not run["interrupted"]


def advise(report: dict[str, Any], server: ServerInfo | None) -> dict[str, Any] | None:
    """The smallest pool within 5% of the best throughput, for millpond (else the pooled mode
    with the best throughput), and what it means for the server's connection limit."""
    runs = [r for r in report["runs"] if _usable(r)]
    if not runs:
        return None
    modes = {r["mode"] for r in runs}
    if "millpond" in modes:
        mode = "millpond"
    else:
        mode = max(runs, key=lambda r: r["throughput_rps"])["mode"]
    mine = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["pool_size"])
    best = max(mine, key=lambda r: r["throughput_rps"])
    pick = next(r for r in mine if r["throughput_rps"] >= NEAR_BEST * best["throughput_rps"])
    size = pick["pool_size"]
    processes = report["processes"]
    needed = size * processes
    workers = "tasks" if report["asyncio"] else "threads"
    label = pick["label"]

    if len(mine) == 1 and report.get("interrupted"):
        first = f"only the run with a pool of {size} finished, so there is nothing to compare."
    elif len(mine) == 1:
        first = (
            f"only a pool of {size} was measured: sweep sizes (--pool-size 1,2,4,8,16) to "
            "find the smallest pool that keeps the throughput."
        )
    else:
        pct = round(100 * pick["throughput_rps"] / best["throughput_rps"])
        first = (
            f"a pool of {size} gives {pct}% of {label}'s best throughput "
            f"({best['throughput_rps']:,.0f} req/s at {best['pool_size']}) for "
            f"{report['concurrency']} {workers}"
        )
        if size >= report["concurrency"]:
            # every worker holds a connection all the time: a smaller pool makes them queue
            first += "; any smaller pool makes the workers queue for connections."
        elif size == mine[-1]["pool_size"]:
            first += "; it was still rising at the largest size tried, so try larger ones."
        else:
            first += "; more connections buy nothing here."

    if report["database"] == "sqlite":
        second = "SQLite has no server, so there is no connection limit to budget."
    else:
        who = "1 process" if processes == 1 else f"{processes} processes"
        second = f"{who} × {size} = {needed} server connection{'s' if needed != 1 else ''}"
        if server is not None:
            others = max(0, (server.in_use or 1) - 1)  # ours: the one reading the limit
            spare = server.max_connections - others - needed
            second += f" of max_connections {server.max_connections} ({others} in use by others)"
            if spare < 0:
                second += (
                    ": more than the server allows; use fewer or smaller pools, or a "
                    "server-side pooler (PgBouncer, ProxySQL)."
                )
            else:
                second += f", leaving {spare}."
        else:
            second += "."
        if processes == 1:
            second += " Every process has its own pool: --processes N does the sum for yours."
    return {
        "mode": mode,
        "label": label,
        "pool_size": size,
        "throughput_rps": pick["throughput_rps"],
        "best_pool_size": best["pool_size"],
        "best_throughput_rps": best["throughput_rps"],
        "sizes_measured": len(mine),
        "processes": processes,
        "connections_needed": needed,
        "server_max_connections": server.max_connections if server else None,
        "server_connections_in_use": server.in_use if server else None,
        "text": f"Advice{' (from the runs that finished)' if report.get('interrupted') else ''}: "
        f"{first} {second}",
    }


def speedup(report: dict[str, Any]) -> dict[str, Any] | None:
    """What pooling buys: the advised pool against a new connection per request."""
    advice = report.get("advice")
    nopool = next((r for r in report["runs"] if r["mode"] == "nopool" and r["ok"] > 0), None)
    if advice is None or nopool is None or not nopool["throughput_rps"]:
        return None
    pooled = next(
        r
        for r in report["runs"]
        if r["mode"] == advice["mode"] and r["pool_size"] == advice["pool_size"]
    )
    ratio = pooled["throughput_rps"] / nopool["throughput_rps"]
    p99, p99_nopool = pooled["latency_ms"]["p99"], nopool["latency_ms"]["p99"]
    text = (
        f"{pooled['label']} with {pooled['pool_size']} connection"
        f"{'s' if pooled['pool_size'] != 1 else ''}: {ratio:,.1f}x the throughput of a new "
        "connection per request"
    )
    if p99 is not None and p99_nopool is not None:
        text += f", p99 {fmt_ms(p99)} ms instead of {fmt_ms(p99_nopool)} ms"
    return {
        "mode": pooled["mode"],
        "pool_size": pooled["pool_size"],
        "throughput_ratio": round(ratio, 2),
        "text": text + ".",
    }


# -- the table -----------------------------------------------------------------------------------

# short enough for an 80-column terminal
COLUMNS = ("mode", "size", "req/s", "p50", "p95", "p99", "wait p50", "wait p99", "errors", "conns")


def fmt_ms(value: float | None) -> str:
    """Three significant digits: 0.0271 -> 0.027, 1.034 -> 1.03, 123.4 -> 123."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table_rows(report: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(mode, cells) per run; the label only on a mode's first row, so sizes read as a group."""
    rows: list[tuple[str, list[str]]] = []
    previous = None
    for r in report["runs"]:
        lat, wait = r["latency_ms"], r["wait_ms"]
        label = r["label"] if r["mode"] != previous else ""
        previous = r["mode"]
        rows.append(
            (
                r["mode"],
                [
                    label,
                    "-" if r["pool_size"] is None else str(r["pool_size"]),
                    f"{r['throughput_rps']:,.0f}" + ("*" if r["interrupted"] else ""),
                    fmt_ms(lat["p50"]),
                    fmt_ms(lat["p95"]),
                    fmt_ms(lat["p99"]),
                    fmt_ms(wait["p50"]),
                    fmt_ms(wait["p99"]),
                    f"{r['errors']:,}",
                    f"{r['connections_opened']:,}",
                ],
            )
        )
    return rows


def headline(report: dict[str, Any]) -> str:
    if report["duration_s"] is not None:
        amount = f"{report['duration_s']:g} s per run"
    else:
        amount = f"{report['requests_per_run']:,} requests per run"
    what = f"--sql {report['sql']!r}" if report["custom_sql"] else report["workload"]
    workers = "asyncio tasks" if report["asyncio"] else "threads"
    parts = [f"{report['target']} ({report['driver']})", what, f"{report['concurrency']} {workers}"]
    if report["think_time_s"]:
        parts.append(f"think {report['think_time_s'] * 1000:g} ms")
    parts.append(amount)
    return "millpond bench: " + ", ".join(parts)


def notes(report: dict[str, Any], modes_notes: Sequence[tuple[str, str]]) -> list[str]:
    lines = [
        "latency and wait (for a connection; no pool: to open one) in ms; conns: connections opened"
    ]
    for label, note in modes_notes:
        lines.append(f"{label} {note}")
    seen: set[str] = set()
    for r in report["runs"]:
        if r["first_error"] and r["mode"] not in seen:
            seen.add(r["mode"])
            size = "" if r["pool_size"] is None else f" (size {r['pool_size']})"
            lines.append(f"{r['label']}{size}: first error: {r['first_error']}")
    for s in report["skipped"]:
        lines.append(f"skipped {s['label']}: {s['reason']}")
    if report["interrupted"]:
        lines.append("* interrupted: partial results")
    return lines


def closing(report: dict[str, Any]) -> list[str]:
    lines = []
    if report.get("speedup"):
        lines.append(report["speedup"]["text"])
    if report.get("advice"):
        lines.append(report["advice"]["text"])
    if report.get("plot"):
        lines.append(f"plot: {report['plot']}")
    return lines


def render(report: dict[str, Any], out: TextIO, modes_notes: Sequence[tuple[str, str]]) -> None:
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        render_plain(report, out, modes_notes)
        return
    # piped output has no terminal width to go by; rich would assume 80 and squeeze columns
    console = Console(file=out, width=None if _isatty(out) else 120, highlight=False)
    console.print(Text(headline(report)))
    # one space between columns and the "wait" headings on two lines: the table fits 80
    # columns; on a narrower terminal the mode labels wrap, never the numbers
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column(COLUMNS[0], justify="left", overflow="fold", max_width=20)
    for h in COLUMNS[1:]:
        table.add_column(h.replace("wait ", "wait\n"), justify="right", no_wrap=True)
    advice = report.get("advice") or {}
    rows = table_rows(report)
    for i, ((mode, cells), run) in enumerate(zip(rows, report["runs"], strict=True)):
        advised = (
            mode == advice.get("mode")
            and run["pool_size"] == advice.get("pool_size")
            and advice.get("sizes_measured", 0) > 1
        )
        last_of_mode = i + 1 == len(rows) or rows[i + 1][0] != mode
        table.add_row(*cells, style="bold green" if advised else None, end_section=last_of_mode)
    console.print(table)
    for line in notes(report, modes_notes):
        console.print(Text(line, style="dim"))
    for line in closing(report):
        console.print(Text(line, style="bold" if line.startswith("Advice") else ""))


def render_plain(
    report: dict[str, Any], out: TextIO, modes_notes: Sequence[tuple[str, str]]
) -> None:
    rows = [cells for _mode, cells in table_rows(report)]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out.write(headline(report) + "\n\n")
    out.write(line(COLUMNS) + "\n")
    for r in rows:
        out.write(line(r) + "\n")
    out.write("\n" + "\n".join([*notes(report, modes_notes), *closing(report)]) + "\n")
