"""Rollout correction: importance weights for an external sampler's mismatch, and the metrics that show it.

An external sampler (vLLM: bf16, other kernels) gives its tokens probabilities ``pi_s`` that differ from the
trainer's ``pi_t`` for the same weights, more so at long context and low entropy. With
``log r = log pi_t - log pi_s`` per completion token (``pi_t`` before this step's updates):

* weights, by ``level`` (a class, ``correction_weights.py``): ``TokenRatio`` ``r_t``; ``SequenceProduct``
  the product ``prod_t r_t``; ``GeometricMean`` the geometric mean ``exp(mean_t log r_t)`` (the last two are
  one weight per sequence, on all its tokens);
* by ``mode`` (a class too): ``Truncate`` caps the weight at ``high`` (TIS); ``Mask`` keeps it inside
  ``[low, high]`` and sets it to 0 outside (the token or sequence is dropped from the loss; MIS);
* optionally a sequence whose *any* token ratio leaves ``[reject_low, reject_high]`` is rejected (weight 0).

A dropped token keeps its place in the loss normalisers (the token or sequence count), so a step that drops
much takes a smaller step rather than re-weighting the survivors, and micro-batching cannot change the loss.
Log-ratios are clamped to ``[-20, 20]`` before ``exp`` (verl's safety bound).

Metrics (:meth:`RolloutCorrection.metrics`, logged every step an external sampler is used, correction on or
off): ``k3_kl`` = mean over completion tokens of ``r - log r - 1``, the k3 estimate of KL(sampler || trainer);
``log_ratio_abs_mean`` / ``log_ratio_abs_max`` of ``|log r|``; ``token_truncated_frac``,
``token_masked_frac``, ``seq_truncated_frac``, ``seq_masked_frac`` (a sequence counts when any of its tokens
is), ``seq_rejected_frac``; and the same per completion-length bucket, ``<name>/len_le<edge>`` and
``<name>/len_gt<last edge>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from longact_pl.algos.correction_weights import Truncate, WeightLevel, WeightMode
from longact_pl.algos.losses import masked_mean

SAFETY_BOUND = 20.0  # |log weight| is clamped to this before exp (exp(20) ~ 4.9e8)


def log_ratios(train_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` float32 ``log pi_t - log pi_s`` at completion tokens; 0 (whatever was there) at padding."""
    diff = train_logp.detach().float() - sampler_logp.detach().float()  # [N, T]
    return torch.where(mask.bool(), diff, torch.zeros_like(diff))  # [N, T]


@dataclass(frozen=True)
class _Decision:
    """What the correction does to each token: ``weights`` and the flags metrics count (all ``[N, T]``)."""

    weights: torch.Tensor
    truncated: torch.Tensor
    dropped: torch.Tensor
    rejected: torch.Tensor


class RolloutCorrection:
    """Importance weights for an external sampler, and mismatch metrics (``correction.*`` in the config).

    A plain class, not a dataclass: Hydra would turn a dataclass passed to ``instantiate`` into a config.

    Args:
        level: A :class:`~longact_pl.algos.correction_weights.WeightLevel` (``TokenRatio``,
            ``SequenceProduct``, ``GeometricMean``), or ``None`` (no importance weights: only rejection, if
            set, and the metrics).
        mode: A :class:`~longact_pl.algos.correction_weights.WeightMode`: ``Truncate()`` (default; weight
            capped at ``high``) or ``Mask()`` (weight 0 outside ``[low, high]``).
        high: Upper bound of the weight (> 0).
        low: Lower bound for ``mask`` (default ``1 / high``); must be unset with ``truncate``.
        reject_low: Reject a sequence with any token ratio below this (``None`` = no lower rejection).
        reject_high: Reject a sequence with any token ratio above this (``None`` = no upper rejection).
        length_buckets: Increasing completion-length edges (tokens) that split the metrics.

    Raises:
        ValueError: Naming the ``correction.<field>`` of a bad setting.
    """

    def __init__(
        self,
        level: WeightLevel | None = None,
        mode: WeightMode | None = None,
        high: float = 2.0,
        low: float | None = None,
        reject_low: float | None = None,
        reject_high: float | None = None,
        length_buckets: Sequence[int] = (256, 2048),
    ) -> None:
        mode = Truncate() if mode is None else mode
        if level is not None and not isinstance(level, WeightLevel):
            raise ValueError(
                f"correction.level must be a WeightLevel class (a _target_ node, e.g. "
                f"longact_pl.algos.correction_weights.TokenRatio; presets: correction=token_tis) or null, "
                f"got {level!r}"
            )
        if not isinstance(mode, WeightMode):
            raise ValueError(
                f"correction.mode must be a WeightMode class (a _target_ node: "
                f"longact_pl.algos.correction_weights.Truncate or Mask), got {mode!r}"
            )
        if not high > 0:
            raise ValueError(f"correction.high must be > 0, got {high}")
        if low is not None and not 0 < low <= high:
            raise ValueError(f"correction.low must be in (0, correction.high={high}], got {low}")
        for name, value in (("reject_low", reject_low), ("reject_high", reject_high)):
            if value is not None and not value > 0:
                raise ValueError(f"correction.{name} must be > 0 (or null = off), got {value}")
        if reject_low is not None and reject_high is not None and reject_low > reject_high:
            raise ValueError(
                f"correction.reject_low={reject_low} must be <= correction.reject_high={reject_high}"
            )
        mode.check(low, high, level is not None)
        if (reject_low is not None and reject_low > 1.0) or (reject_high is not None and reject_high < 1.0):
            raise ValueError(
                f"correction.reject_low={reject_low} / correction.reject_high={reject_high} reject every "
                "ratio of 1 (a sampler that matches the trainer exactly): every sequence would be dropped. "
                "Set correction.reject_low <= 1 <= correction.reject_high (or null = off)"
            )
        edges = [int(e) for e in length_buckets]
        if any(e < 1 for e in edges) or edges != sorted(set(edges)):
            raise ValueError(
                f"correction.length_buckets must be increasing positive token counts, got {edges}"
            )
        self.level, self.mode, self.high, self.low = level, mode, float(high), low
        self.reject_low, self.reject_high = reject_low, reject_high
        self.length_buckets = tuple(edges)

    def __repr__(self) -> str:
        """Readable summary for logs."""
        return (
            f"RolloutCorrection(level={_name(self.level)}, mode={_name(self.mode)}, low={self.low}, "
            f"high={self.high}, reject=({self.reject_low}, {self.reject_high}), "
            f"length_buckets={self.length_buckets})"
        )

    @property
    def active(self) -> bool:
        """Whether the loss is changed (importance weights or rejection); else only metrics are logged."""
        return self.level is not None or self.rejects

    @property
    def rejects(self) -> bool:
        """Whether sequences with an extreme token ratio are rejected."""
        return self.reject_low is not None or self.reject_high is not None

    @property
    def lower(self) -> float:
        """The lower weight bound of ``mask`` mode (``low``, or ``1 / high``)."""
        return self.low if self.low is not None else 1.0 / self.high

    @torch.no_grad()
    def weights(
        self, train_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        """Detached per-token loss weights ``[N, T]`` (1 at padding), or ``None`` when inactive.

        Args:
            train_logp: ``[N, T]`` trainer log-probs of the sampled tokens before this step's updates.
            sampler_logp: ``[N, T]`` the sampler's log-probs of the same tokens.
            mask: ``[N, T]`` float or bool (1 = real completion token).
        """
        if not self.active:
            return None
        keep = mask.bool()  # [N, T]
        weights = self._decide(log_ratios(train_logp, sampler_logp, mask), keep).weights  # [N, T]
        return torch.where(keep, weights, torch.ones_like(weights))  # [N, T]

    @torch.no_grad()
    def metrics(
        self, train_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Mismatch metrics of a whole batch, overall and per completion-length bucket (module docstring).

        Args:
            train_logp: ``[N, T]`` trainer log-probs of the sampled tokens before this step's updates.
            sampler_logp: ``[N, T]`` the sampler's log-probs of the same tokens.
            mask: ``[N, T]`` float or bool (1 = real completion token).

        Returns:
            Scalar tensors by name; buckets without rows are left out.
        """
        keep = mask.bool()  # [N, T]
        log_r = log_ratios(train_logp, sampler_logp, mask)  # [N, T]
        decision = self._decide(log_r, keep)
        out = _summary(log_r, keep, decision)
        for name, rows in self._buckets(keep):
            picked = _Decision(*(t[rows] for t in (decision.weights, decision.truncated,
                                                   decision.dropped, decision.rejected)))  # fmt: skip
            out.update({f"{k}/{name}": v for k, v in _summary(log_r[rows], keep[rows], picked).items()})
        return out

    def metric_rules(self, mask: torch.Tensor) -> dict[str, tuple[str, float]]:
        """How each of :meth:`metrics`' values combines over ranks: ``name -> (how, weight)``.

        Token means weigh by their tokens, sequence fractions by their rows (with a token), the maxima are
        maxima (see :class:`~longact_pl.metric_reduce.Metric`).
        """
        keep = mask.bool()  # [N, T]
        out = _rules(keep, "")
        for name, rows in self._buckets(keep):
            out.update(_rules(keep[rows], f"/{name}"))
        return out

    def _buckets(self, keep: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """``(name, rows bool [N])`` of each completion-length bucket holding rows."""
        lengths = keep.sum(-1)  # [N]
        out = []
        lows = (0, *self.length_buckets)
        for low, high in zip(lows, (*self.length_buckets, None)):
            rows = (lengths > low) if high is None else (lengths > low) & (lengths <= high)  # [N]
            if rows.any():
                out.append((f"len_gt{low}" if high is None else f"len_le{high}", rows))
        return out

    def _decide(self, log_r: torch.Tensor, keep: torch.Tensor) -> _Decision:
        """Weights and flags ``[N, T]`` from token log-ratios (0 at padding)."""
        if self.level is None:  # no importance weights: only rejection acts
            weights = torch.ones_like(log_r)  # [N, T]
            truncated = dropped = torch.zeros_like(keep)  # [N, T]
        else:
            log_w = self.level.log_weights(log_r, keep)  # [N, T]
            raw = log_w.clamp(-SAFETY_BOUND, SAFETY_BOUND).exp()  # [N, T]
            weights, truncated, dropped = self.mode.apply(raw, keep, self.lower, self.high)  # [N, T] x 3
        rejected = self._rejected(log_r, keep).unsqueeze(-1) & keep  # [N, T]
        weights = torch.where(rejected, torch.zeros_like(weights), weights)  # [N, T]
        return _Decision(weights, truncated & ~rejected, dropped | rejected, rejected)

    def _rejected(self, log_r: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``bool [N]``: sequences with a token ratio outside ``[reject_low, reject_high]``."""
        extreme = torch.zeros_like(keep)  # [N, T]
        if self.reject_low is not None:
            extreme |= keep & (log_r < math.log(self.reject_low))
        if self.reject_high is not None:
            extreme |= keep & (log_r > math.log(self.reject_high))
        return extreme.any(-1)  # [N]


def _name(part) -> str | None:
    """A level's or mode's config name (its ``name``, else its class), ``None`` for none."""
    if part is None or isinstance(part, str):  # a string: a config not yet instantiated
        return part
    return getattr(part, "name", type(part).__name__)


def _summary(log_r: torch.Tensor, keep: torch.Tensor, decision: _Decision) -> dict[str, torch.Tensor]:
    """The metrics of one set of rows (see the module docstring)."""
    safe = log_r.clamp(-SAFETY_BOUND, SAFETY_BOUND)  # [n, T]
    k3 = safe.exp() - safe - 1.0  # [n, T]; 0 at padding (log r = 0 there)
    abs_r = log_r.abs()  # [n, T]; 0 at padding
    rows = keep.any(-1)  # [n]: sequences with at least one token
    return {
        "k3_kl": masked_mean(k3, keep),
        "log_ratio_abs_mean": masked_mean(abs_r, keep),
        "log_ratio_abs_max": torch.cat([abs_r.flatten(), abs_r.new_zeros(1)]).max(),
        "token_truncated_frac": masked_mean(decision.truncated, keep),
        "token_masked_frac": masked_mean(decision.dropped, keep),
        "seq_truncated_frac": masked_mean(decision.truncated.any(-1), rows),
        "seq_masked_frac": masked_mean(decision.dropped.any(-1), rows),
        "seq_rejected_frac": masked_mean(decision.rejected.any(-1), rows),
    }


def _rules(keep: torch.Tensor, suffix: str) -> dict[str, tuple[str, float]]:
    """:func:`_summary`'s names (with ``suffix``) -> ``(how, weight)`` across ranks."""
    tokens, rows = float(keep.sum()), float(keep.any(-1).sum())
    token_means = ("k3_kl", "log_ratio_abs_mean", "token_truncated_frac", "token_masked_frac")
    seq_means = ("seq_truncated_frac", "seq_masked_frac", "seq_rejected_frac")
    return {
        **{f"{k}{suffix}": ("mean", tokens) for k in token_means},
        **{f"{k}{suffix}": ("mean", rows) for k in seq_means},
        f"log_ratio_abs_max{suffix}": ("max", 1.0),
    }


def check_training_sampler(rollout, correction: RolloutCorrection | None) -> None:
    """Refuse settings where the sampler's log-probs would not describe what the trainer computes.

    * ``top_p < 1`` or ``top_k > 0``: samples come from a truncated distribution (vLLM also renormalises its
      log-probs over the kept tokens) while the trainer's log-probs are the full softmax at the temperature,
      so ratios, clipping and KL would compare two different distributions.
    * An active correction without an external sampler: the policy samples itself (HF), there is no
      mismatch to correct.

    Raises:
        ValueError: Naming the config field and the fix.
    """
    top_p, top_k = getattr(rollout, "top_p", 1.0), getattr(rollout, "top_k", 0)
    if top_p < 1.0 or top_k > 0:
        raise ValueError(
            f"rollout.top_p={top_p} / rollout.top_k={top_k}: training needs top_p=1.0 and top_k=0, because "
            "the trainer's log-probs are the full softmax at rollout.temperature and would not describe the "
            "truncated sampling distribution (use them for evaluation only)"
        )
    if correction is not None and correction.active and not getattr(rollout, "external", False):
        raise ValueError(
            f"correction.level={_name(correction.level)} (reject_low={correction.reject_low}, "
            f"reject_high={correction.reject_high}) corrects an external sampler's mismatch, but "
            f"rollout={type(rollout).__name__} samples with the policy itself; use rollout=vllm or "
            "correction=none"
        )
