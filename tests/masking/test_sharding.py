import pytest
import torch

from longact_pl.masking.sharding import local_rows, shard_prompts

PROMPTS = [[i] for i in range(5)]


@pytest.mark.parametrize(
    ("world", "expected", "pads"),
    [
        (1, [PROMPTS], [0]),
        # 5 prompts on 2 ranks: 3 + 2, and the rank with fewer runs one uncounted forward
        (2, [[[0], [2], [4]], [[1], [3]]], [0, 1]),
        # fewer prompts than ranks: every rank runs all of them (means and maxima unchanged when summed)
        (8, [PROMPTS] * 8, [0] * 8),
    ],
)
def test_shard_prompts_cover_every_prompt_with_equal_forwards(world, expected, pads):
    got = [shard_prompts(PROMPTS, r, world) for r in range(world)]
    assert [g[0] for g in got] == expected and [g[1] for g in got] == pads
    assert len({len(mine) + pad for mine, pad in got}) == 1  # same number of forwards on every rank


def test_plain_tensors_are_their_own_local_rows():
    t = torch.arange(6.0).view(3, 2)
    local, offset = local_rows(t)
    assert local is t and offset == 0
