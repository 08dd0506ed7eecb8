"""Bootstrap confidence intervals of paired differences over prompts (and seeds), and what they can detect.

A paired comparison of two arms scores the same held-out prompts under both: ``d[s, p]`` is arm B's score
minus arm A's on prompt ``p`` in seed ``s`` (the two runs of a seed share the data order and the initial
weights). The statistic is a weighted mean of per-stratum means of ``d`` (a stratum: a task family, or a
RULER task x length cell); with one stratum it is the plain mean.

:func:`paired_ci` resamples *both* seeds and prompts with replacement (a two-way, crossed bootstrap: the
prompts are the same in every seed, so resampling only the ``S * P`` cells would treat correlated cells as
independent and understate the uncertainty); prompts are resampled within their stratum, so every replicate
keeps the design's family sizes. The interval is the percentile interval of the replicates.

The smallest effect the design can detect (``Interval.mde``) is ``(z_{1-alpha/2} + z_{power}) * se`` with
``se`` the bootstrap standard error: the true difference a two-sided test at level ``alpha`` would find with
probability ``power`` (normal approximation; 2.80 * se at alpha 0.05 and 80% power).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A bootstrap confidence interval of a mean paired difference.

    Attributes:
        mean: The observed statistic (B minus A).
        lo: Lower end of the interval.
        hi: Upper end.
        se: Bootstrap standard error (std of the replicates).
        level: Confidence level (0.95).
        n_seeds: Seeds paired.
        n_prompts: Prompts per seed.
        power: Power the MDE is stated for.
    """

    mean: float
    lo: float
    hi: float
    se: float
    level: float
    n_seeds: int
    n_prompts: int
    power: float = 0.8

    @property
    def half_width(self) -> float:
        """Half the interval's width."""
        return (self.hi - self.lo) / 2

    @property
    def excludes_zero(self) -> bool:
        """True when 0 lies outside the interval (a difference at this confidence level)."""
        return self.lo > 0 or self.hi < 0

    @property
    def mde(self) -> float:
        """Minimal detectable effect: ``(z_{(1+level)/2} + z_{power}) * se`` (2.80 * se at 95% / 80%)."""
        z = NormalDist().inv_cdf
        return (z((1 + self.level) / 2) + z(self.power)) * self.se


def _counts(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    """``[reps, n]`` multiplicities of ``n`` items drawn with replacement, ``n`` at a time."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float64)


def paired_ci(
    diffs: np.ndarray | Sequence[Sequence[float]],
    strata: Sequence[object] | None = None,
    weights: dict[object, float] | None = None,
    n_boot: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Bootstrap interval of the (stratum-weighted) mean of paired differences ``[S seeds, P prompts]``.

    Args:
        diffs: ``[S, P]`` differences (B - A), one row per seed, the same prompt in each column; a 1-D
            array is one seed.
        strata: Stratum label of each prompt (``None``: one stratum).
        weights: Weight of each stratum in the statistic (``None``: its share of the prompts, so the
            statistic is the plain mean); they are normalised to sum to 1.
        n_boot: Bootstrap replicates.
        level: Confidence level.
        seed: Seed of the resampling (the interval is reproducible).

    Raises:
        ValueError: On an empty or non-finite ``diffs``, a ``strata`` of the wrong length, or weights that
            miss a stratum.
    """
    d = np.atleast_2d(np.asarray(diffs, dtype=np.float64))  # [S, P]
    if d.ndim != 2 or d.size == 0 or not np.isfinite(d).all():
        raise ValueError(f"paired_ci: diffs must be a finite [seeds, prompts] array, got shape {d.shape}")
    if n_boot < 100 or not 0 < level < 1:
        raise ValueError(f"paired_ci: need n_boot >= 100 and 0 < level < 1, got {n_boot} and {level}")
    n_seeds, n_prompts = d.shape
    labels = list(strata) if strata is not None else [0] * n_prompts
    if len(labels) != n_prompts:
        raise ValueError(f"paired_ci: {len(labels)} stratum labels for {n_prompts} prompts; give one each")
    groups: dict[object, list[int]] = {}
    for j, label in enumerate(labels):
        groups.setdefault(label, []).append(j)
    raw = weights if weights is not None else {k: len(v) / n_prompts for k, v in groups.items()}
    missing = [k for k in groups if k not in raw]
    if missing:
        raise ValueError(f"paired_ci: no weight for stratum(s) {missing}")
    total = sum(raw[k] for k in groups)
    w = {k: raw[k] / total for k in groups}
    observed = sum(w[k] * d[:, cols].mean() for k, cols in groups.items())
    rng = np.random.default_rng(seed)
    seed_counts = _counts(rng, n_seeds, n_boot)  # [B, S]
    reps = np.zeros(n_boot)  # [B]
    for k, cols in groups.items():
        prompt_counts = _counts(rng, len(cols), n_boot)  # [B, P_k]
        sums = np.einsum("bs,sp,bp->b", seed_counts, d[:, cols], prompt_counts)  # [B]
        reps += w[k] * sums / (n_seeds * len(cols))
    tail = (1 - level) / 2
    lo, hi = np.quantile(reps, [tail, 1 - tail])
    return Interval(
        mean=float(observed), lo=float(lo), hi=float(hi), se=float(reps.std(ddof=1)), level=level,
        n_seeds=n_seeds, n_prompts=n_prompts,
    )  # fmt: skip
