"""The policy loss of every preset: a surrogate (``surrogates.py``), aggregated, plus KL and entropy terms."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from longact_pl.algos.aggregation import AGGREGATIONS, NEEDS_MAX_LEN, Number, aggregate
from longact_pl.algos.kl import KL_ESTIMATORS
from longact_pl.algos.losses import masked_mean
from longact_pl.algos.surrogates import Surrogate, TokenClip


def check_non_negative(name: str, value: float) -> None:
    """Raise ``ValueError("algo.<name> must be >= 0, got <value>")`` for a negative value."""
    if value < 0:
        raise ValueError(f"algo.{name} must be >= 0, got {value}")


def check_choice(name: str, value: str, allowed) -> None:
    """Raise ``ValueError`` naming ``algo.<name>`` when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"algo.{name} must be one of {sorted(allowed)}, got {value!r}")


@dataclass(frozen=True)
class PolicyLoss:
    """Aggregated surrogate, plus ``kl_coef`` x aggregated KL, minus ``entropy_coef`` x entropy.

    ``loss = agg(w * surrogate) + kl_coef * agg(KL) - entropy_coef * agg(entropy)`` with the same
    aggregation for every term (as verl's actor). ``w`` are optional detached per-token weights (rollout
    correction); the KL and entropy terms are not weighted.

    Attributes:
        eps_low: Lower clip range (ratio floor ``1 - eps_low``), in ``[0, 1)``.
        eps_high: Upper clip range (ratio ceiling ``1 + eps_high``), ``>= 0``.
        kl_coef: KL weight to the reference policy (0 = no reference model).
        aggregation: One of ``longact_pl.algos.aggregation.AGGREGATIONS``.
        max_len: Fixed normaliser for ``seq_mean_token_sum_norm``.
        surrogate: The per-token policy-gradient loss (:class:`~longact_pl.algos.surrogates.TokenClip`,
            ``SequenceClip`` for GSPO, or any :class:`~longact_pl.algos.surrogates.Surrogate`).
        kl_estimator: One of ``longact_pl.algos.kl.KL_ESTIMATORS`` (``k1``, ``k2``, ``k3``, ``low_var_kl``).
        kl_in_reward: The KL is a reward penalty (applied before advantages), not a loss term.
        entropy_coef: Weight of the entropy bonus (0 = off; > 0 needs entropy with gradient).
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    kl_coef: float = 0.0
    aggregation: str = "seq_mean_token_mean"
    max_len: int | None = None
    surrogate: Surrogate = field(default_factory=TokenClip)
    kl_estimator: str = "k3"
    kl_in_reward: bool = False
    entropy_coef: float = 0.0

    def __post_init__(self) -> None:
        """Validate the fields; errors name the config field (``algo.<field>``)."""
        check_non_negative("eps_low", self.eps_low)
        if self.eps_low >= 1:
            raise ValueError(f"algo.eps_low must be < 1 (ratio floor 1 - eps_low > 0), got {self.eps_low}")
        check_non_negative("eps_high", self.eps_high)
        check_non_negative("kl_coef", self.kl_coef)
        check_non_negative("entropy_coef", self.entropy_coef)
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        if not callable(self.surrogate):
            raise ValueError(f"algo.surrogate must be a Surrogate (a _target_ node), got {self.surrogate!r}")
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        if self.aggregation in NEEDS_MAX_LEN and (self.max_len is None or self.max_len < 1):
            raise ValueError(
                f"algo.max_len must be an int >= 1 with aggregation {self.aggregation!r}, got {self.max_len}"
            )

    def __call__(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        ref_logp: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        num_seqs: Number | None = None,
        num_tokens: Number | None = None,
        token_weights: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss and detached metrics for one (micro-)batch.

        Gradient flows through ``logp`` (and ``entropy`` when the bonus is on); ``old_logp``, ``ref_logp``
        and ``advantages`` are detached.

        Args:
            logp: ``[N, T]`` current policy log-probs.
            old_logp: ``[N, T]`` behaviour-policy log-probs.
            ref_logp: ``[N, T]`` reference log-probs, or None when there is no KL loss term.
            advantages: ``[N]`` per-sequence advantages.
            mask: ``[N, T]`` float or bool (1 = real completion token).
            num_seqs: Sequences in the whole mini-batch (for gradient accumulation; default local).
            num_tokens: Valid tokens in the whole mini-batch (default local).
            token_weights: ``[N, T]`` detached per-token weights multiplying the clipped surrogate before
                aggregation (rollout correction); ``None`` = 1. The KL and entropy terms are not weighted.
            entropy: ``[N, T]`` per-token entropy of the policy, with gradient; required when
                ``entropy_coef > 0``, ignored otherwise.

        Returns:
            ``(loss, metrics)``; metrics: ``pg_loss``, ``clip_frac_low``, ``clip_frac_high``, ``ratio_mean``,
            ``kl`` (masked mean of the estimator) when the KL is a loss term, ``entropy_bonus`` when on.

        Raises:
            ValueError: If the KL loss term has no ``ref_logp`` or the entropy bonus no ``entropy``.
        """
        kl_term = self.kl_coef > 0 and not self.kl_in_reward
        if kl_term and ref_logp is None:
            raise ValueError(f"algo.kl_coef={self.kl_coef} > 0 needs reference log-probs, got ref_logp=None")
        keep = mask.bool()  # [N, T]
        # padded positions get ratio 1 and KL 0, so garbage there cannot reach the gradient as 0 * inf
        old_logp = torch.where(keep, old_logp.detach(), logp.detach())  # [N, T]
        advantages = advantages.detach().to(logp.dtype)  # [N]
        surrogate, low, high = self.surrogate(
            logp, old_logp, advantages, keep, self.eps_low, self.eps_high
        )  # [N, T] x 3
        if token_weights is not None:  # padded positions get weight 1: no inf/NaN can reach the gradient
            weights = torch.where(keep, token_weights.detach().to(surrogate.dtype), 1.0)  # [N, T]
            surrogate = surrogate * weights  # [N, T]
        pg_loss = self._aggregate(surrogate, mask, num_seqs, num_tokens)  # []
        ratio = (logp.detach() - old_logp).exp()  # [N, T]
        metrics = {
            "pg_loss": pg_loss.detach(),
            "clip_frac_low": masked_mean(low, mask),
            "clip_frac_high": masked_mean(high, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
        loss = pg_loss
        if self.entropy_coef > 0:
            loss = loss - self.entropy_coef * self._entropy_term(logp, entropy, mask, num_seqs, num_tokens)
            metrics["entropy_bonus"] = (pg_loss - loss).detach()
        if not kl_term or ref_logp is None:
            return loss, metrics
        ref_logp = torch.where(keep, ref_logp.detach(), logp.detach())  # [N, T]
        kl = KL_ESTIMATORS[self.kl_estimator](logp, ref_logp)  # [N, T]
        kl_loss = self._aggregate(kl, mask, num_seqs, num_tokens)  # []
        metrics["kl"] = masked_mean(kl.detach(), mask)
        return loss + self.kl_coef * kl_loss, metrics

    def _aggregate(self, values, mask, num_seqs, num_tokens) -> torch.Tensor:
        """``[N, T] -> []`` with this loss's aggregation."""
        return aggregate(values, mask, self.aggregation, self.max_len, num_seqs, num_tokens)  # []

    def _entropy_term(self, logp, entropy, mask, num_seqs, num_tokens) -> torch.Tensor:
        """The aggregated entropy ``[]``; refuses a missing entropy or one computed without gradient."""
        if entropy is None:
            raise ValueError(
                f"algo.entropy_coef={self.entropy_coef} > 0 needs the policy's entropy, got None"
            )
        if logp.requires_grad and not entropy.requires_grad:
            raise ValueError(
                f"algo.entropy_coef={self.entropy_coef} > 0 needs entropy computed with gradient "
                "(a log-prob plan with entropy_grad=True); got a detached entropy"
            )
        entropy = torch.where(mask.bool(), entropy, torch.zeros_like(entropy))  # [N, T]
        return self._aggregate(entropy, mask, num_seqs, num_tokens)  # []
