"""Build ``report.md`` and its PNGs for a multirun directory (the body of ``scripts/report.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from longact_pl.reporting.ablation_plots import (
    plot_accuracy_by_step,
    plot_accuracy_vs_length,
    plot_paired,
    plot_rewards,
)
from longact_pl.reporting.collect import MissingJob, RunRecord, collect
from longact_pl.reporting.groups import GroupKey, group_runs
from longact_pl.reporting.paired_section import PairedSection, paired_section
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
        paired: The ``--paired`` section's numbers (``None`` without ``--paired``).
    """

    markdown: Path
    plots: list[Path]
    groups: dict[GroupKey, list[RunRecord]]
    summaries: dict[Path, RunSummary]
    incomplete: list[RunRecord]
    never_started: list[MissingJob]
    paired: PairedSection | None = None


def build_report(
    root: Path,
    out: Path | None = None,
    last_k: int = 5,
    paired: Sequence[tuple[str, str]] | None = None,
    n_boot: int = 10_000,
) -> Report:
    """Collect every run under ``root``; write ``report.md``, ``reward_curves.png``, ``acc_vs_length.png``.

    With ``paired``, also a per-prompt paired section (``paired_diffs.png``, ``acc_by_step.png``) from the
    runs' ``val_predictions/`` (a multirun without them gets a note saying so).

    Args:
        root: The multirun directory (``hydra.sweep.dir``) or any folder of run folders.
        out: Output folder (default ``root/report``).
        last_k: Training steps averaged for the final reward and KL.
        paired: ``(treated, control)`` masking pairs to compare per prompt (``None``: no paired section).
        n_boot: Bootstrap replicates of the paired intervals.

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
    section = paired_section(groups, paired, n_boot) if paired is not None else None
    if section is not None and section.comparisons + section.movement:
        last = max((r.step for r in section.comparisons), default=None)
        shown = [r for r in section.movement if r.scope == "all"]
        shown += [r for r in section.comparisons if r.step == last]  # every scope at the last eval point
        plots.append(plot_paired(shown, out / "paired_diffs.png"))
    if section is not None and section.accuracy:
        plots.append(plot_accuracy_by_step(section.accuracy, out / "acc_by_step.png"))
    text = report_markdown(
        root, groups, summaries, incomplete, never_started, [p.relative_to(out) for p in plots], last_k,
        extra=section.lines if section is not None else (),
    )  # fmt: skip
    markdown = out / "report.md"
    markdown.write_text(text)
    return Report(markdown, plots, groups, summaries, incomplete, never_started, section)
