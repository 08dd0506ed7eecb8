"""Truncated importance sampling (TIS) for the rollout/train mismatch of an external sampler (vLLM).

The sampler's numerics (bf16, other kernels) make its token probabilities ``pi_engine`` differ from the
trainer's ``pi_train`` for the same weights, so the rollouts are slightly off-policy. Each token's policy
loss is weighted by ``min(pi_train_old / pi_engine, cap)`` (detached); the cap bounds the variance.
"""

from __future__ import annotations

import torch

from longact_pl.algos.losses import masked_mean


@torch.no_grad()
def truncated_is_weights(
    train_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token TIS weights and their metrics.

    Args:
        train_logp: ``[N, T]`` trainer log-probs of the sampled tokens before this step's updates.
        behaviour_logp: ``[N, T]`` the sampler's log-probs of the same tokens.
        mask: ``[N, T]`` float or bool (1 = real completion token).
        cap: Upper bound of the weight (> 0).

    Returns:
        ``(weights [N, T], metrics)``: weights are 1 at padded positions; metrics ``tis_ratio_mean`` (masked
        mean of the uncapped ratio) and ``tis_capped_frac`` (share of tokens whose ratio exceeds ``cap``).
    """
    keep = mask.bool()  # [N, T]
    log_ratio = torch.where(keep, train_logp.float() - behaviour_logp.float(), 0.0)  # [N, T]
    ratio = log_ratio.exp()  # [N, T]
    weights = ratio.clamp(max=cap)  # [N, T]
    metrics = {"tis_ratio_mean": masked_mean(ratio, keep), "tis_capped_frac": masked_mean(ratio > cap, keep)}
    return weights, metrics
