import pytest
import torch

from longact_pl.sampling import RewardErrors, score


def _reward(completions, references, **meta):
    if any("boom" in c for c in completions):
        raise KeyError("boom")
    return [float(r[0] in c) for c, r in zip(completions, references)]


def test_score_repeats_references_per_group():
    samples = [{"references": ["7"], "task": "a"}, {"references": ["9"], "task": "b"}]
    got = score(_reward, ["7", "x", "9", "9"], samples, group_size=2)
    assert got.tolist() == [1.0, 0.0, 1.0, 1.0] and got.dtype == torch.float32


def test_raising_reward_scores_zero_counts_and_keeps_first_input():
    samples = [{"references": ["7"], "task": "a"}, {"references": ["9"], "task": "b"}]
    errors = RewardErrors()
    got = score(_reward, ["7", "boom 1", "9", "boom 2"], samples, group_size=2, errors=errors)
    assert got.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert errors.count == 2
    assert "KeyError" in errors.first and "boom 1" in errors.first and "'7'" in errors.first
    with pytest.raises(KeyError):
        score(_reward, ["boom"], samples[:1], group_size=1)


def test_wrong_number_of_rewards_is_an_error():
    with pytest.raises(ValueError, match="returned 1 values for 2 completions"):
        score(lambda c, r, **m: [1.0], ["a", "b"], [{"references": ["a"]}], group_size=2)
