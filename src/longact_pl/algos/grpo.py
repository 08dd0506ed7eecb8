"""GRPO: std-normalised group advantages, symmetric clipping, k3 KL, sequence-then-token mean."""

from __future__ import annotations

import torch

from longact_pl.algos.advantages import dynamic_sampling_keep, group_advantages
from longact_pl.algos.aggregation import Number
from longact_pl.algos.policy_loss import PolicyLoss


class GRPO:
    """Group Relative Policy Optimization (Shao et al., 2024)."""

    # GRPO trains on every group, in one generation round
    dynamic_sampling: bool = False
    max_gen_rounds: int = 1

    def __init__(
        self,
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        kl_coef: float = 0.04,
        aggregation: str = "seq_mean_token_mean",
        scale_by_std: bool = True,
        max_len: int | None = None,
    ) -> None:
        """Build the algorithm.

        Args:
            eps_low: Lower clip range, in ``[0, 1)``.
            eps_high: Upper clip range, ``>= 0``.
            kl_coef: KL weight to the frozen reference policy (0 = no reference model).
            aggregation: Loss aggregation (see ``longact_pl.algos.aggregation.AGGREGATIONS``).
            scale_by_std: Divide centred group rewards by the group std.
            max_len: Normaliser for ``seq_mean_token_sum_norm`` (unused otherwise).
        """
        self.policy_loss = PolicyLoss(eps_low, eps_high, kl_coef, aggregation, max_len)
        self.scale_by_std = scale_by_std

    @property
    def kl_coef(self) -> float:
        """KL weight; > 0 means the trainer loads a reference model."""
        return self.policy_loss.kl_coef

    def shape_rewards(self, rewards: torch.Tensor, completion_lengths: torch.Tensor) -> torch.Tensor:
        """No shaping: ``[N] -> [N]``."""
        return rewards  # [N]

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """``[N] -> [N]`` group-relative advantages."""
        return group_advantages(rewards, group_size, scale_by_std=self.scale_by_std)  # [N]

    def keep_groups(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """``[N] -> bool [N / G]``: groups whose rewards differ."""
        return dynamic_sampling_keep(rewards, group_size)  # [N / G]

    def loss(
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
        """See ``PolicyLoss.__call__``."""
        return self.policy_loss(
            logp, old_logp, ref_logp, advantages, mask, num_seqs, num_tokens, token_weights
        )

    def __repr__(self) -> str:
        """Readable summary for logs."""
        return f"GRPO({self.policy_loss}, scale_by_std={self.scale_by_std})"
