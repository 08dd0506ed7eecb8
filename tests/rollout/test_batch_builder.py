import torch

from longact_pl.ops.positions import position_ids_from_mask
from longact_pl.rollout.batch_builder import completion_mask_after_eos, left_pad


def test_completion_mask_keeps_tokens_up_to_and_including_first_eos():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 5, 5, 5, 5]])
    mask = completion_mask_after_eos(ids, eos_ids=[2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_completion_mask_with_several_eos_ids():
    ids = torch.tensor([[5, 9, 6, 2]])
    assert completion_mask_after_eos(ids, eos_ids=[2, 9]).tolist() == [[1, 1, 0, 0]]


def test_left_pad_and_positions():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_left_pad_rejects_empty_prompt():
    import pytest

    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_id=0)
