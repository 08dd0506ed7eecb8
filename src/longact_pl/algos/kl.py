"""Per-token estimators of ``KL(policy || ref)`` from sampled tokens, chosen by name (pure functions).

With ``d = ref_logp - logp`` (tokens sampled from the policy), following Schulman's "Approximating KL
divergence" (2020) and verl's ``kl_penalty``:

* ``k1``: ``-d``; unbiased, high variance, can be negative.
* ``k2``: ``d^2 / 2``; biased, low variance; its gradient is the one of the true KL.
* ``k3``: ``exp(d) - d - 1``; unbiased, low variance, always ``>= 0`` (GRPO's estimator).
* ``low_var_kl``: k3 with ``d`` clamped to ``[-20, 20]`` and the result to ``[-10, 10]`` (verl's name).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def k1_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``[N, T], [N, T] -> [N, T]``: ``logp - ref_logp``."""
    return logp - ref_logp  # [N, T]


def k2_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``[N, T], [N, T] -> [N, T]``: ``(logp - ref_logp)^2 / 2``."""
    return 0.5 * (logp - ref_logp).square()  # [N, T]


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


def low_var_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 with ``d`` clamped to ``[-20, 20]`` and the estimate to ``[-10, 10]`` (verl's ``low_var_kl``)."""
    d = (ref_logp - logp).clamp(min=-20.0, max=20.0)  # [N, T]
    return (d.exp() - d - 1.0).clamp(min=-10.0, max=10.0)  # [N, T]


KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# name (the algo.kl_estimator value) -> (logp [N, T], ref_logp [N, T]) -> [N, T]
KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": k1_kl, "k2": k2_kl, "k3": k3_kl, "low_var_kl": low_var_kl}


def sequence_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, estimator: str
) -> torch.Tensor:
    """Per-sequence KL: the named estimator summed over each row's valid tokens (the KL-in-reward penalty).

    Args:
        logp: ``[N, T]`` policy log-probs of the sampled tokens.
        ref_logp: ``[N, T]`` reference log-probs of the same tokens.
        mask: ``[N, T]`` float or bool (1 = real completion token).
        estimator: One of ``KL_ESTIMATORS``.

    Returns:
        ``[N]`` sums (0 for a row without valid tokens; garbage at padded positions is ignored).
    """
    keep = mask.bool()  # [N, T]
    kl = KL_ESTIMATORS[estimator](logp.float(), ref_logp.float())  # [N, T]
    return torch.where(keep, kl, torch.zeros_like(kl)).sum(-1)  # [N]
