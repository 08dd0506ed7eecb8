"""A task that draws one of several tasks per sample seed (a RULER-style mix)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from longact_pl.data.tasks.common import sub_rng
from longact_pl.data.types import Sample, Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TaskMixture:
    """Pick a task per sample, reproducibly from the sample seed; samples keep the picked task's name.

    Args:
        tasks: The tasks to mix.
        weights: Relative sampling weights, one per task; ``None`` means uniform.
        name: Name of the mixture itself (samples carry the name of the task that made them).
    """

    def __init__(
        self, tasks: Sequence[Task], weights: Sequence[float] | None = None, name: str = "mix"
    ) -> None:
        if not tasks:
            raise ValueError("TaskMixture: tasks is empty; list at least one task")
        if weights is not None and (len(weights) != len(tasks) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(
                f"TaskMixture: weights {list(weights)} must be {len(tasks)} non-negative numbers with a "
                "positive sum, one per task"
            )
        self.tasks = list(tasks)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.tasks)
        self.name = name

    def generate(self, target_tokens: int, seed: int, tokenizer: PreTrainedTokenizerBase) -> Sample:
        """Generate with the task drawn for ``seed``."""
        task = sub_rng(seed, "mixture").choices(self.tasks, weights=self.weights)[0]
        return task.generate(target_tokens, seed, tokenizer)
