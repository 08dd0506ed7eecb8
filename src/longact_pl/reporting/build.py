"""Build ``report.md`` and its PNGs for a multirun directory (the body of ``scripts/report.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from longact_pl.reporting.collect import MissingJob, RunRecord, collect
from longact_pl.reporting.groups import GroupKey, group_runs
from longact_pl.reporting.plots import plot_accuracy_vs_length, plot_rewards
from longact_pl.reporting.summary import RunSummary, summarize
from longact_pl.reporting.tables import report_markdown


@dataclass
class Report:
    """What :func:`build_report` found and wrote.

    Attributes:
        markdown: Path of ``report.md``.
        plots: Paths of the PNGs.
        groups: Complete runs per ablation cell.
        summaries: The summary of every run, by run folder.
        incomplete: Run folders with problems (not in the table).
        never_started: Sweep jobs without a folder.
    """

    markdown: Path
    plots: list[Path]
    groups: dict[GroupKey, list[RunRecord]]
    summaries: dict[Path, RunSummary]
    incomplete: list[RunRecord]
    never_started: list[MissingJob]


def build_report(root: Path, out: Path | None = None, last_k: int = 5) -> Report:
    """Collect every run under ``root``; write ``report.md``, ``reward_curves.png``, ``acc_vs_length.png``.

    Args:
        root: The multirun directory (``hydra.sweep.dir``) or any folder of run folders.
        out: Output folder (default ``root/report``).
        last_k: Training steps averaged for the final reward.

    Raises:
        FileNotFoundError: If ``root`` holds no run folder at all.
    """
    out = out or root / "report"
    runs, never_started = collect(root, exclude=out)
    if not runs and not never_started:
        raise FileNotFoundError(f"{root}: no run folders (config.yaml / metrics.csv) found")
    summaries = {r.path: summarize(r, last_k) for r in runs}
    groups = group_runs(r for r in runs if r.complete)
    incomplete = [r for r in runs if not r.complete]
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    if groups:
        plots = [
            plot_rewards(groups, summaries, out / "reward_curves.png"),
            plot_accuracy_vs_length(groups, summaries, out / "acc_vs_length.png"),
        ]
    text = report_markdown(
        root, groups, summaries, incomplete, never_started, [p.relative_to(out) for p in plots], last_k
    )
    markdown = out / "report.md"
    markdown.write_text(text)
    return Report(markdown, plots, groups, summaries, incomplete, never_started)
