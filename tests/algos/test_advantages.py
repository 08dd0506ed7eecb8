import math

import pytest
import torch

from longact_pl.algos.advantages import dynamic_sampling_keep, group_advantages


def test_std_scaled_with_bessel_correction():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    adv = group_advantages(rewards, group_size=4, scale_by_std=True, eps=0.0)
    # group 1: mean 0.25, deviations (0.75, -0.25, -0.25, -0.25)
    #   sum of squares 0.5625 + 3 * 0.0625 = 0.75; unbiased var 0.75 / 3 = 0.25; std 0.5
    #   -> (1.5, -0.5, -0.5, -0.5)
    # group 2: mean 0.5, deviations +-0.5; sum of squares 1; var 1 / 3; std 1 / sqrt(3)
    #   -> +-0.5 * sqrt(3) = +-0.8660254
    h = math.sqrt(3) / 2
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5, h, h, -h, -h])
    torch.testing.assert_close(adv, expected)


def test_std_scaled_with_eps():
    adv = group_advantages(torch.tensor([2.0, 0.0]), group_size=2, eps=0.5)
    # mean 1, deviations +-1; unbiased var (1 + 1) / 1 = 2; std sqrt(2) = 1.4142136
    # -> +-1 / (1.4142136 + 0.5) = +-0.5224077
    torch.testing.assert_close(adv, torch.tensor([0.5224077, -0.5224077]))


def test_mean_only_dr_grpo():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]), 4, scale_by_std=False)
    # group means 0.25 and 0.5, no division
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5]))


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_equal_rewards_give_exact_zero(scale_by_std):
    # 0.1 * 3 / 3 is not exactly 0.1 in float32; uniform groups must still give exactly 0, never NaN
    rewards = torch.tensor([0.1, 0.1, 0.1, 2.0, 2.0, 2.0, 1.0, 0.0, 0.0])
    adv = group_advantages(rewards, 3, scale_by_std=scale_by_std, eps=0.0)
    assert torch.equal(adv[:6], torch.zeros(6))
    assert torch.isfinite(adv).all()
    assert adv[6] > 0


def test_integer_rewards_become_float():
    adv = group_advantages(torch.tensor([1, 0]), 2, scale_by_std=False)
    # mean 0.5 -> (0.5, -0.5)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5]))


@pytest.mark.parametrize(
    ("rewards", "group_size", "match"),
    [
        (torch.zeros(6), 4, "multiple of group_size"),
        (torch.zeros(4), 1, "group_size must be >= 2"),
        (torch.zeros(2, 2), 2, "1-D"),
    ],
)
def test_validation(rewards, group_size, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, group_size)
    with pytest.raises(ValueError, match=match):
        dynamic_sampling_keep(rewards, group_size)


def test_dynamic_sampling_keep():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.5])
    # groups: (1,1,0,0) differ -> keep; (1,1,1,1) equal -> drop; (0,0,0,0.5) differ -> keep
    keep = dynamic_sampling_keep(rewards, 4)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [True, False, True]
