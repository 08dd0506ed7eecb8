"""Issue 22: a reward function returning the wrong type fails naming data.reward and the value's type."""

import numpy as np
import pytest
import torch

from longact_pl.rewards.scoring import RewardErrors, score

SAMPLES = [{"references": ["a"], "task": "t"}]


class Returns:
    def __init__(self, value) -> None:
        self.value = value

    def __call__(self, completions, references, **meta):
        return self.value


@pytest.mark.parametrize(
    "value,expected",
    [
        (
            None,
            r"data\.reward \(.*Returns\) returned NoneType \(None\); a reward function must return a list",
        ),
        (["x", "y"], r"data\.reward \(.*Returns\) returned a str \('x'\) at position 0 .*must be a number"),
        ([None, None], r"data\.reward \(.*Returns\) returned a NoneType \(None\) at position 0"),
    ],
)
@pytest.mark.parametrize("errors", [None, RewardErrors()])
def test_wrong_reward_types_name_the_field_and_the_type(value, expected, errors):
    with pytest.raises(TypeError, match=expected):
        score(Returns(value), ["c1", "c2"], SAMPLES, 2, errors)


def test_numbers_in_any_container_are_rewards():
    for value in ([1, 0.5], (True, 0), np.array([1.0, 0.5]), torch.tensor([1.0, 0.5])):
        assert score(Returns(value), ["c1", "c2"], SAMPLES, 2).tolist() == [float(v) for v in value]
    with pytest.raises(ValueError, match=r"data\.reward .* returned 1 values for 2 completions"):
        score(Returns([1.0]), ["c1", "c2"], SAMPLES, 2)
