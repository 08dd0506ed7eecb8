"""One log line per RL step, so the reward curve is readable in plain-text logs (SLURM, CI, ``tee``)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from longact_pl.metric_reduce import Metric
from longact_pl.sampling import ScoredRollout

log = logging.getLogger("longact_pl")

# (logged metric, label, format) in the order printed
FIELDS = (
    ("train/reward_mean", "reward", "{:.3f}"),
    ("train/accuracy", "acc", "{:.3f}"),
    ("train/kl", "kl", "{:.2e}"),
    ("train/entropy", "entropy", "{:.3f}"),
    ("train/completion_len", "len", "{:.1f}"),
    ("train/tokens_per_s", "tok/s", "{:.0f}"),
    ("train/skipped_steps_total", "skipped", "{:.0f}"),
)
# counts printed only once they are non-zero
HIDE_ZERO = {"train/skipped_steps_total"}


def step_metrics(
    scored: ScoredRollout,
    truncated: int,
    truncated_total: int,
    reward_errors: int,
    seconds: float,
    lr: float,
    update: dict[str, float],
) -> dict[str, Metric]:
    """The ``train/*`` metrics of one RL step on this rank, each with its rule across ranks.

    :func:`~longact_pl.metric_reduce.reduce_metrics` turns them into the global values (what is logged):
    reward means and accuracy weighted by the first round's rows, the reward std pooled, the zero-std share
    by groups, completion length by the trained rows, counts and tokens/s summed.

    Args:
        scored: The step's scored rollouts (rewards of the first round are the reward curve).
        truncated: Prompts of this step that were middle-truncated to fit.
        truncated_total: Such prompts since the start of the run (this rank's share of the total).
        reward_errors: Completions whose reward function raised, since the start (this rank's share).
        seconds: Wall time of the step so far (for ``train/tokens_per_s``).
        lr: The optimizer's current learning rate.
        update: The learner's metrics (``train/loss``, ``train/grad_norm``, ...).
    """
    ro, group = scored.batch, scored.batch.group_size
    first = scored.first_round_rewards  # [N0]
    groups = first.view(-1, group)  # [B0, G]
    rows, prompts = first.numel(), groups.shape[0]
    mean = float(first.mean())
    logs = {
        "train/reward_mean": Metric(mean, "mean", rows),
        "train/reward_std": Metric(first.std(unbiased=False), "std", rows, center=mean),
        "train/accuracy": Metric((first >= 1.0).float().mean(), "mean", rows),
        "train/zero_std_groups": Metric(
            (groups.std(-1, unbiased=False) == 0).float().mean(), "mean", prompts
        ),
        "train/completion_len": Metric(ro.completion_lengths.float().mean(), "mean", len(ro.completions)),
        "train/truncated_prompts": Metric(truncated, "sum"),
        "train/truncated_prompts_total": Metric(truncated_total, "sum"),
        "train/gen_rounds": Metric(scored.rounds, "same"),  # sampling rounds agree across ranks
        "train/dropped_groups": Metric(scored.dropped_groups, "sum"),
        "train/kept_groups": Metric(len(ro.completions) // group, "sum"),  # trained on
        "train/reward_errors": Metric(reward_errors, "sum"),
        "train/tokens_per_s": Metric(int(ro.attention_mask.sum()) / seconds, "sum"),
        "train/lr": Metric(lr, "same"),
    }
    return {**logs, **update}


def format_step(step: int, max_steps: int, metrics: dict[str, Any]) -> str:
    """``step 3/16 reward 0.625 acc 0.500 ...`` from the metrics present (missing ones are left out)."""
    parts = [f"step {step}/{max_steps}" if max_steps > 0 else f"step {step}"]
    for key, label, fmt in FIELDS:
        value = metrics.get(key)
        if value is not None and not (key in HIDE_ZERO and float(value) == 0):
            parts.append(f"{label} {fmt.format(float(value))}")
    return " ".join(parts)


class StepLog(L.Callback):
    """Logs :func:`format_step` at INFO after every ``every_n`` training steps (rank 0).

    Args:
        every_n: Steps between lines (1 = every step).
    """

    def __init__(self, every_n: int = 1) -> None:
        if every_n < 1:
            raise ValueError(f"callbacks.step_log.every_n must be >= 1, got {every_n}")
        self.every_n = every_n
        self._last = -1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Print the step's metrics (Lightning's ``callback_metrics`` hold the latest logged values)."""
        step = trainer.global_step  # optimizer steps so far; unchanged by a skipped RL step
        if not trainer.is_global_zero or step % self.every_n or step == self._last:
            return
        self._last = step
        metrics = {
            k: v.item() if isinstance(v, torch.Tensor) else v for k, v in trainer.callback_metrics.items()
        }
        if "train/reward_mean" in metrics:
            log.info(format_step(step, trainer.max_steps, metrics))
