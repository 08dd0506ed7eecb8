"""DAPO: clip-higher, token-level mean, dynamic sampling and soft overlong punishment."""

from __future__ import annotations

import torch

from longact_pl.algos.advantages import dynamic_sampling_keep, group_advantages
from longact_pl.algos.aggregation import Number
from longact_pl.algos.policy_loss import PolicyLoss, check_non_negative
from longact_pl.algos.shaping import overlong_penalty


class DAPO:
    """Decoupled Clip and Dynamic sAmpling Policy Optimization (Yu et al., 2025)."""

    def __init__(
        self,
        overlong_max_len: int,
        overlong_cache_len: int,
        eps_low: float = 0.2,
        eps_high: float = 0.28,
        kl_coef: float = 0.0,
        aggregation: str = "token_mean",
        dynamic_sampling: bool = True,
        max_gen_rounds: int = 3,
        overlong_penalty_coef: float = 1.0,
        scale_by_std: bool = True,
    ) -> None:
        """Build the algorithm.

        Args:
            overlong_max_len: Generation budget the overlong penalty is measured against.
            overlong_cache_len: Soft-penalty window before ``overlong_max_len``, in ``[1, overlong_max_len]``.
            eps_low: Lower clip range, in ``[0, 1)``.
            eps_high: Upper clip range (clip-higher), ``>= 0``.
            kl_coef: KL weight to the frozen reference policy (0 = no reference model).
            aggregation: Loss aggregation (see ``longact_pl.algos.aggregation.AGGREGATIONS``).
            dynamic_sampling: Drop groups with equal rewards and sample more prompts.
            max_gen_rounds: Cap on generation rounds when dynamic sampling, ``>= 1``.
            overlong_penalty_coef: Weight of the overlong penalty added to the reward (0 = off).
            scale_by_std: Divide centred group rewards by the group std.
        """
        self.policy_loss = PolicyLoss(eps_low, eps_high, kl_coef, aggregation, overlong_max_len)
        if max_gen_rounds < 1:
            raise ValueError(f"algo.max_gen_rounds must be >= 1, got {max_gen_rounds}")
        if overlong_max_len < 1:
            raise ValueError(f"algo.overlong_max_len must be >= 1, got {overlong_max_len}")
        if not 1 <= overlong_cache_len <= overlong_max_len:
            raise ValueError(
                f"algo.overlong_cache_len must be in [1, overlong_max_len={overlong_max_len}], "
                f"got {overlong_cache_len}"
            )
        check_non_negative("overlong_penalty_coef", overlong_penalty_coef)
        self.dynamic_sampling = dynamic_sampling
        self.max_gen_rounds = max_gen_rounds
        self.overlong_max_len = overlong_max_len
        self.overlong_cache_len = overlong_cache_len
        self.overlong_penalty_coef = overlong_penalty_coef
        self.scale_by_std = scale_by_std

    @property
    def kl_coef(self) -> float:
        """KL weight; > 0 means the trainer loads a reference model."""
        return self.policy_loss.kl_coef

    def shape_rewards(self, rewards: torch.Tensor, completion_lengths: torch.Tensor) -> torch.Tensor:
        """``[N], [N] -> [N]``: rewards plus the weighted soft overlong penalty."""
        penalty = overlong_penalty(completion_lengths, self.overlong_max_len, self.overlong_cache_len)  # [N]
        return rewards + self.overlong_penalty_coef * penalty.to(rewards.device, rewards.dtype)  # [N]

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
        return (
            f"DAPO({self.policy_loss}, dynamic_sampling={self.dynamic_sampling}, "
            f"max_gen_rounds={self.max_gen_rounds}, overlong=({self.overlong_max_len}, "
            f"{self.overlong_cache_len}, coef={self.overlong_penalty_coef}))"
        )
