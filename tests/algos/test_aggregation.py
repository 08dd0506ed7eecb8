import pytest
import torch

from longact_pl.algos.aggregation import (
    AGGREGATIONS,
    aggregate,
    seq_mean_token_mean,
    seq_mean_token_sum_norm,
    token_mean,
)

NAN = float("nan")

# row 0: tokens 1, 2, 3 (3 valid); row 1: token 4 (1 valid, garbage after); row 2: no valid token
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, NAN], [NAN, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_seq_mean_token_mean():
    # per-sequence means 2, 4, 0 (empty) -> (2 + 4 + 0) / 3 = 2
    torch.testing.assert_close(seq_mean_token_mean(LOSS, MASK), torch.tensor(2.0))
    # first two rows only: (2 + 4) / 2 = 3
    torch.testing.assert_close(seq_mean_token_mean(LOSS[:2], MASK[:2]), torch.tensor(3.0))


def test_token_mean():
    # (1 + 2 + 3 + 4) / 4 valid tokens = 2.5
    torch.testing.assert_close(token_mean(LOSS, MASK), torch.tensor(2.5))


def test_seq_mean_token_sum_norm():
    # token sums 6, 4, 0 over max_len 4 -> 1.5, 1, 0; mean over 3 sequences = 2.5 / 3
    torch.testing.assert_close(seq_mean_token_sum_norm(LOSS, MASK, max_len=4), torch.tensor(2.5 / 3))


def test_bool_mask_and_all_empty():
    empty = torch.zeros(2, 3, dtype=torch.bool)
    for mode in AGGREGATIONS:
        out = aggregate(LOSS[:2], empty, mode, max_len=4)
        # nothing valid -> 0, never NaN
        assert out.item() == 0.0
    # bool mask gives the same as float mask: (1 + 2 + 3 + 4) / 4
    torch.testing.assert_close(token_mean(LOSS, MASK.bool()), torch.tensor(2.5))


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_micro_batch_split_sums_to_whole(mode):
    whole = aggregate(LOSS, MASK, mode, max_len=4)
    num_seqs, num_tokens = 3, MASK.sum()  # 3 sequences, 4 valid tokens in the mini-batch
    parts = [
        aggregate(LOSS[rows], MASK[rows], mode, max_len=4, num_seqs=num_seqs, num_tokens=num_tokens)
        for rows in (slice(0, 1), slice(1, 3))
    ]
    # e.g. token_mean: 6 / 4 + 4 / 4 = 2.5; seq_mean_token_mean: 2 / 3 + (4 + 0) / 3 = 2
    torch.testing.assert_close(parts[0] + parts[1], whole)


def test_global_denominators_by_hand():
    # micro-batch = row 1 only, mini-batch of 3 sequences and 4 tokens
    loss, mask = LOSS[1:2], MASK[1:2]
    # seq mean: 4 / 3
    torch.testing.assert_close(seq_mean_token_mean(loss, mask, num_seqs=3), torch.tensor(4 / 3))
    # token mean: 4 / 4 = 1 (a tensor denominator works too)
    torch.testing.assert_close(token_mean(loss, mask, num_tokens=torch.tensor(4)), torch.tensor(1.0))
    # Dr. GRPO: (4 / 4) / 3
    torch.testing.assert_close(seq_mean_token_sum_norm(loss, mask, 4, num_seqs=3), torch.tensor(1 / 3))


def test_gradient_ignores_padding():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 7.0]], requires_grad=True)
    seq_mean_token_mean(loss, MASK[:2]).backward()
    # row 0: 1 / (3 tokens * 2 seqs) = 1/6 each; row 1: 1 / (1 * 2) = 0.5 on its one token, 0 on padding
    expected = torch.tensor([[1 / 6, 1 / 6, 1 / 6], [0.5, 0.0, 0.0]])
    torch.testing.assert_close(loss.grad, expected)


def test_unknown_mode_and_missing_max_len():
    with pytest.raises(ValueError, match="allowed"):
        aggregate(LOSS, MASK, "sum")
    with pytest.raises(ValueError, match="max_len"):
        aggregate(LOSS, MASK, "seq_mean_token_sum_norm")
