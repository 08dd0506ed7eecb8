"""Accuracy per (task, length) as a torchmetrics ``Metric``: correct under DDP, shared by eval and training.

States are two ``[num_tasks, num_lengths]`` tensors (score sums and counts) reduced with ``sum`` across
processes, so the keys must be known when the metric is built.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from torchmetrics import MeanMetric, Metric


class TaskLengthAccuracy(Metric):
    """Mean score per task and length, RULER-style averages per length, and an overall average.

    ``compute()`` returns (cells without any update are left out):

    * ``acc/<task>/<length>``: mean score of that task at that length;
    * ``acc/<length>``: average over tasks of the task means at that length (RULER's per-length column);
    * ``acc``: average of the per-length averages (RULER's overall average; with every cell filled it is
      the mean over all (task, length) cells).

    Args:
        tasks: Task names, in report order.
        lengths: Target lengths in tokens, in report order.
        bucket_lengths: ``False`` (default): a length not in ``lengths`` is an error. ``True``: it counts
            towards the smallest listed length that is >= it (the largest one if it exceeds them all),
            e.g. for JSONL prompts of arbitrary length.
        **kwargs: Passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ...).

    Raises:
        ValueError: On empty or duplicated tasks/lengths.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self, tasks: Sequence[str], lengths: Sequence[int], bucket_lengths: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        tasks, lengths = [str(t) for t in tasks], [int(n) for n in lengths]
        if not tasks or not lengths:
            raise ValueError("TaskLengthAccuracy: give at least one task and one length")
        if len(set(tasks)) != len(tasks) or len(set(lengths)) != len(lengths):
            raise ValueError(f"TaskLengthAccuracy: duplicated tasks {tasks} or lengths {lengths}")
        self.tasks = tasks
        self.lengths = lengths
        self.bucket_lengths = bucket_lengths
        self._task_index = {t: i for i, t in enumerate(tasks)}
        self._length_index = {n: j for j, n in enumerate(lengths)}
        self._sorted = sorted(lengths)
        shape = (len(tasks), len(lengths))
        self.add_state("total", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def _length_col(self, length: int) -> int:
        if length in self._length_index:
            return self._length_index[length]
        if not self.bucket_lengths:
            raise ValueError(
                f"TaskLengthAccuracy: length {length} is not one of {self.lengths}; list it in lengths=[...] "
                "or build the metric with bucket_lengths=True"
            )
        pos = min(bisect.bisect_left(self._sorted, length), len(self._sorted) - 1)
        return self._length_index[self._sorted[pos]]

    def update(self, tasks: Sequence[str], lengths: Sequence[int], scores: torch.Tensor) -> None:
        """Add one score per sample.

        Args:
            tasks: Task name of each sample.
            lengths: Target length of each sample.
            scores: ``[N]`` scores (e.g. in ``[0, 1]``).

        Raises:
            ValueError: On mismatched sizes or a task (or length) the metric was not built with.
        """
        scores = torch.as_tensor(scores).detach().flatten().to(self.total.device, torch.float64)  # [N]
        if not len(tasks) == len(lengths) == scores.numel():
            raise ValueError(
                f"TaskLengthAccuracy.update: got {len(tasks)} tasks, {len(lengths)} lengths and "
                f"{scores.numel()} scores; give one of each per sample"
            )
        unknown = sorted({t for t in tasks if t not in self._task_index})
        if unknown:
            raise ValueError(
                f"TaskLengthAccuracy: task(s) {unknown} are not among {self.tasks}; list them in tasks=[...]"
            )
        rows = [self._task_index[t] for t in tasks]
        cols = [self._length_col(int(n)) for n in lengths]
        flat = torch.tensor(
            [r * len(self.lengths) + c for r, c in zip(rows, cols)], device=self.total.device
        )  # [N]
        self.total += torch.zeros_like(self.total).view(-1).index_add(0, flat, scores).view_as(self.total)
        self.count += (
            torch.zeros_like(self.count)
            .view(-1)
            .index_add(0, flat, torch.ones_like(scores))
            .view_as(self.count)
        )

    def compute(self) -> dict[str, torch.Tensor]:
        """Means per cell, per length and overall (see the class docstring for the keys)."""
        present = self.count > 0  # [T, L]
        mean = self.total / self.count.clamp(min=1)  # [T, L]
        out: dict[str, torch.Tensor] = {}
        for i, task in enumerate(self.tasks):
            for j, length in enumerate(self.lengths):
                if present[i, j]:
                    out[f"acc/{task}/{length}"] = mean[i, j]
        per_length = []
        for j, length in enumerate(self.lengths):
            if present[:, j].any():
                out[f"acc/{length}"] = mean[present[:, j], j].mean()
                per_length.append(out[f"acc/{length}"])
        if per_length:
            out["acc"] = torch.stack(per_length).mean()
        return out


def update_accuracy(
    per_task: TaskLengthAccuracy | None, overall: MeanMetric, samples: Sequence[dict], scores: torch.Tensor
) -> None:
    """Add held-out scores ``[N]``: per task and ``target_length`` with ``per_task``, else overall."""
    if per_task is not None:
        lengths = [int(s.get("target_length", -1)) for s in samples]
        per_task.update([s.get("task", "") for s in samples], lengths, scores)
    else:
        overall.update(scores)


def compute_accuracy(per_task: TaskLengthAccuracy | None, overall: MeanMetric) -> dict[str, torch.Tensor]:
    """``acc`` (and per task/length keys) of what :func:`update_accuracy` added, then reset (``{}``: none)."""
    if per_task is not None:
        values = {k: v.float() for k, v in per_task.compute().items()}
        per_task.reset()
    elif overall.update_called:
        values = {"acc": overall.compute()}
        overall.reset()
    else:
        values = {}
    return values


def task_names(task) -> list[str]:
    """Names of the tasks a generated sample can carry: the task's own, or those inside a mixture.

    Args:
        task: A task (``.name``), or a mixture with ``.tasks``.
    """
    inner = getattr(task, "tasks", None)
    if inner:
        names: list[str] = []
        for t in inner:
            names += [n for n in task_names(t) if n not in names]
        return names
    return [task.name]


def source_task_names(source) -> list[str]:
    """Task names a sample source can yield: from its task (generated sources) or from its samples (files).

    Args:
        source: A :class:`~longact_pl.data.sources.GeneratedSource` (``.task``), a concatenation of sources
            (``.sources``) or any indexable source.
    """
    task = getattr(source, "task", None)
    if task is not None:
        return task_names(task)
    names: list[str] = []
    parts = getattr(source, "sources", None)
    if parts:  # a concatenation (longact_pl.data.concat.ConcatSource)
        for part in parts:
            names += [n for n in source_task_names(part) if n not in names]
        return names
    for i in range(len(source)):
        if source[i].task not in names:
            names.append(source[i].task)
    return names
