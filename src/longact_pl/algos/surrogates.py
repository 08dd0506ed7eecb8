"""Policy losses: the per-token policy-gradient term of the loss, one class per kind, chosen by ``_target_``.

A surrogate turns log-probs and advantages into a per-token loss ``[N, T]`` (before aggregation) and the
flags of its clipped branches; :class:`~longact_pl.algos.policy_loss.PolicyLoss` weighs it (rollout
correction), aggregates it and adds the KL and entropy terms, the same for every surrogate. The class sits in
``algo.surrogate`` (``conf/algo/*.yaml``); a new policy loss is a new class with this ``__call__`` plus a
preset naming it (``docs/extending.md``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from longact_pl.algos.losses import clipped_surrogate, sequence_clipped_surrogate


@runtime_checkable
class Surrogate(Protocol):
    """The per-token policy-gradient loss of one (micro-)batch."""

    def __call__(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        eps_low: float,
        eps_high: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token loss and clipped-branch flags.

        Args:
            logp: ``[N, T]`` current policy log-probs (carries the gradient).
            old_logp: ``[N, T]`` detached behaviour-policy log-probs (equal to ``logp`` at padding).
            advantages: ``[N]`` detached per-sequence advantages, in ``logp``'s dtype.
            mask: ``bool [N, T]`` real completion tokens.
            eps_low: ``algo.eps_low``, the lower clip range.
            eps_high: ``algo.eps_high``, the upper clip range.

        Returns:
            ``(loss [N, T], clipped_low bool [N, T], clipped_high bool [N, T])``; the flags feed the
            ``clip_frac_low`` / ``clip_frac_high`` metrics (all False for a surrogate that never clips).
        """
        ...


class TokenClip:
    """PPO's clipped surrogate with one ratio per token (GRPO, Dr. GRPO, DAPO's clip-higher).

    ``loss_t = -min(r_t * A, clip(r_t, 1 - eps_low, 1 + eps_high) * A)``, ``r_t = exp(logp_t - old_logp_t)``.
    """

    def __call__(self, logp, old_logp, advantages, mask, eps_low, eps_high):
        """See :class:`Surrogate`."""
        return clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)  # [N, T] x 3

    def __repr__(self) -> str:
        """Class name, for logs."""
        return "TokenClip()"


class SequenceClip:
    """GSPO (Zheng et al., 2025): one ratio per sequence, the geometric mean of its token ratios, clipped.

    See :func:`~longact_pl.algos.losses.sequence_clipped_surrogate`.
    """

    def __call__(self, logp, old_logp, advantages, mask, eps_low, eps_high):
        """See :class:`Surrogate`."""
        return sequence_clipped_surrogate(logp, old_logp, advantages, mask, eps_low, eps_high)  # [N, T] x 3

    def __repr__(self) -> str:
        """Class name, for logs."""
        return "SequenceClip()"
