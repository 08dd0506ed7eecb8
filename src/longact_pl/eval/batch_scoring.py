"""Scoring shared by ``evaluate.py`` and training-time validation.

:func:`evaluate_batch` is the single path from prompt records to scores: generate (greedy by default) with
the rollout engine, then score every completion with the task's reward callable. The module's
``validation_step`` and the RULER / LongBench v2 runners all call it, so a number seen during training
and the same number from ``evaluate.py`` are computed identically.

Scores here are in ``[0, 1]`` (reward units); reports multiply by 100 (RULER's convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from longact_pl.rewards.scoring import RewardErrors, score
from longact_pl.rewards.string_match import match_all, match_part
from longact_pl.rewards.types import RewardFn
from longact_pl.rollout.types import RolloutEngine


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """RULER ``string_match_all``: mean fraction of references found in each prediction, x100.

    Matching is case-insensitive, after RULER's clean-up (control characters become newlines, then
    surrounding whitespace is stripped).
    """
    _check(predictions, references)
    return 100.0 * sum(match_all(p, r) for p, r in zip(predictions, references)) / len(predictions)


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """RULER ``string_match_part``: share of predictions containing at least one reference, x100."""
    _check(predictions, references)
    return 100.0 * sum(match_part(p, r) for p, r in zip(predictions, references)) / len(predictions)


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if not predictions or len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions and {len(references)} reference lists; "
            "give one non-empty reference list per prediction"
        )


@dataclass
class BatchResult:
    """Completions of one batch and their scores.

    Attributes:
        completions: ``B * G`` decoded completions, grouped by prompt (``G = 1`` when greedy).
        scores: ``[B * G]`` float32 scores in ``[0, 1]``.
        completion_lengths: ``[B * G]`` generated tokens per completion (up to and including EOS).
        group_size: G.
    """

    completions: list[str]
    scores: torch.Tensor
    completion_lengths: torch.Tensor
    group_size: int

    def prompt_index(self, row: int) -> int:
        """The prompt (record) a completion row belongs to."""
        return row // self.group_size


def evaluate_batch(
    engine: RolloutEngine,
    policy: torch.nn.Module,
    tokenizer,
    records: list[dict],
    scorer: RewardFn,
    max_new_tokens: int | None = None,
    greedy: bool = True,
    seed: int = 0,
    errors: RewardErrors | None = None,
) -> BatchResult:
    """Generate completions for prompt records and score them with the task's reward.

    Args:
        engine: Rollout engine (e.g. :class:`longact_pl.rollout.hf.HFRollout`).
        policy: The causal LM.
        tokenizer: Its tokenizer.
        records: Prompt records with ``prompt_ids`` (templated token ids) and ``references``
            (a ``task`` key, when present, is passed to the scorer as ``tasks=``).
        scorer: ``(completions, references, **meta) -> list[float]``, e.g. ``StringMatchAll()``.
        max_new_tokens: Generation budget (``None`` = the engine's).
        greedy: Greedy decoding, one completion per prompt; otherwise ``engine.group_size`` samples each.
        seed: Sampling seed (unused when greedy).
        errors: When given, a raising scorer scores 0 for the failing completions (counted there).

    Returns:
        The completions and their ``[B * G]`` scores.
    """
    if not records:
        raise ValueError("evaluate_batch: got an empty batch of records")
    out = engine.generate(
        policy, tokenizer, [r["prompt_ids"] for r in records], greedy=greedy, seed=seed,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip
    group = out.group_size
    scores = score(scorer, out.completions, records, group, errors)  # [B * G]
    return BatchResult(
        completions=list(out.completions),
        scores=scores,
        completion_lengths=out.completion_lengths.cpu(),  # [B * G]
        group_size=group,
    )
