"""The "Paired comparisons" section of ``report.md`` (``scripts/report.py --paired``) and its numbers."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from longact_pl.reporting.collect import RunRecord, train_rows
from longact_pl.reporting.groups import GroupKey
from longact_pl.reporting.paired_arms import (
    ALL,
    ArmRuns,
    PairedRow,
    accuracy_by_step,
    compare_arms,
    load_arms,
)
from longact_pl.reporting.paired_arms import movement as arm_movement

# How the section's numbers are made (its first paragraph).
METHOD = " ".join([
    "Every run scores the same held-out prompts (checked by id and token digest); the runs of a seed share",
    "the data order and the initial weights. Δ is the mean over prompts and seeds of the per-prompt",
    "difference (score in [0, 1]); the 95% CI is a percentile bootstrap that resamples seeds and prompts",
    "(crossed, {n_boot} replicates, prompts within their task@length); MDE is the smallest true difference",
    "a two-sided 5% test would find with 80% power (2.80 x bootstrap s.e.). ✱: the CI excludes 0.",
])  # fmt: skip


@dataclass
class PairedSection:
    """What ``--paired`` found.

    Attributes:
        lines: The markdown section.
        comparisons: Treated minus control, every scope and common step.
        movement: Each arm's last step minus step 0.
        accuracy: ``{cell: {step: {scope: mean}}}``.
        kl: ``{cell: {step: mean train/kl since the previous eval point}}``.
        problems: Comparisons that could not be made, and why.
    """

    lines: list[str]
    comparisons: list[PairedRow] = field(default_factory=list)
    movement: list[PairedRow] = field(default_factory=list)
    accuracy: dict[GroupKey, dict[int, dict[str, float]]] = field(default_factory=dict)
    kl: dict[GroupKey, dict[int, float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def kl_by_eval_step(runs: Sequence[RunRecord], steps: Sequence[int]) -> dict[int, float]:
    """Mean ``train/kl`` over the training steps since the previous eval point, averaged over runs.

    Training rows are logged at ``step`` 0 .. n-1 and the eval point ``k`` follows ``k`` optimizer steps, so
    point ``k`` covers the rows with ``previous <= step < k`` (step 0 covers none: KL 0 by definition).
    """
    out: dict[int, float] = {}
    previous = 0
    for k in sorted(steps):
        means = []
        for run in runs:
            kls = [
                r["train/kl"] for r in train_rows(run.rows) if "train/kl" in r and previous <= r["step"] < k
            ]
            if kls:
                means.append(statistics.fmean(kls))
        if k == 0:
            out[k] = 0.0
        elif means:
            out[k] = statistics.fmean(means)
        previous = k
    return out


def _pairs_of(
    arms: Mapping[GroupKey, ArmRuns], pairs: Sequence[tuple[str, str]]
) -> list[tuple[ArmRuns, ArmRuns]]:
    """(treated, control) arms with the same algorithm and other settings, for each requested pair."""
    found = []
    for treated, control in pairs:
        for key, arm in arms.items():
            if key.masking != treated:
                continue
            for other_key, other in arms.items():
                if other_key.masking == control and (other_key.algo, other_key.extra) == (
                    key.algo,
                    key.extra,
                ):
                    found.append((arm, other))
    return found


def _sign(x: float) -> str:
    return f"{x:+.3f}"


def interval_cells(row: PairedRow) -> list[str]:
    """``Δ | 95% CI | ± | MDE | seeds x prompts | mark`` cells of one paired row."""
    ci = row.interval
    mark = "✱" if ci.excludes_zero else ""
    return [
        _sign(ci.mean), f"[{_sign(ci.lo)}, {_sign(ci.hi)}]", f"{ci.half_width:.3f}", f"{ci.mde:.3f}",
        f"{ci.n_seeds} x {ci.n_prompts}", mark,
    ]  # fmt: skip


def _ci_table(rows: Sequence[PairedRow], first: str) -> list[str]:
    head = [first, "scope", "Δ", "95% CI", "half-width", "MDE (80%)", "seeds x prompts", "CI excludes 0"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * 5 + ":---:|"]
    lines += [f"| {r.label} | {r.scope} | " + " | ".join(interval_cells(r)) + " |" for r in rows]
    return lines


def _accuracy_table(section: PairedSection) -> list[str]:
    steps = sorted({k for acc in section.accuracy.values() for k in acc})
    lines = ["| masking | scope | " + " | ".join(f"step {k}" for k in steps) + " |"]
    lines.append("|---|---|" + "---:|" * len(steps))
    for key, acc in section.accuracy.items():
        scopes = [ALL] + sorted({s for per in acc.values() for s in per if s != ALL})
        for scope in scopes:
            cells = [f"{acc[k][scope]:.3f}" if k in acc and scope in acc[k] else "-" for k in steps]
            lines.append(f"| {key.masking} | {scope} | " + " | ".join(cells) + " |")
        kl = section.kl.get(key, {})
        cells = [f"{kl[k]:.2e}" if k in kl else "-" for k in steps]
        lines.append(f"| {key.masking} | KL to reference | " + " | ".join(cells) + " |")
    return lines


def paired_section(
    groups: Mapping[GroupKey, Sequence[RunRecord]], pairs: Sequence[tuple[str, str]], n_boot: int = 10_000
) -> PairedSection:
    """Per-prompt paired comparisons of ``pairs`` of maskings, each arm's movement, accuracy and KL by step.

    Args:
        groups: Complete runs per ablation cell.
        pairs: ``(treated, control)`` masking names, e.g. ``("saliency", "none")``.
        n_boot: Bootstrap replicates.
    """
    lines = ["## Paired comparisons (per held-out prompt)", ""]
    try:
        arms = load_arms(groups)
    except ValueError as err:
        return PairedSection([*lines, f"Not possible: {err}.", ""], problems=[str(err)])
    if not arms:
        text = "No run wrote per-prompt records (`val_predictions/`); this multirun predates them."
        return PairedSection([*lines, text, ""])
    section = PairedSection(lines)
    for arm in arms.values():
        section.accuracy[arm.key] = accuracy_by_step(arm)
        section.kl[arm.key] = kl_by_eval_step(groups[arm.key], list(section.accuracy[arm.key]))
        try:
            section.movement += arm_movement(arm, n_boot)
        except ValueError as err:
            section.problems.append(f"{arm.key.masking}, change from step 0: {err}")
    for treated, control in _pairs_of(arms, pairs):
        try:
            section.comparisons += compare_arms(treated, control, n_boot)
        except ValueError as err:
            section.problems.append(f"{treated.key.masking} - {control.key.masking}: {err}")
    n_seeds = max(len(a.steps) for a in arms.values())
    lines += [
        METHOD.format(n_boot=n_boot) + f" Up to {n_seeds} seeds per arm.",
        "",
        "### Held-out accuracy and KL to the reference per eval point",
        "",
        "Accuracy: mean score over seeds and prompts. KL: mean `train/kl` of the training steps since the "
        "previous eval point, averaged over seeds.",
        "",
        *_accuracy_table(section),
        "",
    ]
    if section.movement:
        lines += ["### Change from step 0 (each arm against its own start)", ""]
        lines += [*_ci_table(section.movement, "arm"), ""]
    if section.comparisons:
        last = max(r.step for r in section.comparisons)
        lines += [f"### Between arms at step {last} (the last common eval point)", ""]
        lines += [*_ci_table([r for r in section.comparisons if r.step == last], "comparison"), ""]
        earlier = [
            replace(r, label=f"{r.label}, step {r.step}")
            for r in section.comparisons
            if r.step != last and r.scope == ALL
        ]
        if earlier:
            lines += ["### Between arms at earlier eval points (all prompts)", ""]
            lines += [*_ci_table(earlier, "comparison"), ""]
    if section.problems:
        lines += ["### Not compared", "", *(f"- {p}" for p in section.problems), ""]
    return section
