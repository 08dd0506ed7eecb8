"""Policy-gradient loss terms: token- and sequence-level (GSPO) clipped surrogates, masked mean (pure)."""

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
    ratio = (logp - old_logp).exp()  # [N, T]
    return _clip(ratio, advantages, eps_low, eps_high)


def sequence_clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GSPO's clipped surrogate (Zheng et al., 2025): one ratio per sequence, clipped at sequence level.

    ``s_i = exp(mean_t (logp - old_logp))`` over the row's valid tokens (the geometric mean of its token
    ratios). Written per token as in GSPO-token / verl: ``s_it = sg[s_i] * exp(logp_t - sg[logp_t])``, whose
    value is ``s_i`` and whose gradient w.r.t. ``logp_t`` is ``s_i``; the log-ratio is clamped at 10 (verl).
    ``loss = -min(s * A, clip(s, 1 - eps_low, 1 + eps_high) * A)`` on every valid token of the row.

    Args:
        logp: ``[N, T]`` current policy log-probs (carries the gradient).
        old_logp: ``[N, T]`` behaviour-policy log-probs (equal to ``logp`` at padded positions).
        advantages: ``[N]`` one advantage per sequence.
        mask: ``[N, T]`` float or bool (1 = real completion token).
        eps_low: Lower clip range (GSPO: 3e-4).
        eps_high: Upper clip range (GSPO: 4e-4).

    Returns:
        ``(loss [N, T], is_clipped_low bool [N, T], is_clipped_high bool [N, T])``; the flags are per
        sequence, broadcast over its tokens.
    """
    keep = mask.bool()  # [N, T]
    log_ratio = torch.where(keep, logp.detach() - old_logp, torch.zeros_like(logp))  # [N, T]
    seq_log_ratio = log_ratio.sum(-1) / keep.sum(-1).clamp(min=1)  # [N]
    log_s = logp - logp.detach() + seq_log_ratio.unsqueeze(-1)  # [N, T]
    return _clip(log_s.clamp(max=10.0).exp(), advantages, eps_low, eps_high)


def _clip(
    ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``-min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)`` and the clipped-branch flags, ``[N, T]``."""
    adv = advantages.unsqueeze(-1)  # [N, 1]
    unclipped = ratio * adv  # [N, T]
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv  # [N, T]
    loss = -torch.minimum(unclipped, clipped)  # [N, T]
    is_clipped_low = (adv < 0) & (ratio < 1.0 - eps_low)  # [N, T]
    is_clipped_high = (adv > 0) & (ratio > 1.0 + eps_high)  # [N, T]
    return loss, is_clipped_low, is_clipped_high
