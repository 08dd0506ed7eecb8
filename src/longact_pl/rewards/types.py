"""The reward protocol every reward callable satisfies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class RewardFn(Protocol):
    """Scores completions: ``completions[i]`` against ``references[i]``; extra ``meta`` may be ignored."""

    def __call__(
        self, completions: Sequence[str], references: Sequence[Sequence[str]], **meta
    ) -> list[float]:
        """One score per completion."""
        ...


class FatalRewardError(RuntimeError):
    """A reward failure that must stop the run (never scored 0).

    :func:`~longact_pl.rewards.scoring.score` re-raises it instead of retrying completion by completion.
    """
