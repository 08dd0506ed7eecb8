"""Score completions with a task's reward callable, tolerating a reward function that raises."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from longact_pl.rewards.types import RewardFn

log = logging.getLogger(__name__)


@dataclass
class RewardErrors:
    """Completions whose reward function raised: counted, the first one kept with its input."""

    count: int = 0
    first: str | None = None

    def record(self, err: Exception, completion: str, references: list[str]) -> None:
        """Count one failure; log the first with its input."""
        self.count += 1
        if self.first is None:
            self.first = f"{type(err).__name__}: {err} | completion={completion!r} references={references!r}"
            log.warning("reward function raised (scored 0, run continues): %s", self.first)


def _score_one(
    reward_fn: RewardFn, completion: str, refs: list[str], task: str, errors: RewardErrors
) -> float:
    try:
        return float(reward_fn([completion], [refs], tasks=[task])[0])
    except Exception as err:  # noqa: BLE001 - a user reward must not kill a long run
        errors.record(err, completion, refs)
        return 0.0


def score(
    reward_fn: RewardFn,
    completions: list[str],
    samples: list[dict],
    group_size: int,
    errors: RewardErrors | None = None,
) -> torch.Tensor:
    """Reward each completion against the references of its prompt.

    Args:
        reward_fn: ``(completions, references, **meta) -> list[float]``.
        completions: ``B * G`` completions, grouped by prompt.
        samples: The B prompt dicts (``references``, ``task``).
        group_size: G.
        errors: When given, a raising reward function is retried per completion and the failing ones
            score 0 (counted here) instead of stopping the run.

    Returns:
        ``[B * G]`` float32 rewards.
    """
    refs = [s["references"] for s in samples for _ in range(group_size)]
    tasks = [s.get("task", "") for s in samples for _ in range(group_size)]
    try:
        values = reward_fn(completions, refs, tasks=tasks)
    except Exception:
        if errors is None:
            raise
        values = [_score_one(reward_fn, c, r, t, errors) for c, r, t in zip(completions, refs, tasks)]
    if len(values) != len(completions):
        raise ValueError(f"reward function returned {len(values)} values for {len(completions)} completions")
    return torch.tensor([float(v) for v in values], dtype=torch.float32)  # [B * G]
