"""PNG charts of an ablation: reward curves, accuracy vs prompt length, paired differences, accuracy by step.

Reward curves show mean +- std over seeds; the last two (``--paired``) show paired differences with their
CIs and held-out accuracy per eval point.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from longact_pl.reporting.collect import RunRecord  # noqa: E402
from longact_pl.reporting.groups import GroupKey, stat  # noqa: E402
from longact_pl.reporting.paired_arms import PairedRow  # noqa: E402
from longact_pl.reporting.summary import RunSummary  # noqa: E402


def _label(key: GroupKey, with_algo: bool = True) -> str:
    text = f"{key.algo} / {key.masking}" if with_algo else key.masking
    return f"{text} ({key.variant})" if key.variant else text


def _save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 120 dpi), close it, return ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def band(curves: Sequence[Mapping[int, float]]) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and sample std over the curves that reach each step (std 0 where only one does)."""
    steps = sorted(set().union(*curves)) if curves else []
    means, stds = [], []
    for step in steps:
        values = [c[step] for c in curves if step in c]
        means.append(statistics.fmean(values))
        stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return steps, means, stds


def plot_rewards(
    groups: Mapping[GroupKey, Sequence[RunRecord]], summaries: Mapping[Path, RunSummary], path: Path
) -> Path:
    """``train/reward_mean`` vs step, one line per cell with a mean +- std band over its seeds.

    Args:
        groups: Runs per ablation cell.
        summaries: The summary of every run, by run folder.
        path: Output PNG.
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, runs in groups.items():
        steps, mean, std = band([summaries[r.path].reward_curve for r in runs])
        if not steps:
            continue
        (line,) = ax.plot(steps, mean, lw=1.5, label=f"{_label(key)} (n={len(runs)})")
        lo, hi = [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("step")
    ax.set_ylabel("train/reward_mean")
    ax.set_title("Training reward (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy_vs_length(
    groups: Mapping[GroupKey, Sequence[RunRecord]], summaries: Mapping[Path, RunSummary], path: Path
) -> Path:
    """Final validation accuracy vs prompt length: one panel per algorithm, one line per masking.

    Error bars are the sample std over seeds; the dashed grey line is the step-0 accuracy (before training)
    averaged over every run of the panel.

    Args:
        groups: Runs per ablation cell.
        summaries: The summary of every run, by run folder.
        path: Output PNG.
    """
    algos = sorted({key.algo for key in groups})
    fig, axes = plt.subplots(1, max(1, len(algos)), figsize=(6 * max(1, len(algos)), 4.5), squeeze=False)
    for ax, algo in zip(axes[0], algos):
        cells = {k: v for k, v in groups.items() if k.algo == algo}
        lengths = sorted(
            {n for runs in cells.values() for r in runs for n in summaries[r.path].acc_by_length}
        )
        for key, runs in cells.items():
            stats = [stat(summaries[r.path].acc_by_length.get(n) for r in runs) for n in lengths]
            xs = [n for n, s in zip(lengths, stats) if s is not None]
            ys = [s.mean for s in stats if s is not None]
            errs = [s.std or 0.0 for s in stats if s is not None]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=_label(key, with_algo=False))
        start = [
            stat(summaries[r.path].start_by_length.get(n) for rs in cells.values() for r in rs)
            for n in lengths
        ]
        xs = [n for n, s in zip(lengths, start) if s is not None]
        if xs:
            ys = [s.mean for s in start if s is not None]
            ax.plot(xs, ys, ls="--", color="grey", marker=".", label="step 0 (all runs)")
        if len(lengths) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("validation accuracy")
        ax.set_title(algo)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_paired(rows: Sequence[PairedRow], path: Path) -> Path:
    """Forest plot: one horizontal 95% CI per paired row (comparison x scope), a line at 0.

    Args:
        rows: Paired rows (their ``label``, ``scope`` and ``interval``).
        path: Output PNG.
    """
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(rows)))
    ys = list(range(len(rows)))[::-1]
    for y, row in zip(ys, rows):
        ci = row.interval
        color = "tab:red" if ci.excludes_zero else "tab:blue"
        ax.errorbar(
            [ci.mean], [y], xerr=[[ci.mean - ci.lo], [ci.hi - ci.mean]], fmt="o", color=color, capsize=3
        )
    ax.axvline(0.0, color="grey", ls="--", lw=1)
    ax.set_yticks(ys, [f"{r.label} [{r.scope}]" for r in rows], fontsize=8)
    ax.set_xlabel("paired difference in held-out score (95% bootstrap CI, prompts x seeds)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_accuracy_by_step(accuracy: Mapping[GroupKey, Mapping[int, Mapping[str, float]]], path: Path) -> Path:
    """Held-out accuracy per eval point: one panel per scope (``all``, each task@length), a line per cell.

    Args:
        accuracy: ``{cell: {step: {scope: mean score}}}`` (see ``reporting.paired_arms.accuracy_by_step``).
        path: Output PNG.
    """
    scopes = sorted(
        {s for acc in accuracy.values() for per in acc.values() for s in per}, key=lambda s: s != "all"
    )
    fig, axes = plt.subplots(1, len(scopes), figsize=(5 * len(scopes), 4), squeeze=False)
    for ax, scope in zip(axes[0], scopes):
        for key, acc in accuracy.items():
            steps = [k for k in sorted(acc) if scope in acc[k]]
            ax.plot(steps, [acc[k][scope] for k in steps], marker="o", label=_label(key))
        ax.set_title(scope)
        ax.set_xlabel("step")
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)
