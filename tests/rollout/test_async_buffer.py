"""Version-tagged rollouts (pure): partial-rollout bookkeeping, lag checks, staleness metrics, settings."""

import pytest
import torch

from longact_pl.algos.algorithm import GroupPolicyGradient
from longact_pl.algos.correction import RolloutCorrection
from longact_pl.algos.correction_weights import TokenRatio
from longact_pl.rollout.async_buffer import (
    PartialRollouts,
    StalenessError,
    VersionedRollout,
    check_lag,
    staleness_metrics,
)
from longact_pl.rollout.async_loop import AsyncSettings, check_async
from longact_pl.rollout.hf import HFRollout
from longact_pl.rollout.types import RolloutBatch

EOS = 2


def _round(new: list[list[int]], width: int = 3) -> RolloutBatch:
    """A round's output: one row per list of new tokens (prompt width 1), log-prob -0.1 * token."""
    n = len(new)
    comp = torch.zeros(n, width, dtype=torch.long)  # [n, C]
    mask = torch.zeros(n, width, dtype=torch.long)  # [n, C]
    for i, toks in enumerate(new):
        comp[i, : len(toks)] = torch.tensor(toks)
        mask[i, : len(toks)] = 1
    return RolloutBatch(
        input_ids=torch.cat([torch.ones(n, 1, dtype=torch.long), comp], 1),
        attention_mask=torch.cat([torch.ones(n, 1, dtype=torch.long), mask], 1),
        completion_mask=mask,
        behaviour_logp=-0.1 * comp.float() * mask,
        completions=[""] * n,
        prompt_width=1,
        group_size=1,
    )


def test_partial_rollouts_keep_each_tokens_version_and_logprob():
    state = PartialRollouts([[5, 6], [7]], group_size=2, budget=5, eos_ids=[EOS])
    state.add_round([0, 1, 2, 3], _round([[10, 11], [12, EOS], [13, 14], [15, 16]], width=2), version=3)
    assert state.running() == [0, 2, 3]  # row 1 stopped at its EOS
    assert state.row_prompt(2) == [7, 13, 14]  # group 1's prompt + its tokens so far
    state.add_round([0, 2, 3], _round([[20, 21], [EOS], [22, 23]], width=2), version=4)
    assert state.running() == [0, 3]
    state.add_round([0, 3], _round([[30], [31]], width=1), version=5)  # the budget of 5 is reached
    assert state.running() == []
    tokens, logps, versions, lengths = state.finish()
    assert lengths.tolist() == [5, 2, 3, 5]
    assert tokens[0].tolist() == [10, 11, 20, 21, 30]
    assert versions[0].tolist() == [3, 3, 4, 4, 5]
    assert versions[1].tolist() == [3, 3, -1, -1, -1]
    assert versions[2].tolist() == [3, 3, 4, -1, -1]
    assert torch.allclose(logps[3], torch.tensor([-1.5, -1.6, -2.2, -2.3, -3.1]))


def test_staleness_metrics_by_hand():
    versions = torch.tensor([[4, 4, 5, -1], [5, 5, -1, -1], [3, 3, 3, 3]])  # [N, C]
    mask = (versions >= 0).long()
    m = staleness_metrics(versions, mask, train_version=5)
    # lags: row 0: 1, 1, 0; row 1: 0, 0; row 2: 2 x4 -> 10 / 9 over 9 tokens
    assert m["train/async/lag_mean"] == pytest.approx(10 / 9)
    assert m["train/async/lag_mean"].weight == 9
    assert m["train/async/lag_max"] == 2
    assert m["train/async/version_span_max"] == 1
    assert m["train/async/partial_frac"] == pytest.approx(1 / 3)


def test_a_batch_lagging_more_than_max_staleness_is_refused():
    batch = _round([[3, 4]])
    ok = VersionedRollout(7, batch, torch.tensor([[6, 7, -1]]))
    check_lag(ok, train_version=7, max_staleness=1)
    with pytest.raises(StalenessError, match="lag of 2.*max_staleness=1"):
        check_lag(ok, train_version=8, max_staleness=1)
    with pytest.raises(StalenessError, match="lag of 1.*max_staleness=0"):
        check_lag(ok, train_version=7, max_staleness=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "later"}, "rollout.mode must be one of"),
        ({"max_staleness": -1}, "rollout.max_staleness must be >= 0"),
        ({"mode": "async", "round_tokens": 0}, "rollout.round_tokens must be >= 1"),
        ({"round_tokens": 4}, "needs rollout.mode=async"),
        ({"mode": "async", "placement": "elsewhere"}, "rollout.placement must be one of"),
    ],
)
def test_bad_settings_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AsyncSettings(**kwargs)


def test_async_needs_a_correction_and_one_batch_per_step():
    rollout = HFRollout(mode="async")
    assert rollout.external  # a sampler copy behind the trainer: its mismatch is measured and corrected
    assert not HFRollout().external
    with pytest.raises(ValueError, match="correction=token_tis"):
        check_async(rollout, None, GroupPolicyGradient())
    with pytest.raises(ValueError, match="correction=token_tis"):
        check_async(rollout, RolloutCorrection(), GroupPolicyGradient())  # correction=none measures only
    tis = RolloutCorrection(level=TokenRatio())
    with pytest.raises(ValueError, match="algo.dynamic_sampling=false"):
        check_async(rollout, tis, GroupPolicyGradient(dynamic_sampling=True, max_gen_rounds=2))
    check_async(rollout, tis, GroupPolicyGradient())
    check_async(HFRollout(), None, GroupPolicyGradient())  # sync: nothing asked


def test_async_with_vllm_is_refused_naming_the_fix():
    from longact_pl.rollout.vllm import VLLMRollout

    with pytest.raises(ValueError, match="rollout=hf"):
        check_async(VLLMRollout(mode="async"), RolloutCorrection(level=TokenRatio()), GroupPolicyGradient())


def test_staleness_metrics_over_two_ranks_are_those_of_the_whole_batch():
    from longact_pl.metric_reduce import reduce_metrics
    from tests.helpers import FakeOps

    a = torch.tensor([[4, 4, 5, -1], [5, -1, -1, -1]])  # [N, C] rank 0
    b = torch.tensor([[3, 3, 3, 3], [5, 5, 5, -1]])  # rank 1
    local = [staleness_metrics(v, (v >= 0).long(), 5) for v in (a, b)]
    width = torch.cat([a, b])  # the union of the ranks' rows
    whole = staleness_metrics(width, (width >= 0).long(), 5)
    got = reduce_metrics(local[0], FakeOps(world_size=2, other_gathers=[[(True, local[1])]]))
    assert got == pytest.approx({k: float(v) for k, v in whole.items()})
