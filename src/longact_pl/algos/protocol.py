"""The interface the trainer uses: reward shaping, advantages, group filtering and the loss."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from longact_pl.algos.aggregation import Number


@runtime_checkable
class Algorithm(Protocol):
    """A group-relative policy-gradient algorithm (GRPO, Dr. GRPO, DAPO, GSPO: ``GroupPolicyGradient``).

    Shapes: N sequences (consecutive G rows form one group), T padded completion length.
    """

    @property
    def kl_coef(self) -> float:
        """KL weight; > 0 means the trainer loads a frozen reference model."""
        ...

    @property
    def entropy_coef(self) -> float:
        """Entropy bonus weight; > 0 means the training pass computes entropy with gradient."""
        ...

    @property
    def dynamic_sampling(self) -> bool:
        """Drop groups with equal rewards and sample more prompts."""
        ...

    @property
    def max_gen_rounds(self) -> int:
        """Cap on generation rounds when dynamic sampling."""
        ...

    def shape_rewards(self, rewards: torch.Tensor, completion_lengths: torch.Tensor) -> torch.Tensor:
        """``[N], [N] -> [N]`` shaped rewards."""
        ...

    def kl_reward(
        self, rewards: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor
    ) -> torch.Tensor:
        """``[N] -> [N]`` rewards with the KL penalty when it is a reward term (else unchanged)."""
        ...

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """``[N] -> [N]`` per-sequence advantages."""
        ...

    def keep_groups(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """``[N] -> bool [N / G]`` groups worth training on."""
        ...

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
        entropy: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss and detached metrics from ``[N, T]`` log-probs and ``[N]`` advantages.

        ``token_weights`` (``[N, T]``, detached) multiplies the per-token policy loss before aggregation;
        ``entropy`` (``[N, T]``, with gradient) feeds the entropy bonus.
        """
        ...
