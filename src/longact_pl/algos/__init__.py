"""RL algorithms (GRPO, DAPO, Dr. GRPO) built from pure loss, advantage and shaping functions."""

from longact_pl.algos.advantages import dynamic_sampling_keep, group_advantages
from longact_pl.algos.aggregation import (
    AGGREGATIONS,
    aggregate,
    seq_mean_token_mean,
    seq_mean_token_sum_norm,
    token_mean,
)
from longact_pl.algos.dapo import DAPO
from longact_pl.algos.dr_grpo import DrGRPO
from longact_pl.algos.grpo import GRPO
from longact_pl.algos.losses import clipped_surrogate, k3_kl, masked_mean
from longact_pl.algos.policy_loss import PolicyLoss
from longact_pl.algos.protocol import Algorithm
from longact_pl.algos.shaping import overlong_penalty

__all__ = [
    "AGGREGATIONS",
    "DAPO",
    "GRPO",
    "Algorithm",
    "DrGRPO",
    "PolicyLoss",
    "aggregate",
    "clipped_surrogate",
    "dynamic_sampling_keep",
    "group_advantages",
    "k3_kl",
    "masked_mean",
    "overlong_penalty",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
    "token_mean",
]
