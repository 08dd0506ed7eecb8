"""One group-relative policy-gradient algorithm; GRPO, Dr. GRPO, DAPO and GSPO are its settings.

The presets live in ``conf/algo/*.yaml``:

* GRPO (Shao et al., 2024): std-scaled advantages, symmetric clip 0.2, k3 KL loss 0.04, seq-mean-token-mean.
* Dr. GRPO (Liu et al., 2025): centred advantages, token sums over a fixed length, no KL.
* DAPO (Yu et al., 2025): clip-higher (0.2 / 0.28), token mean, dynamic sampling, soft overlong penalty.
* GSPO (Zheng et al., 2025): sequence-level ratio (geometric mean), clip 3e-4 / 4e-4, seq-mean-token-mean.

A new policy loss or advantage estimator is a class in ``surrogates.py`` / ``advantages.py`` and a preset
naming it (``docs/extending.md``); nothing here changes.
"""

from __future__ import annotations

import torch

from longact_pl.algos.advantages import AdvantageEstimator, GroupNormalized, dynamic_sampling_keep
from longact_pl.algos.aggregation import Number
from longact_pl.algos.kl import sequence_kl
from longact_pl.algos.policy_loss import PolicyLoss, check_non_negative
from longact_pl.algos.shaping import overlong_penalty
from longact_pl.algos.surrogates import Surrogate, TokenClip


class GroupPolicyGradient:
    """Reward shaping, group-relative advantages, group filtering and the policy loss, all by settings.

    The two parts that differ in kind are objects chosen by ``_target_``: ``surrogate`` (the per-token
    policy loss) and ``advantage`` (the estimator); the rest are numbers and names.

    Args:
        eps_low: Lower clip range, in ``[0, 1)``.
        eps_high: Upper clip range, ``>= 0``.
        kl_coef: KL weight to the frozen reference policy (0 = no reference model).
        kl_estimator: ``k1``, ``k2``, ``k3`` = ``low_var_kl`` (the clamped k3, as verl names them).
        kl_in_reward: Subtract ``kl_coef * sum_t KL_t`` from each sequence's reward before advantages
            (verl's ``use_kl_in_reward``) instead of adding the KL to the loss.
        aggregation: Loss aggregation (see ``longact_pl.algos.aggregation.AGGREGATIONS``).
        max_len: Normaliser for ``seq_mean_token_sum_norm`` (unused otherwise).
        surrogate: Per-token policy loss: ``TokenClip()`` (default; PPO ratio per token) or ``SequenceClip()``
            (GSPO), see ``longact_pl.algos.surrogates``.
        entropy_coef: Entropy bonus weight (0 = off).
        advantage: Advantage estimator: ``GroupNormalized()`` (default; GRPO) or ``GroupCentered()`` (Dr.
            GRPO), see ``longact_pl.algos.advantages``.
        dynamic_sampling: Drop groups with equal rewards and sample more prompts (DAPO).
        max_gen_rounds: Cap on generation rounds when dynamic sampling, ``>= 1``.
        overlong_penalty_coef: Weight of DAPO's soft overlong penalty added to the reward (0 = off).
        overlong_max_len: Generation budget the overlong penalty is measured against.
        overlong_cache_len: Soft-penalty window before ``overlong_max_len``, in ``[1, overlong_max_len]``.
        name: The preset's name (``conf/algo`` option), shown in logs and reports.
    """

    def __init__(
        self,
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        kl_coef: float = 0.0,
        kl_estimator: str = "k3",
        kl_in_reward: bool = False,
        aggregation: str = "seq_mean_token_mean",
        max_len: int | None = None,
        surrogate: Surrogate | None = None,
        entropy_coef: float = 0.0,
        advantage: AdvantageEstimator | None = None,
        dynamic_sampling: bool = False,
        max_gen_rounds: int = 1,
        overlong_penalty_coef: float = 0.0,
        overlong_max_len: int | None = None,
        overlong_cache_len: int | None = None,
        name: str = "custom",
    ) -> None:
        self.policy_loss = PolicyLoss(
            eps_low, eps_high, kl_coef, aggregation, max_len,
            surrogate if surrogate is not None else TokenClip(), kl_estimator, kl_in_reward, entropy_coef,
        )  # fmt: skip
        if max_gen_rounds < 1:
            raise ValueError(f"algo.max_gen_rounds must be >= 1, got {max_gen_rounds}")
        check_non_negative("overlong_penalty_coef", overlong_penalty_coef)
        if overlong_penalty_coef > 0:  # the window only matters with the penalty on
            _check_overlong(overlong_max_len, overlong_cache_len)
        self.advantage = advantage if advantage is not None else GroupNormalized()
        if not callable(self.advantage):
            raise ValueError(
                f"algo.advantage must be an AdvantageEstimator (a _target_ node), got {advantage!r}"
            )
        self.dynamic_sampling = dynamic_sampling
        self.max_gen_rounds = max_gen_rounds
        self.overlong_penalty_coef = overlong_penalty_coef
        self.overlong_max_len = overlong_max_len
        self.overlong_cache_len = overlong_cache_len
        self.name = name

    @property
    def kl_coef(self) -> float:
        """KL weight; > 0 means the trainer loads a reference model."""
        return self.policy_loss.kl_coef

    @property
    def entropy_coef(self) -> float:
        """Entropy bonus weight; > 0 means the training pass computes entropy with gradient."""
        return self.policy_loss.entropy_coef

    def shape_rewards(self, rewards: torch.Tensor, completion_lengths: torch.Tensor) -> torch.Tensor:
        """``[N], [N] -> [N]``: rewards plus the weighted soft overlong penalty (when on)."""
        if self.overlong_penalty_coef == 0:
            return rewards  # [N]
        penalty = overlong_penalty(completion_lengths, self.overlong_max_len, self.overlong_cache_len)  # [N]
        return rewards + self.overlong_penalty_coef * penalty.to(rewards.device, rewards.dtype)  # [N]

    def kl_reward(
        self, rewards: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor
    ) -> torch.Tensor:
        """``[N] -> [N]``: with ``kl_in_reward``, ``r - kl_coef * sum_t KL_t`` (else ``rewards`` unchanged).

        Args:
            rewards: ``[N]`` shaped rewards.
            logp: ``[N, T]`` log-probs of the sampled tokens under the policy that sampled them.
            ref_logp: ``[N, T]`` reference log-probs (``None`` when there is no reference model).
            mask: ``[N, T]`` completion mask.
        """
        if not self.policy_loss.kl_in_reward or self.kl_coef == 0:
            return rewards  # [N]
        if ref_logp is None:
            raise ValueError(f"algo.kl_in_reward with kl_coef={self.kl_coef} needs reference log-probs")
        logp = logp.detach().to(ref_logp.device)  # [N, T]
        kl = sequence_kl(
            logp, ref_logp.detach(), mask.to(ref_logp.device), self.policy_loss.kl_estimator
        )  # [N]
        return rewards - self.kl_coef * kl.to(rewards.device, rewards.dtype)  # [N]

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """``[N] -> [N]`` group-relative advantages from ``algo.advantage``."""
        return self.advantage(rewards, group_size)  # [N]

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
        entropy: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """See ``PolicyLoss.__call__``."""
        return self.policy_loss(
            logp, old_logp, ref_logp, advantages, mask, num_seqs, num_tokens, token_weights, entropy
        )

    def __repr__(self) -> str:
        """Readable summary for logs."""
        return (
            f"GroupPolicyGradient[{self.name}]({self.policy_loss}, advantage={self.advantage}, "
            f"dynamic_sampling={self.dynamic_sampling}, max_gen_rounds={self.max_gen_rounds}, "
            f"overlong=({self.overlong_max_len}, {self.overlong_cache_len}, "
            f"coef={self.overlong_penalty_coef}))"
        )


def _check_overlong(max_len: int | None, cache_len: int | None) -> None:
    """Validate DAPO's overlong window; errors name ``algo.overlong_*``."""
    if max_len is None or max_len < 1:
        raise ValueError(
            f"algo.overlong_max_len must be an int >= 1 with the overlong penalty, got {max_len}"
        )
    if cache_len is None or not 1 <= cache_len <= max_len:
        raise ValueError(
            f"algo.overlong_cache_len must be in [1, overlong_max_len={max_len}], got {cache_len}"
        )
