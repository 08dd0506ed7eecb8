"""The numbers a report needs from one run: final reward, validation accuracy before / after, RULER."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from longact_pl.reporting.collect import RunRecord, train_rows

_LENGTH_KEY = re.compile(r"^val/acc[/_](\d+)$")


@dataclass
class RunSummary:
    """Headline numbers of one run (``None`` where the run did not log them).

    Attributes:
        final_reward: Mean ``train/reward_mean`` over the last ``k`` training steps.
        final_kl: Mean ``train/kl`` (to the reference) over the last ``k`` training steps that logged it.
        val_start: ``val/acc`` of the validation before training (step 0).
        val_final: ``val/acc`` of the last validation.
        acc_by_length: Last validation's accuracy per prompt length (``val/acc/<len>`` or ``val/acc_<len>``).
        start_by_length: The step-0 validation's accuracy per prompt length.
        ruler: RULER overall average (percent) from an evaluation ``summary.json`` in the run folder.
        reward_curve: ``train/reward_mean`` per step (the last row of a step when a step logged several).
    """

    final_reward: float | None
    final_kl: float | None
    val_start: float | None
    val_final: float | None
    acc_by_length: dict[int, float]
    start_by_length: dict[int, float]
    ruler: float | None
    reward_curve: dict[int, float]


def by_length(row: dict[str, float]) -> dict[int, float]:
    """Per-length accuracies of a validation row."""
    return {int(m.group(1)): v for k, v in row.items() if (m := _LENGTH_KEY.match(k))}


def validation_before_training(rows: list[dict[str, float]]) -> dict[str, float] | None:
    """The validation row logged before any training row (``validate_before_training=true``), if any."""
    for row in rows:
        if "train/reward_mean" in row:
            return None
        if "val/acc" in row:
            return row
    return None


def last_validation(rows: list[dict[str, float]]) -> dict[str, float] | None:
    """The last validation row that follows a training row (None when training never validated)."""
    seen_train, last = False, None
    for row in rows:
        seen_train = seen_train or "train/reward_mean" in row
        if seen_train and "val/acc" in row:
            last = row
    return last


def ruler_overall(run_dir: Path) -> float | None:
    """RULER overall score from ``ruler/summary.json`` or any ``summary.json`` of a RULER evaluation."""
    candidates = [run_dir / "ruler" / "summary.json", *sorted(run_dir.rglob("summary.json"))]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (
            isinstance(summary, dict)
            and summary.get("benchmark") == "ruler"
            and summary.get("overall") is not None
        ):
            return float(summary["overall"])
    return None


def summarize(run: RunRecord, last_k: int = 5) -> RunSummary:
    """Reduce a run's metrics to its headline numbers.

    Args:
        run: The run.
        last_k: Training steps averaged for the final reward.
    """
    curve: dict[int, float] = {}
    for row in train_rows(run.rows):
        curve[int(row.get("step", len(curve)))] = row["train/reward_mean"]
    tail = [curve[s] for s in sorted(curve)[-last_k:]] if last_k > 0 else []
    kls = (
        [row["train/kl"] for row in train_rows(run.rows) if "train/kl" in row][-last_k:] if last_k > 0 else []
    )
    start, end = validation_before_training(run.rows), last_validation(run.rows)
    return RunSummary(
        final_reward=sum(tail) / len(tail) if tail else None,
        final_kl=sum(kls) / len(kls) if kls else None,
        val_start=start["val/acc"] if start else None,
        val_final=end["val/acc"] if end else None,
        acc_by_length=by_length(end) if end else {},
        start_by_length=by_length(start) if start else {},
        ruler=ruler_overall(run.path),
        reward_curve=curve,
    )
