import torch

from longact_pl.minibatch import micro_batch_rows, minibatch_indices


def test_whole_group_shuffle_keeps_groups_together_and_in_order():
    gen = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(5):
        minis = minibatch_indices(12, 8, 4, gen, whole_groups=True)
        assert [len(m) for m in minis] == [8, 4]
        order = torch.cat(minis)
        assert sorted(order.tolist()) == list(range(12))
        groups = order.view(3, 4)  # [N / G, G]
        assert torch.equal(groups - groups[:, :1], torch.arange(4).expand(3, 4))  # rows g*G .. g*G+3
        assert (groups[:, 0] % 4 == 0).all()
        seen.append(tuple(groups[:, 0].tolist()))
    assert len(set(seen)) > 1  # the group order is shuffled


def test_row_shuffle_when_groups_do_not_divide_the_batch():
    gen = torch.Generator().manual_seed(0)
    order = torch.cat(minibatch_indices(12, 6, 4, gen, whole_groups=True))  # 6 is not whole groups
    assert sorted(order.tolist()) == list(range(12))
    assert not torch.equal(order, torch.arange(12))


def test_one_minibatch_keeps_row_order():
    gen = torch.Generator().manual_seed(0)
    (idx,) = minibatch_indices(8, 8, 4, gen, whole_groups=False)
    assert torch.equal(idx, torch.arange(8))


def test_micro_batches_round_down_to_whole_groups():
    assert micro_batch_rows(6, 4, whole_groups=True) == 4
    assert micro_batch_rows(8, 4, whole_groups=True) == 8
    assert micro_batch_rows(3, 4, whole_groups=True) == 3  # below G: as asked
    assert micro_batch_rows(6, 4, whole_groups=False) == 6
