"""Token-level loss terms: clipped policy-gradient surrogate, k3 KL, masked mean (pure functions)."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is set; 0 (not NaN) when the mask is empty.

    Values at masked-out positions are ignored even if they are inf or NaN.

    Args:
        x: ``[...]`` values (float or bool).
        mask: ``[...]`` same shape, float or bool (1 = count this position).

    Returns:
        Scalar tensor.
    """
    keep = mask.bool()  # [...]
    values = x.float() if not x.is_floating_point() else x  # [...]
    total = torch.where(keep, values, torch.zeros_like(values)).sum()  # []
    return total / keep.sum().clamp(min=1)  # []


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of ``KL(policy || ref)``: ``exp(d) - d - 1`` with ``d = ref_logp - logp``.

    Unbiased for samples drawn from the policy and always ``>= 0``.

    Args:
        logp: ``[N, T]`` policy log-probs of the sampled tokens.
        ref_logp: ``[N, T]`` reference-model log-probs of the same tokens.

    Returns:
        ``[N, T]`` non-negative KL estimates.
    """
    d = ref_logp - logp  # [N, T]
    return d.exp() - d - 1.0  # [N, T]


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate with asymmetric clipping (DAPO's clip-higher).

    ``ratio = exp(logp - old_logp)``; ``loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)``.
    The clipped branch (zero gradient) is active where ``A > 0`` and ``ratio > 1 + eps_high`` ("high")
    or ``A < 0`` and ``ratio < 1 - eps_low`` ("low").

    Args:
        logp: ``[N, T]`` current policy log-probs (carries the gradient).
        old_logp: ``[N, T]`` behaviour-policy log-probs.
        advantages: ``[N]`` one advantage per sequence, broadcast over its tokens.
        eps_low: Lower clip range (ratio floor ``1 - eps_low``).
        eps_high: Upper clip range (ratio ceiling ``1 + eps_high``).

    Returns:
        ``(loss [N, T], is_clipped_low bool [N, T], is_clipped_high bool [N, T])``.
    """
    adv = advantages.unsqueeze(-1)  # [N, 1]
    ratio = (logp - old_logp).exp()  # [N, T]
    unclipped = ratio * adv  # [N, T]
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv  # [N, T]
    loss = -torch.minimum(unclipped, clipped)  # [N, T]
    is_clipped_low = (adv < 0) & (ratio < 1.0 - eps_low)  # [N, T]
    is_clipped_high = (adv > 0) & (ratio > 1.0 + eps_high)  # [N, T]
    return loss, is_clipped_low, is_clipped_high
