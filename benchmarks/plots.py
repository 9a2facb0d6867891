"""Pictures for ``docs/benchmarks.md``: PNGs drawn with matplotlib (Agg backend, no display).

Called by ``run_all.py`` with the results of ``overhead.py``, ``scale.py`` and
``connect_vs_pool.py``; each function writes one PNG and returns its path, or None when
matplotlib is missing or the section was skipped.
"""

from __future__ import annotations

import os
from typing import Any

COLORS = {"floor": "#7f7f7f", "info": "#c7c7c7", "millpond": "#1f77b4", "peer": "#ff7f0e"}


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def overhead(ov: dict[str, Any], path: str) -> str | None:
    plt = _plt()
    if plt is None or "rows" not in ov:
        return None
    rows = ov["rows"]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4), dpi=110)
    names = [r["name"].replace("`", "") for r in rows]
    ys = list(range(len(rows)))[::-1]
    us = [r["us"] for r in rows]
    bars = ax.barh(ys, us, color=[COLORS.get(r["group"], "#999999") for r in rows],
                   xerr=[[r["us"] - r["min_us"] for r in rows],
                         [r["max_us"] - r["us"] for r in rows]],
                   error_kw={"ecolor": "#444444", "capsize": 2, "lw": 0.8})
    for b, r in zip(bars, rows, strict=True):
        ax.text(r["max_us"] + max(us) * 0.01, b.get_y() + b.get_height() / 2,
                f"{r['us']:.2f} us ({r['ratio']:.1f}x)", va="center", fontsize=8)
    floor = next((r["us"] for r in rows if r["group"] == "floor"), None)
    if floor is not None:
        ax.axvline(floor * 1.5, color="#2ca02c", ls="--", lw=1)
        ax.text(floor * 1.5, len(rows) - 0.4, " goal: 1.5x floor", color="#2ca02c",
                fontsize=8, va="bottom")
    ax.set_yticks(ys, names, fontsize=8)
    ax.set_xlabel("microseconds per checkout + return (median; whiskers: fastest/slowest round)")
    ax.set_xlim(0, max(r["max_us"] for r in rows) * 1.3)
    ax.set_ylim(-0.6, len(rows) - 0.1)
    ax.set_title(f"Overhead, no query: pool of {ov.get('pool_size', '?')} PostgreSQL "
                 "connections, 1 thread (lower is better)", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[g]) for g in
               ("millpond", "peer", "floor", "info")]
    ax.legend(handles, ["millpond", "peer pool", "floor", "floor, info"], fontsize=8,
              loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, path)


def scale(sc: dict[str, Any], path: str) -> str | None:
    plt = _plt()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for ax, key, xlabel, ylabel, title in (
        (axes[0], "sizes", "idle connections in the pool (log scale)", "us per checkout + return",
         "Pool (sync), FakeDriver: pool size"),
        (axes[1], "waiters", "waiters queued in getconn (log scale)",
         "us per return + hand-off", "AsyncPool, AsyncFakeDriver: queue length"),
    ):
        rows = sc[key]
        xs = [r["n"] for r in rows]
        ys = [r["us"] for r in rows]
        lo = min(ys)
        ax.axhspan(0, lo * 1.5, color="#2ca02c", alpha=0.08)
        ax.axhline(lo * 1.5, color="#2ca02c", ls="--", lw=1)
        ax.text(xs[0], lo * 1.5, " flat goal: 1.5x the fastest", color="#2ca02c", fontsize=8,
                va="bottom")
        ax.errorbar(xs, ys, yerr=[[r["us"] - r["min_us"] for r in rows],
                                  [r["max_us"] - r["us"] for r in rows]],
                    marker="o", color="#1f77b4", capsize=3)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, -14),
                        ha="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:,}" for x in xs])
        ax.minorticks_off()
        ax.set_ylim(0, lo * 1.5 * 1.25)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        flat = sc[f"{key}_flat"]["ratio"]
        ax.set_title(f"{title}\nlargest/smallest {flat:.2f}x", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle("Scale: cost per operation must stay flat (lower is better)", fontsize=11)
    fig.tight_layout()
    return _save(fig, plt, path)


def connect_vs_pool(cv: dict[str, Any], path: str) -> str | None:
    plt = _plt()
    if plt is None or not cv.get("rows"):
        return None
    rows = cv["rows"]
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=110)
    xs = range(len(rows))
    w = 0.38
    new = ax.bar([x - w / 2 for x in xs], [r["new_rps"] for r in rows], w, color="#7f7f7f",
                 label="new connection per request")
    pooled = ax.bar([x + w / 2 for x in xs], [r["pool_rps"] for r in rows], w, color="#1f77b4",
                    label="millpond Pool")
    ax.set_yscale("log")
    for b, r in zip(new, rows, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() * 1.1, f"{r['new_rps']:,.0f}",
                ha="center", fontsize=8)
    for b, r in zip(pooled, rows, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() * 1.1,
                f"{r['pool_rps']:,.0f}\n({r['speedup']:.0f}x)", ha="center", fontsize=8)
    ax.set_xticks(list(xs), [r["db"] for r in rows])
    ax.set_ylabel("SELECT 1 requests per second (log scale)")
    ax.set_ylim(top=max(r["pool_rps"] for r in rows) * 8)
    ax.set_title("Connect per request vs a pool: 1 thread, SELECT 1 (higher is better)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
