"""``millpond bench --plot FILE.png``: throughput and p99 latency against pool size, per mode.

matplotlib is optional (the ``plot`` extra). It is driven through its object API (a
``Figure`` on the Agg canvas), so the plot needs no display, selects no backend and leaves no
global state behind in the process.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["DPI", "FIGSIZE", "PlotUnavailable", "check_available", "write_plot"]

FIGSIZE = (13.0, 5.6)  # inches
DPI = 100  # so the PNG is 1300 x 560 pixels

# one fixed colour and marker per mode, so a mode looks the same in every plot
_STYLE: dict[str, tuple[str, str]] = {
    "millpond": ("#1f77b4", "o"),
    "sqlalchemy": ("#ff7f0e", "s"),
    "dbutils": ("#2ca02c", "^"),
    "psycopg_pool": ("#d62728", "D"),
    "psycopg2": ("#9467bd", "v"),
    "mysqlconnector": ("#8c564b", "P"),
    "asyncpg": ("#e377c2", "X"),
    "aiomysql": ("#17becf", "*"),
}
_NOPOOL_COLOUR = "#555555"
_ADVICE_COLOUR = "#2a9d48"


class PlotUnavailable(Exception):
    """matplotlib is not installed."""


def check_available() -> None:
    """Fail before any run, not after: the user should not wait to learn that."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib, which is not installed: pip install 'millpond[plot]'"
        ) from None


def write_plot(report: dict[str, Any], path: str) -> None:
    """Draw the report's runs into ``path`` (the format follows its suffix: png, svg, pdf)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullLocator

    runs: Sequence[dict[str, Any]] = report["runs"]
    pooled = [r for r in runs if r["pool_size"] is not None and r["ok"] > 0]
    nopool = [r for r in runs if r["pool_size"] is None and r["ok"] > 0]
    sizes = sorted({r["pool_size"] for r in pooled})
    advice = report.get("advice") or {}

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax_tp, ax_lat = fig.subplots(1, 2)
    workers = "tasks" if report["asyncio"] else "threads"
    title = (
        f"millpond bench — {report['target']} ({report['driver']}) · "
        f"{report['workload']} · {report['concurrency']} {workers}"
    )
    if report.get("think_time_s"):
        title += f" · think {report['think_time_s'] * 1000:g} ms"
    fig.suptitle(title, fontsize=12)

    any_failed = False
    ordered: dict[str, list[dict[str, Any]]] = {}
    for r in pooled:
        ordered.setdefault(r["mode"], []).append(r)
    for mode, mode_runs in ordered.items():
        mode_runs.sort(key=lambda r: r["pool_size"])
        colour, marker = _STYLE.get(mode, ("#7f7f7f", "o"))
        main = mode == "millpond"
        style: dict[str, Any] = {
            "color": colour,
            "marker": marker,
            "linewidth": 2.6 if main else 1.6,
            "markersize": 7 if main else 5.5,
            "zorder": 3 if main else 2,
            "label": mode_runs[0]["label"],
        }
        xs = [r["pool_size"] for r in mode_runs]
        ax_tp.plot(xs, [r["throughput_rps"] for r in mode_runs], **style)
        lat = [
            (r["pool_size"], r["latency_ms"]["p99"])
            for r in mode_runs
            if r["latency_ms"]["p99"] is not None
        ]
        ax_lat.plot([x for x, _ in lat], [y for _, y in lat], **style)
        # a run where some requests failed (a pool that does not wait, say) is not comparable
        # at a glance: hollow markers on both panels say so
        failed = [r for r in mode_runs if r["errors"]]
        if failed:
            any_failed = True
            hollow: dict[str, Any] = {
                "linestyle": "none",
                "marker": marker,
                "markersize": style["markersize"] + 2,
                "markerfacecolor": "white",
                "markeredgecolor": colour,
                "markeredgewidth": 1.8,
                "zorder": 5,
            }
            ax_tp.plot(
                [r["pool_size"] for r in failed], [r["throughput_rps"] for r in failed], **hollow
            )
            failed_lat = [r for r in failed if r["latency_ms"]["p99"] is not None]
            ax_lat.plot(
                [r["pool_size"] for r in failed_lat],
                [r["latency_ms"]["p99"] for r in failed_lat],
                **hollow,
            )

    for r in nopool:
        # a connection per request has no pool size: a level line across the sweep
        line: dict[str, Any] = {
            "color": _NOPOOL_COLOUR,
            "linestyle": "--",
            "linewidth": 1.6,
            "label": f"{r['label']} (new connection per request)",
        }
        ax_tp.axhline(r["throughput_rps"], **line)
        if r["latency_ms"]["p99"] is not None:
            ax_lat.axhline(r["latency_ms"]["p99"], **line)

    if advice.get("pool_size") is not None and len(sizes) > 1:
        for ax in (ax_tp, ax_lat):
            ax.axvline(
                advice["pool_size"], color=_ADVICE_COLOUR, linestyle=":", linewidth=2, zorder=1
            )
        # at the foot of the line, on a white ground: the curves are mostly higher up
        ax_tp.annotate(
            f"advice: {advice['pool_size']}",
            xy=(advice["pool_size"], 0.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 6),
            textcoords="offset points",
            va="bottom",
            ha="center",
            color=_ADVICE_COLOUR,
            fontsize=10,
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.25", "facecolor": "white", "edgecolor": "none"},
            zorder=4,
        )

    thousands = FuncFormatter(lambda v, _pos: f"{v:,.0f}")
    for ax, ylabel, heading in (
        (ax_tp, "requests per second", "Throughput (higher is better)"),
        (ax_lat, "p99 latency, ms", "p99 latency (lower is better)"),
    ):
        ax.set_title(heading, fontsize=11, loc="left")
        ax.set_xlabel("pool size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        if sizes:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes)
            ax.set_xticklabels([str(s) for s in sizes])
            ax.xaxis.set_minor_locator(NullLocator())
            pad = 1.25 if len(sizes) > 1 else 2.0
            ax.set_xlim(sizes[0] / pad, sizes[-1] * pad)
    ax_tp.set_ylim(bottom=0)
    ax_tp.yaxis.set_major_formatter(thousands)
    _latency_scale(ax_lat, [r["latency_ms"]["p99"] for r in (*pooled, *nopool)])

    handles, labels = ax_tp.get_legend_handles_labels()
    if any_failed:
        from matplotlib.lines import Line2D

        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markersize=8,
                markerfacecolor="white",
                markeredgecolor="#333333",
                markeredgewidth=1.8,
            )
        )
        labels.append("hollow: some requests failed")
    if handles:
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=len(handles) if len(handles) <= 5 else math.ceil(len(handles) / 2),
            frameon=False,
            fontsize=10,
        )
    fig.savefig(path)


def _latency_scale(ax: Any, values: Sequence[float | None]) -> None:
    """Linear from zero, unless the latencies span more than 20x (a connection per request
    against a warm pool, say): then logarithmic, so the small ones stay readable, with ticks
    at 1-2-5 steps labelled as plain numbers (0.2, 0.5, 1, 2...) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    known = [v for v in values if v is not None and v > 0]
    if known and max(known) / min(known) > 20:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(bottom=0)
