"""Validation during training: greedy completions of held-out prompts, accuracies and per-prompt rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchmetrics import MeanMetric

from longact_pl.data.dataset import drop_padding
from longact_pl.eval.accuracy import TaskLengthAccuracy, compute_accuracy, update_accuracy
from longact_pl.eval.batch_scoring import evaluate_batch
from longact_pl.eval.val_records import ValRecords
from longact_pl.rewards.scoring import RewardErrors
from longact_pl.rewards.types import RewardFn
from longact_pl.rollout.types import RolloutEngine


class HeldOutValidation(nn.Module):
    """One validation pass: score each batch greedily (as ``evaluate.py`` does), then the pass's results.

    An ``nn.Module`` so its metrics follow the LightningModule's device and sync across ranks; their states
    are not checkpointed.

    Args:
        tasks: Task names of the held-out set (empty: only the overall accuracy).
        lengths: Its target lengths (accuracy per task and length when both are given).
        predictions_dir: Where each pass writes ``step_<k>.jsonl``, one row per prompt (``None``: nowhere).
        max_new_tokens: Greedy budget (``None``: the rollout engine's).
    """

    def __init__(
        self,
        tasks: Sequence[str] = (),
        lengths: Sequence[int] = (),
        predictions_dir: str | Path | None = None,
        max_new_tokens: int | None = None,
    ) -> None:
        super().__init__()
        # per task x length, summed across ranks; without task/length lists only the overall mean
        self.per_task = TaskLengthAccuracy(list(tasks), list(lengths)) if tasks and lengths else None
        self.overall = MeanMetric()
        self.records = ValRecords(predictions_dir)
        self.max_new_tokens = max_new_tokens

    def score(
        self,
        rollout: RolloutEngine,
        policy: nn.Module,
        tokenizer,
        batch: list[dict],
        reward_fn: RewardFn,
        step: int,
        errors: RewardErrors | None = None,
    ) -> None:
        """Generate and score one batch; a rank's padding record is generated but neither scored nor kept."""
        result = evaluate_batch(
            rollout, policy, tokenizer, batch, reward_fn, max_new_tokens=self.max_new_tokens, errors=errors
        )
        self.records.add(step, batch, result.completions, result.scores)  # skips padding
        batch, scores = drop_padding(batch, result.scores)  # [n] (see WithPadding)
        if batch:
            update_accuracy(self.per_task, self.overall, batch, scores)

    def finish(
        self, step: int, gather: Callable[[list], list[list]], is_main: bool
    ) -> dict[str, torch.Tensor]:
        """Write the pass's rows (every rank calls it: a collective) and return ``val/...`` accuracies, reset.

        Returns:
            ``val/acc``, ``val/acc/<length>``, ``val/acc/<task>/<length>`` (``{}``: nothing was scored).
        """
        self.records.write(step, gather, is_main)
        return {f"val/{k}": v for k, v in compute_accuracy(self.per_task, self.overall).items()}
