import pytest
import torch

from longact_pl.algos.shaping import overlong_penalty


def test_overlong_penalty_piecewise():
    # max_len 20, cache 8 -> window starts at 12
    lengths = torch.tensor([10, 12, 16, 18, 20, 25])
    # 10, 12 -> 0; 16 -> (12 - 16) / 8 = -0.5; 18 -> -6 / 8 = -0.75; 20 -> -1; 25 -> -1 (capped)
    expected = torch.tensor([0.0, 0.0, -0.5, -0.75, -1.0, -1.0])
    torch.testing.assert_close(overlong_penalty(lengths, max_len=20, cache_len=8), expected)


def test_overlong_penalty_float_lengths():
    # window starts at 36: 37 -> -1 / 4 = -0.25
    torch.testing.assert_close(overlong_penalty(torch.tensor([37.0]), 40, 4), torch.tensor([-0.25]))


@pytest.mark.parametrize("cache_len", [0, 21])
def test_overlong_penalty_validation(cache_len):
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(torch.tensor([1]), 20, cache_len)
