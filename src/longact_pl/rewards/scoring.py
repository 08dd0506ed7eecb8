"""Score completions with a task's reward callable, tolerating a reward function that raises."""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, field

import torch

from longact_pl.rewards.types import FatalRewardError, RewardFn

log = logging.getLogger(__name__)

# Prompt-record keys handed to reward functions as keyword lists (one value per completion), when present:
# record key -> keyword (DocQA's question for the judge, chunk ids and evidence for the citation reward).
META_FIELDS = {"question": "questions", "chunk_ids": "chunk_ids", "evidence": "evidence"}


def reward_meta(samples: list[dict], group_size: int) -> dict[str, list]:
    """``tasks=`` and the :data:`META_FIELDS` the records carry, each repeated for a prompt's completions."""
    meta = {"tasks": [s.get("task", "") for s in samples for _ in range(group_size)]}
    for key, keyword in META_FIELDS.items():
        if any(key in s for s in samples):
            meta[keyword] = [s.get(key) for s in samples for _ in range(group_size)]
    return meta


@dataclass
class RewardErrors:
    """Completions whose reward function raised: counted, the first one kept with its input and traceback.

    Attributes:
        count: Failed completions since the start of the run.
        first: The first failure, as text (exception, completion, references).
        first_error: The first exception itself (its ``__traceback__`` included).
        step_scored: Completions scored since :meth:`new_step`.
        step_failed: Of those, the ones whose reward function raised.
        step_first: The first failure since :meth:`new_step`: ``(text, exception)``.
    """

    count: int = 0
    first: str | None = None
    first_error: Exception | None = field(default=None, repr=False)
    step_scored: int = 0
    step_failed: int = 0
    step_first: tuple[str, Exception] | None = field(default=None, repr=False)

    def record(self, err: Exception, completion: str, references: list[str]) -> None:
        """Count one failure; log the first with its input."""
        self.count += 1
        self.step_failed += 1
        text = f"{type(err).__name__}: {err} | completion={completion!r} references={references!r}"
        self.step_first = self.step_first or (text, err)
        if self.first is None:
            self.first, self.first_error = text, err
            log.warning("reward function raised (scored 0, run continues): %s", self.first)

    def new_step(self) -> None:
        """Start counting the completions of a new RL step."""
        self.step_scored = self.step_failed = 0
        self.step_first = None

    @property
    def step_all_failed(self) -> bool:
        """Whether the reward function raised on every completion scored since :meth:`new_step`."""
        return self.step_scored > 0 and self.step_failed == self.step_scored


def _name(reward_fn: RewardFn) -> str:
    kind = reward_fn if hasattr(reward_fn, "__qualname__") else type(reward_fn)  # a function, or an object
    return f"{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', repr(kind))}"


def as_rewards(values: object, count: int, reward_fn: RewardFn) -> torch.Tensor:
    """``[count]`` float32 rewards from what a reward function returned, or an error naming ``data.reward``.

    Accepts a list, tuple, tensor or array of ``count`` real numbers (bools included).

    Raises:
        TypeError: Not a sequence, or an element that is not a number (its type and position named).
        ValueError: Another length than ``count``.
    """
    who = f"data.reward ({_name(reward_fn)})"
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    elif hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
        values = values.tolist()  # numpy arrays
    if not isinstance(values, (list, tuple)):
        raise TypeError(
            f"{who} returned {type(values).__name__} ({values!r:.80}); a reward function must return a list "
            f"of {count} floats, one per completion"
        )
    if len(values) != count:
        raise ValueError(f"{who} returned {len(values)} values for {count} completions")
    for i, value in enumerate(values):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, numbers.Real):
            raise TypeError(
                f"{who} returned a {type(value).__name__} ({value!r:.80}) at position {i} of its list; every "
                "reward must be a number (float, int or bool), one per completion"
            )
    return torch.tensor([float(v) for v in values], dtype=torch.float32)  # [count]


def _score_one(
    reward_fn: RewardFn, completion: str, refs: list[str], meta: dict, errors: RewardErrors
) -> float:
    try:
        values = reward_fn([completion], [refs], **meta)
    except FatalRewardError:
        raise
    except Exception as err:  # noqa: BLE001 - a user reward must not kill a long run
        errors.record(err, completion, refs)
        return 0.0
    return float(as_rewards(values, 1, reward_fn)[0])  # a wrong return type is a bug: it stops the run


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
            score 0 (counted here) instead of stopping the run; a :class:`FatalRewardError` (a judge
            failing with ``on_failure=fail``) always stops it.

    Returns:
        ``[B * G]`` float32 rewards.
    """
    refs = [s["references"] for s in samples for _ in range(group_size)]
    meta = reward_meta(samples, group_size)
    try:
        values = reward_fn(completions, refs, **meta)  # the whole batch in one call (a judge batches it)
    except FatalRewardError:
        raise
    except Exception:
        if errors is None:
            raise
        values = [
            _score_one(reward_fn, c, r, {k: [v[i]] for k, v in meta.items()}, errors)
            for i, (c, r) in enumerate(zip(completions, refs))
        ]
    rewards = as_rewards(values, len(completions), reward_fn)  # [B * G]
    if errors is not None:
        errors.step_scored += len(completions)
    return rewards
