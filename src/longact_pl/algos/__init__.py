"""RL algorithms: one group-relative policy-gradient class built from pure loss, advantage and shaping terms.

GRPO, Dr. GRPO, DAPO and GSPO are settings of :class:`GroupPolicyGradient` (``conf/algo/*.yaml``); the policy
loss (``surrogates.py``) and the advantage estimator (``advantages.py``) are classes chosen by ``_target_``.
"""

from longact_pl.algos.advantages import (
    AdvantageEstimator,
    GroupCentered,
    GroupNormalized,
    dynamic_sampling_keep,
    group_advantages,
)
from longact_pl.algos.aggregation import (
    AGGREGATIONS,
    aggregate,
    seq_mean_token_mean,
    seq_mean_token_sum_norm,
    token_mean,
)
from longact_pl.algos.algorithm import GroupPolicyGradient
from longact_pl.algos.kl import KL_ESTIMATORS, k3_kl
from longact_pl.algos.losses import clipped_surrogate, masked_mean, sequence_clipped_surrogate
from longact_pl.algos.policy_loss import PolicyLoss
from longact_pl.algos.protocol import Algorithm
from longact_pl.algos.shaping import overlong_penalty
from longact_pl.algos.surrogates import SequenceClip, Surrogate, TokenClip

__all__ = [
    "AGGREGATIONS",
    "AdvantageEstimator",
    "GroupCentered",
    "GroupNormalized",
    "SequenceClip",
    "Surrogate",
    "TokenClip",
    "KL_ESTIMATORS",
    "Algorithm",
    "GroupPolicyGradient",
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
    "sequence_clipped_surrogate",
    "token_mean",
]
