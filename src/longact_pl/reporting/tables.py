"""The markdown of an ablation report: results per cell (mean +- std over seeds) and what is missing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from longact_pl.reporting.collect import MissingJob, RunRecord
from longact_pl.reporting.groups import GroupKey, Stat, stat
from longact_pl.reporting.summary import RunSummary


def fmt(s: Stat | None, runs: int, digits: int = 3, signed: bool = False) -> str:
    """``mean ± std``; ``(n=k)`` is added when only ``k`` of the cell's ``runs`` runs logged the value."""
    if s is None:
        return "-"
    text = f"{s.mean:{'+' if signed else ''}.{digits}f}" + (
        f" ± {s.std:.{digits}f}" if s.std is not None else ""
    )
    return text + (f" (n={s.n})" if s.n != runs else "")


def fmt_sci(s: Stat | None, runs: int) -> str:
    """``mean ± std`` in scientific notation (KL values span orders of magnitude)."""
    if s is None:
        return "-"
    text = f"{s.mean:.2e}" + (f" ± {s.std:.1e}" if s.std is not None else "")
    return text + (f" (n={s.n})" if s.n != runs else "")


def _delta(s: RunSummary) -> float | None:
    """Final minus step-0 validation accuracy of one run (paired: the seed's own baseline)."""
    return None if s.val_start is None or s.val_final is None else s.val_final - s.val_start


def _seed(run: RunRecord) -> str:
    return str(run.config.get("seed", "?"))


def results_table(
    groups: Mapping[GroupKey, Sequence[RunRecord]], summaries: Mapping[Path, RunSummary], last_k: int
) -> list[str]:
    """One row per ablation cell, over its complete runs.

    Args:
        groups: Complete runs per cell.
        summaries: The summary of every run, by run folder.
        last_k: Steps averaged for the final reward (for the header).
    """
    lengths = sorted({n for runs in groups.values() for r in runs for n in summaries[r.path].acc_by_length})
    with_variant = any(key.extra for key in groups)
    with_ruler = any(summaries[r.path].ruler is not None for runs in groups.values() for r in runs)
    with_kl = any(summaries[r.path].final_kl is not None for runs in groups.values() for r in runs)
    head = ["algo", "masking", *(["variant"] if with_variant else []), "seeds", f"reward (last {last_k})"]
    head += [f"KL (last {last_k})"] if with_kl else []
    head += [
        "val/acc step 0",
        "val/acc final",
        "Δ val/acc",
        *(f"acc@{n}" for n in lengths),
        *(["RULER avg"] if with_ruler else []),
    ]
    text_cols = 3 + with_variant
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * text_cols + "---:|" * (len(head) - text_cols)]
    for key, runs in groups.items():
        ss = [summaries[r.path] for r in runs]
        n = len(runs)
        cells = [key.algo, key.masking, *([key.variant] if with_variant else [])]
        cells.append(f"{n} ({', '.join(sorted((_seed(r) for r in runs), key=_seed_order))})")
        cells.append(fmt(stat(s.final_reward for s in ss), n))
        cells += [fmt_sci(stat(s.final_kl for s in ss), n)] if with_kl else []
        cells.append(fmt(stat(s.val_start for s in ss), n))
        cells.append(fmt(stat(s.val_final for s in ss), n))
        cells.append(fmt(stat(_delta(s) for s in ss), n, signed=True))
        cells += [fmt(stat(s.acc_by_length.get(length) for s in ss), n) for length in lengths]
        if with_ruler:
            cells.append(fmt(stat(s.ruler for s in ss), n, digits=1))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (0, seed)


def missing_section(
    root: Path, incomplete: Sequence[RunRecord], never_started: Sequence[MissingJob]
) -> list[str]:
    """The "Missing / crashed" section: incomplete run folders and jobs without a folder."""
    lines = ["## Missing / crashed", ""]
    if not incomplete and not never_started:
        return [*lines, "None: every run finished its `trainer.max_steps`, wrote `final/` and `metrics.csv`."]
    lines += ["| run | problem |", "|---|---|"]
    lines += [f"| `{r.path.relative_to(root)}` | {'; '.join(r.problems)} |" for r in incomplete]
    lines += [
        f"| job {j.num} (`{' '.join(j.overrides)}`) | no folder: never started |" for j in never_started
    ]
    return lines


def report_markdown(
    root: Path,
    groups: Mapping[GroupKey, Sequence[RunRecord]],
    summaries: Mapping[Path, RunSummary],
    incomplete: Sequence[RunRecord],
    never_started: Sequence[MissingJob],
    plots: Sequence[Path],
    last_k: int,
    extra: Sequence[str] = (),
) -> str:
    """The whole ``report.md``.

    Args:
        root: The multirun directory.
        groups: Complete runs per ablation cell.
        summaries: The summary of every run, by run folder.
        incomplete: Runs with problems (excluded from the table).
        never_started: Sweep jobs without a folder.
        plots: PNGs to link, relative to the report.
        last_k: Steps averaged for the final reward.
        extra: Markdown lines placed after the results table (the ``--paired`` section).
    """
    complete = sum(len(v) for v in groups.values())
    lines = [
        f"# Ablation report: `{root}`",
        "",
        f"{complete} complete runs, {len(incomplete)} incomplete, {len(never_started)} never started. "
        "Cells are mean ± sample std (n - 1) over the complete runs of a cell (seeds); `(n=k)` marks a value "
        f"only k of them logged. Reward: mean `train/reward_mean` of the last {last_k} steps (KL: "
        "`train/kl`, to the reference, likewise). Accuracy: greedy validation, step 0 (before training) "
        "and the last validation, Δ their per-run difference; "
        "`acc@<len>` per prompt length (last validation).",
        "",
        "## Results",
        "",
        *(results_table(groups, summaries, last_k) if groups else ["No complete run."]),
        "",
        *extra,
        *missing_section(root, incomplete, never_started),
        "",
    ]
    if plots:
        lines += ["## Plots", "", *(f"![{p.stem}]({p.as_posix()})" for p in plots), ""]
    return "\n".join(lines) + "\n"
