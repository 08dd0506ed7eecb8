"""PNG charts of an evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_ruler(summary: Mapping, path: Path) -> Path:
    """Score vs length, one thin line per task, the average in bold, the threshold dashed.

    Args:
        summary: A RULER summary (:func:`longact_pl.eval.report.ruler_summary`).
        path: Output PNG.
    """
    lengths = [int(n) for n in summary["lengths"]]
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("tab20")
    for k, (task, row) in enumerate(summary["tasks"].items()):
        xs = [n for n in lengths if str(n) in row]
        ax.plot(xs, [row[str(n)] for n in xs], marker="o", lw=1, alpha=0.8, color=cmap(k % 20), label=task)
    avg = summary["average"]
    xs = [n for n in lengths if str(n) in avg]
    ax.plot(xs, [avg[str(n)] for n in xs], marker="s", lw=3, color="black", label="average")
    ax.axhline(summary["threshold"], ls="--", color="grey", lw=1, label=f"threshold {summary['threshold']}")
    if len(lengths) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_ylim(-2, 102)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("score (x100)")
    ax.set_title(
        f"RULER: {summary.get('model', '')} (effective length: {summary['effective_length'] or 'none'})"
    )
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_longbench(summary: Mapping, path: Path) -> Path:
    """Accuracy per split (overall, easy, hard, short, medium, long) as bars labelled with counts.

    Args:
        summary: A LongBench v2 summary (:func:`longact_pl.eval.report.longbench_summary`).
        path: Output PNG.
    """
    values = {"overall": summary["overall"], **summary["by_difficulty"], **summary["by_length"]}
    names = [k for k, v in values.items() if v is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(names, [values[k] for k in names], color=["black"] + ["tab:blue"] * (len(names) - 1))
    for bar, name in zip(bars, names):
        ax.annotate(
            f"{values[name]:.1f}\n(n={summary['counts'][name]})",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center", va="bottom", fontsize=8,
        )  # fmt: skip
    ax.axhline(25.0, ls="--", color="grey", lw=1, label="chance (25%)")
    ax.set_ylim(0, 110)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"LongBench v2: {summary.get('model', '')}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_comparison(
    names: Sequence[str], keys: Sequence[str], table: Mapping[str, Sequence], path: Path
) -> Path:
    """Grouped bars: one group per score key, one bar per run.

    Args:
        names: Run names (bar labels).
        keys: Score keys (groups).
        table: ``key -> [value per run]`` (``None`` where a run lacks the key).
        path: Output PNG.
    """
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(keys) * max(1, len(names)) / 2), 4.5))
    for r, name in enumerate(names):
        xs = [k + (r - (len(names) - 1) / 2) * width for k in range(len(keys))]
        ys = [table[key][r] if table[key][r] is not None else 0.0 for key in keys]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 105)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
