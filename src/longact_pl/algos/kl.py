"""Per-token estimators of ``KL(policy || ref)`` from sampled tokens, chosen by name (pure functions).

With ``d = ref_logp - logp`` (tokens sampled from the policy), following Schulman's "Approximating KL
divergence" (2020). Every name means what it means in verl's ``kl_penalty`` (``core_algos.py``), where
``k3`` and ``low_var_kl`` are one estimator, clamped, so that a copied ``kl_loss_type`` gives the same loss:

* ``k1`` (verl also ``kl``): ``-d``; unbiased, high variance, can be negative.
* ``k2`` (verl also ``mse``): ``d^2 / 2``; biased, low variance; its gradient is the one of the true KL.
* ``abs``: ``|d|`` (verl's).
* ``k3`` = ``low_var_kl`` (GRPO's estimator, the default): ``exp(d) - d - 1`` with ``d`` clamped to
  ``[-20, 20]`` and the result to ``[-10, 10]``: finite for any log-ratio (unclamped, ``exp(d)`` is inf in
  fp32 from ``d > 88.7`` and the loss then NaN); identical to the unclamped k3 while it is below 10.
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
    """Per-token k3 estimate of ``KL(policy || ref)`` as verl's ``k3`` / ``low_var_kl``: finite for any input.

    ``exp(d) - d - 1`` with ``d = clamp(ref_logp - logp, -20, 20)``, then clamped to ``[-10, 10]``: the
    unbiased, ``>= 0`` k3 wherever it is below 10; a token past either clamp contributes 10 and no gradient.

    Args:
        logp: ``[N, T]`` policy log-probs of the sampled tokens.
        ref_logp: ``[N, T]`` reference-model log-probs of the same tokens.

    Returns:
        ``[N, T]`` KL estimates in ``[0, 10]``.
    """
    d = (ref_logp - logp).clamp(min=-20.0, max=20.0)  # [N, T]
    return (d.exp() - d - 1.0).clamp(min=-10.0, max=10.0)  # [N, T]


low_var_kl = k3_kl  # verl's other name of the same estimator


def abs_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``[N, T], [N, T] -> [N, T]``: ``|logp - ref_logp|`` (verl's ``abs``)."""
    return (logp - ref_logp).abs()  # [N, T]


KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# name (the algo.kl_estimator value, verl's kl_loss_type names) -> (logp [N, T], ref_logp [N, T]) -> [N, T]
KL_ESTIMATORS: dict[str, KLEstimator] = {
    "k1": k1_kl, "kl": k1_kl, "k2": k2_kl, "mse": k2_kl, "k3": k3_kl, "low_var_kl": low_var_kl, "abs": abs_kl,
}  # fmt: skip


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
