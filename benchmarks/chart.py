"""The scaling chart of benchmarks/run.py: µs/node against nodes, fan-out and chain.

Needs matplotlib (``pip install -e '.[bench]'``); importing this module without it
raises ImportError, which run.py turns into a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

Points = dict[tuple[str, str, str], list[tuple[int, float]]]  # (workload, impl, loop) -> xy

COLORS = {"asyncio": "tab:blue", "anyio": "tab:green", "aflow": "tab:red"}
STYLES = {"asyncio": "-", "uvloop": "--"}
TITLES = {"fanout": "fan-out + sum", "chain": "chain"}


def size(value: float, _pos: object = None) -> str:
    """1000 -> 1k, 1000000 -> 1M."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


def plain(value: float, _pos: object = None) -> str:
    return f"{value:g}"


def line_order(key: tuple[str, str, str]) -> tuple[int, str, str]:
    workload, impl, loop = key
    return (list(COLORS).index(impl) if impl in COLORS else len(COLORS), loop, workload)


def plot_scaling(points: Points, path: Path, title: str) -> None:
    """Two log-log subplots (fan-out, chain); a line per impl and loop."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharey=True)
    for ax, workload in zip(axes, ("fanout", "chain"), strict=True):
        for (w, impl, loop), xy in sorted(points.items(), key=lambda kv: line_order(kv[0])):
            if w != workload or not xy:
                continue
            xs, ys = zip(*sorted(xy), strict=True)
            ax.plot(
                xs,
                ys,
                marker="o",
                color=COLORS.get(impl, "tab:gray"),
                linestyle=STYLES.get(loop, ":"),
                label=f"{impl} on {loop}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(size))
        ax.yaxis.set_major_formatter(FuncFormatter(plain))
        ax.yaxis.set_minor_formatter(FuncFormatter(plain))
        ax.set_xlabel("nodes")
        ax.set_title(TITLES[workload])
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("µs per node (wall / nodes)")
    handles: dict[str, Any] = {}
    for ax in axes:  # one legend for both subplots, below them
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(text, handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=3, fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
