"""Logged metrics are global: each rank's values combined by their rule, in one collective per step."""

import math

import pytest
import torch

from longact_pl.distributed import LocalOps
from longact_pl.learner import TrainBatch
from longact_pl.metric_reduce import Metric, reduce_metrics
from longact_pl.rollout.types import RolloutBatch
from longact_pl.sampling import ScoredRollout
from longact_pl.step_log import step_metrics
from tests.helpers import FakeOps
from tests.test_learner import ADVANTAGES, GRPO, _learner, _rollouts, _update


def _scored(rewards: list[float], lengths: list[int], group: int = 2) -> ScoredRollout:
    """Rows with these first-round rewards and completion lengths (prompt of 3 tokens each)."""
    n, width = len(rewards), max(lengths)
    completion = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()  # [n, C]
    batch = RolloutBatch(
        input_ids=torch.ones(n, 3 + width, dtype=torch.long),
        attention_mask=torch.cat([torch.ones(n, 3, dtype=torch.long), completion], 1),
        completion_mask=completion, behaviour_logp=torch.zeros(n, width), completions=[""] * n,
        prompt_width=3, group_size=group,
    )  # fmt: skip
    r = torch.tensor(rewards)
    return ScoredRollout(batch, r, r, r, rounds=1, dropped_groups=0)


def _step(scored, truncated=0, seconds=1.0, update=None):
    return step_metrics(scored, truncated, truncated, 0, seconds, 1e-3, update or {})


def test_step_metrics_of_two_ranks_combine_to_the_global_batch():
    a = _step(_scored([1.0, 0.0, 1.0, 1.0], [2, 4, 1, 1]), truncated=1, seconds=2.0)  # rank 0: 2 groups
    b = _step(_scored([0.0, 0.0], [3, 3]), truncated=0, seconds=1.0)  # rank 1: 1 group
    dist = FakeOps(world_size=2, other_gathers=[[(True, b)]])
    got = reduce_metrics(a, dist)
    assert len(dist.gather_calls) == 1  # one collective for every metric
    # one process on the union: rewards [1, 0, 1, 1, 0, 0]
    assert got["train/reward_mean"] == pytest.approx(3 / 6)
    assert got["train/reward_std"] == pytest.approx(0.5)  # sqrt(mean(r^2) - mean(r)^2) = sqrt(1/2 - 1/4)
    assert got["train/accuracy"] == pytest.approx(0.5)
    assert got["train/zero_std_groups"] == pytest.approx(2 / 3)  # groups (1, 0), (1, 1), (0, 0)
    assert got["train/completion_len"] == pytest.approx(14 / 6)
    assert got["train/kept_groups"] == 3 and got["train/truncated_prompts"] == 1
    # tokens/s summed over ranks: rank 0 (4 * 3 + 8) / 2 s, rank 1 (2 * 3 + 6) / 1 s
    assert got["train/tokens_per_s"] == pytest.approx(10.0 + 12.0)
    assert got["train/lr"] == 1e-3


def test_rules_weights_maxima_and_sequence_parallel_duplicates():
    mine = {
        "m": Metric(0.75, "mean", 4), "s": Metric(2, "sum"), "hi": Metric(0.5, "max"),
        "lo": Metric(0.5, "min"), "same": Metric(7.0, "same"), "plain": 1.0,
        "std": Metric(math.sqrt(3 / 16), "std", 4, center=0.75),  # values [1, 0, 1, 1]
    }  # fmt: skip
    other = {
        "m": Metric(0.125, "mean", 8), "s": Metric(3, "sum"), "hi": Metric(2.0, "max"),
        "lo": Metric(-1, "min"), "same": Metric(7.0, "same"), "plain": 3.0,
        "std": Metric(math.sqrt(3 / 16), "std", 4, center=0.25),
        "only_here": Metric(5.0, "mean", 0),  # values [0, 0, 1, 0]; a bucket this rank alone holds
    }  # fmt: skip
    duplicate = {k: Metric(99.0, v.how, 1e6) if isinstance(v, Metric) else 99.0 for k, v in other.items()}
    # 3 ranks: a sequence-parallel peer of the second is not counted (it holds the same rows)
    got = reduce_metrics(mine, FakeOps(world_size=3, other_gathers=[[(True, other), (False, duplicate)]]))
    assert got["m"] == pytest.approx((0.75 * 4 + 0.125 * 8) / 12)  # 1/3, not the mean of the means
    assert got["s"] == 5 and got["hi"] == 2.0 and got["lo"] == -1 and got["same"] == 7.0
    assert got["plain"] == 2.0  # a plain float: unweighted mean over ranks
    assert got["std"] == pytest.approx(0.5)  # of [1, 0, 1, 1, 0, 0, 1, 0]
    assert got["only_here"] == 0.0  # weight 0: nothing averaged
    # one process: each value itself
    assert reduce_metrics(mine, LocalOps())["std"] == pytest.approx(math.sqrt(3 / 16))
    with pytest.raises(ValueError, match="Metric.how"):
        Metric(1.0, "median")


def test_learner_metrics_do_not_depend_on_micro_batching(tiny):
    """Loss terms add up over micro-batches; token means weigh micro-batches by their tokens."""
    model = tiny.model.train()
    ro = _rollouts(model.config.vocab_size)
    algo = GRPO(kl_coef=0.5, entropy_coef=0.01)
    ref = _learner(algo).no_grad_logprobs(model, ro) + 0.3 * ro.completion_mask  # [N, C]
    batch = TrainBatch(ro, ADVANTAGES, ref_logp=ref)
    # the entropy bonus: entropy with its gradient (as LongActModule plans it)
    whole_learner = _learner(algo, micro_batch_size=4, entropy_grad=True)
    micro_learner = _learner(algo, micro_batch_size=1, entropy_grad=True)
    _, whole = _update(whole_learner, model, batch)
    _, micro = _update(micro_learner, model, batch)
    keys = {
        "train/loss",
        "train/pg_loss",
        "train/entropy_bonus",
        "train/entropy",
        "train/kl",
        "train/ratio_mean",
    }
    assert keys <= whole.keys()
    for key in whole:
        assert micro[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key
        assert reduce_metrics(whole, LocalOps())[key] == pytest.approx(whole[key])
