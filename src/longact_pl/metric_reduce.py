"""Logged metrics as the whole run computes them: each rank's values reduced over data-parallel ranks.

A rank computes its metrics on its share of the step's rollouts; what is logged must be the value of the
union of the shares (what one process on the global batch logs). Each value says how it combines
(:class:`Metric`): a mean weighted by the rows or tokens it averages, a sum (counts, the loss already
normalised by global counts, tokens/s), a maximum or minimum, a standard deviation (pooled with its mean),
or a value every rank holds alike (the learning rate, the gradient norm of the all-reduced gradient).

:func:`reduce_metrics` runs one collective per call (``DistOps.gather`` of every rank's values, a small
dict) and combines locally, over the union of the ranks' names (a rank may lack a metric: a length bucket
without rows). The ranks of a sequence-parallel group hold the same rows: only the group's first rank's
values are combined (``counted``), so a group counts once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from longact_pl.distributed import DistOps

# how a metric combines over ranks
HOWS = ("mean", "sum", "max", "min", "std", "same")


class Metric(float):
    """A float that knows how it combines over ranks (it is the rank's own value everywhere else).

    Args:
        value: This rank's value.
        how: ``mean`` (weighted by ``weight``), ``sum``, ``max``, ``min``, ``std`` (population standard
            deviation of ``weight`` values whose mean is ``center``) or ``same`` (equal on every rank).
        weight: Rows or tokens the value averages (``mean``, ``std``); a rank with weight 0 adds nothing.
        center: The mean of the values a ``std`` is taken over.
    """

    how: str
    weight: float
    center: float

    def __new__(cls, value: float, how: str = "mean", weight: float = 1.0, center: float = 0.0) -> Metric:
        """The value with its rule (``how`` checked)."""
        if how not in HOWS:
            raise ValueError(f"Metric.how must be one of {HOWS}, got {how!r}")
        out = super().__new__(cls, float(value))
        out.how, out.weight, out.center = how, float(weight), float(center)
        return out

    def __reduce__(self):
        """Pickled with its rule (``DistOps.gather`` sends it between ranks)."""
        return (Metric, (float(self), self.how, self.weight, self.center))


def combine(values: list[Metric]) -> float:
    """One metric's ranks combined by its rule (``values``: the counted ranks holding it, rank order)."""
    how = values[0].how
    if how == "sum":
        return sum(float(v) for v in values)
    if how == "max":
        return max(float(v) for v in values)
    if how == "min":
        return min(float(v) for v in values)
    if how == "same":
        return float(values[0])
    total = sum(v.weight for v in values)
    if total == 0:
        return 0.0
    mean = sum(v.weight * (v.center if how == "std" else float(v)) for v in values) / total
    if how == "mean":
        return mean
    # pooled population variance: each rank's variance plus its mean's offset from the global mean
    var = sum(v.weight * (float(v) ** 2 + (v.center - mean) ** 2) for v in values) / total
    return math.sqrt(max(var, 0.0))


def _wrapped(metrics: Mapping[str, float]) -> dict[str, Metric]:
    """Every value as a :class:`Metric` (a plain float: an unweighted mean)."""
    return {k: v if isinstance(v, Metric) else Metric(v) for k, v in metrics.items()}


def reduce_metrics(metrics: Mapping[str, float], dist: DistOps, counted: bool = True) -> dict[str, float]:
    """Every metric combined over data-parallel ranks (one collective; every rank must call it).

    Args:
        metrics: Name -> value; a plain float combines as an unweighted ``mean`` over ranks.
        dist: The collectives (``gather``).
        counted: This rank's values count (``False`` on all but a sequence-parallel group's first rank).

    Returns:
        Name -> global value, the same on every rank, for every name any counted rank holds.
    """
    mine = _wrapped(metrics)
    if dist.world_size == 1:
        return {k: combine([v]) for k, v in mine.items()}
    ranks = [_wrapped(m) for ok, m in dist.gather((counted, mine)) if ok]
    names = sorted({k for m in ranks for k in m})
    return {k: combine([m[k] for m in ranks if k in m]) for k in names}


# learner metrics normalised by the mini-batch's global counts: a mini-batch's micro-batches on every rank
# add up to its value (the others are token means)
SUMMED = ("loss", "pg_loss", "entropy_bonus")


def micro_batch_metrics(micro: list[tuple[dict[str, torch.Tensor], float]], steps: int) -> dict[str, Metric]:
    """``train/<name>`` of one update from its micro-batches' ``(metrics, valid tokens)``, on this rank.

    :data:`SUMMED` metrics: the micro-batches' sum over the ``steps`` optimizer steps (mean per step;
    summed over ranks, the global value); the others (token means: ``entropy``, ``kl``, ``clip_frac_*``,
    ``ratio_mean``): weighted by the micro-batches' tokens, combined over ranks by the same weights. Neither
    depends on how rows are cut into micro-batches.
    """
    keys = micro[0][0].keys() if micro else ()
    out = {}
    for k in keys:
        if k in SUMMED:
            out[f"train/{k}"] = Metric(sum(float(m[k]) for m, _ in micro) / max(steps, 1), "sum")
        else:
            tokens = sum(t for _, t in micro)
            value = sum(float(m[k]) * t for m, t in micro) / tokens if tokens else 0.0
            out[f"train/{k}"] = Metric(value, "mean", tokens)
    return out
