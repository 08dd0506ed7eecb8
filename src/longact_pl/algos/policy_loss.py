"""The clipped policy-gradient loss with an optional k3 KL penalty, shared by every algorithm."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longact_pl.algos.aggregation import AGGREGATIONS, NEEDS_MAX_LEN, Number, aggregate
from longact_pl.algos.losses import clipped_surrogate, k3_kl, masked_mean


def check_non_negative(name: str, value: float) -> None:
    """Raise ``ValueError("algo.<name> must be >= 0, got <value>")`` for a negative value."""
    if value < 0:
        raise ValueError(f"algo.{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class PolicyLoss:
    """Aggregated clipped surrogate plus ``kl_coef`` times the aggregated k3 KL.

    Attributes:
        eps_low: Lower clip range (ratio floor ``1 - eps_low``), in ``[0, 1)``.
        eps_high: Upper clip range (ratio ceiling ``1 + eps_high``), ``>= 0``.
        kl_coef: Weight of the KL penalty to the reference policy (0 = no reference model).
        aggregation: One of ``longact_pl.algos.aggregation.AGGREGATIONS``.
        max_len: Fixed normaliser for ``seq_mean_token_sum_norm``.
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    kl_coef: float = 0.0
    aggregation: str = "seq_mean_token_mean"
    max_len: int | None = None

    def __post_init__(self) -> None:
        """Validate the fields; errors name the config field (``algo.<field>``)."""
        check_non_negative("eps_low", self.eps_low)
        if self.eps_low >= 1:
            raise ValueError(f"algo.eps_low must be < 1 (ratio floor 1 - eps_low > 0), got {self.eps_low}")
        check_non_negative("eps_high", self.eps_high)
        check_non_negative("kl_coef", self.kl_coef)
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"algo.aggregation must be one of {sorted(AGGREGATIONS)}, got {self.aggregation!r}"
            )
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
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss and detached metrics for one (micro-)batch.

        Gradient flows through ``logp`` only; ``old_logp``, ``ref_logp`` and ``advantages`` are detached.

        Args:
            logp: ``[N, T]`` current policy log-probs.
            old_logp: ``[N, T]`` behaviour-policy log-probs.
            ref_logp: ``[N, T]`` reference log-probs, or None when ``kl_coef == 0``.
            advantages: ``[N]`` per-sequence advantages.
            mask: ``[N, T]`` float or bool (1 = real completion token).
            num_seqs: Sequences in the whole mini-batch (for gradient accumulation; default local).
            num_tokens: Valid tokens in the whole mini-batch (default local).
            token_weights: ``[N, T]`` detached per-token weights multiplying the clipped surrogate before
                aggregation (e.g. truncated importance sampling for rollout/train mismatch); ``None`` = 1.
                The KL term is not weighted.

        Returns:
            ``(loss, metrics)``; metrics: ``pg_loss``, ``clip_frac_low``, ``clip_frac_high``, ``ratio_mean``
            and, when ``ref_logp`` is given, ``kl`` (masked mean of k3).

        Raises:
            ValueError: If ``kl_coef > 0`` and ``ref_logp`` is None.
        """
        if self.kl_coef > 0 and ref_logp is None:
            raise ValueError(f"algo.kl_coef={self.kl_coef} > 0 needs reference log-probs, got ref_logp=None")
        keep = mask.bool()  # [N, T]
        # padded positions get ratio 1 and KL 0, so garbage there cannot reach the gradient as 0 * inf
        old_logp = torch.where(keep, old_logp.detach(), logp.detach())  # [N, T]
        advantages = advantages.detach().to(logp.dtype)  # [N]
        surrogate, low, high = clipped_surrogate(
            logp, old_logp, advantages, self.eps_low, self.eps_high
        )  # [N, T]
        if token_weights is not None:  # padded positions get weight 1: no inf/NaN can reach the gradient
            weights = torch.where(keep, token_weights.detach().to(surrogate.dtype), 1.0)  # [N, T]
            surrogate = surrogate * weights  # [N, T]
        pg_loss = aggregate(surrogate, mask, self.aggregation, self.max_len, num_seqs, num_tokens)  # []
        ratio = (logp.detach() - old_logp).exp()  # [N, T]
        metrics = {
            "pg_loss": pg_loss.detach(),
            "clip_frac_low": masked_mean(low, mask),
            "clip_frac_high": masked_mean(high, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
        if ref_logp is None:
            return pg_loss, metrics
        ref_logp = torch.where(keep, ref_logp.detach(), logp.detach())  # [N, T]
        kl = k3_kl(logp, ref_logp)  # [N, T]
        kl_loss = aggregate(kl, mask, self.aggregation, self.max_len, num_seqs, num_tokens)  # []
        metrics["kl"] = masked_mean(kl.detach(), mask)
        return pg_loss + self.kl_coef * kl_loss, metrics
