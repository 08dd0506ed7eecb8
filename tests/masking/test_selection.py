import pytest
import torch

from longact_pl.masking.selection import BottomK, RandomK, TopK
from longact_pl.masking.stats import ChannelStats
from longact_pl.masking.units import Channel, Head, RopePair, count_k, expand_units, unit_scores
from tests.masking.build import build_masks


def rows(mask):
    return set(mask.nonzero().flatten().tolist())


def test_count_k_rounds_half_up_and_clamps():
    assert count_k(0.3, 64) == 19  # 19.2
    assert count_k(0.3, 32) == 10  # 9.6
    assert count_k(0.5, 5) == 3  # 2.5 rounds up (Python's round would give 2)
    assert count_k(0.01, 8) == 1  # never empty
    assert count_k(1.0, 7) == 7
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            count_k(bad, 10)


def test_statistics_pick_different_channels_on_crafted_activations():
    x = torch.ones(100, 4)  # [N, C]
    x[:, 1] = 3.0  # steadily large: highest mean |x|
    x[0, 0] = 100.0  # one spike: highest max |x| (mean 1.99 < 3)
    x[:, 2] = -2.0
    s = ChannelStats(4)
    s.add(x)
    assert s.count == 100
    torch.testing.assert_close(s.statistic("mean_abs"), x.abs().mean(0))
    torch.testing.assert_close(s.statistic("rms"), x.square().mean(0).sqrt())
    torch.testing.assert_close(s.statistic("max_abs"), x.abs().amax(0))
    groups = {"q_proj": ["m"]}
    pick = {
        st: rows(build_masks({"m": s.statistic(st)}, groups, TopK(), 0.25)["m"])
        for st in ("mean_abs", "max_abs")
    }
    assert pick == {"mean_abs": {1}, "max_abs": {0}}
    with pytest.raises(ValueError, match="statistic"):
        s.statistic("median")


def test_rope_pair_unit_keeps_d_and_d_plus_half_together():
    head_dim = 8
    scores = torch.ones(16)  # 2 heads
    scores[9] = 10.0  # single strongest channel (head 1, d=1): pair (9, 13) sums to 11
    scores[2] = scores[6] = 6.0  # head 0 pair (2, 6) sums to 12
    groups = {"q_proj": ["m"]}
    channel = build_masks({"m": scores}, groups, TopK(), 1 / 16, Channel(), head_dim)["m"]
    assert rows(channel) == {9}
    pair = build_masks({"m": scores}, groups, TopK(), 1 / 8, RopePair(), head_dim)["m"]
    assert rows(pair) == {2, 6}
    idx = RopePair().index(16, head_dim)
    assert idx.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7]
    # every unit is kept or dropped as a whole pair
    for r in range(16):
        partner = r - 4 if r % 8 >= 4 else r + 4
        assert bool(pair[r]) == bool(pair[partner])


def test_head_unit_keeps_whole_heads():
    scores = torch.zeros(48)  # 3 heads of 16
    scores[20] = 5.0  # head 1
    mask = build_masks({"m": scores}, {"q_proj": ["m"]}, TopK(), 0.3, Head(), 16)["m"]
    assert rows(mask) == set(range(16, 32))
    with pytest.raises(ValueError, match="multiple of head_dim"):
        build_masks({"m": torch.ones(40)}, {"g": ["m"]}, TopK(), 0.3, Head(), 16)


def test_unit_scores_and_expand_roundtrip():
    idx = Head().index(8, 4)
    u = unit_scores(torch.arange(8.0), idx)
    assert u.tolist() == [6.0, 22.0]
    assert expand_units(torch.tensor([False, True]), idx).tolist() == [False] * 4 + [True] * 4


def test_global_scope_ranks_across_layers_per_matrix_does_not():
    scores = {
        "l0.q_proj": torch.arange(10.0) + 100,
        "l1.q_proj": torch.arange(10.0),
        "l0.k_proj": torch.ones(4),
    }
    groups = {"q_proj": ["l0.q_proj", "l1.q_proj"], "k_proj": ["l0.k_proj"]}
    per = build_masks(scores, groups, TopK(), 0.5, scope="per_matrix")
    assert rows(per["l0.q_proj"]) == rows(per["l1.q_proj"]) == {5, 6, 7, 8, 9}
    glob = build_masks(scores, groups, TopK(), 0.5, scope="global")
    assert rows(glob["l0.q_proj"]) == set(range(10)) and rows(glob["l1.q_proj"]) == set()
    assert int(glob["l0.k_proj"].sum()) == 2  # groups are ranked separately
    with pytest.raises(ValueError, match="scope"):
        build_masks(scores, groups, TopK(), 0.5, scope="layer")


def test_gqa_shapes_on_tiny_model_projection_sizes():
    scores = {"q": torch.rand(64), "k": torch.rand(32)}  # 4 query heads, 2 kv heads, head_dim 16
    groups = {"q_proj": ["q"], "k_proj": ["k"]}
    ch = build_masks(scores, groups, TopK(), 0.3, Channel(), 16)
    assert (ch["q"].numel(), int(ch["q"].sum()), ch["k"].numel(), int(ch["k"].sum())) == (64, 19, 32, 10)
    rp = build_masks(scores, groups, TopK(), 0.3, RopePair(), 16)
    assert (int(rp["q"].sum()), int(rp["k"].sum())) == (2 * 10, 2 * 5)  # 32 -> 9.6 -> 10 pairs; 16 -> 5 pairs
    hd = build_masks(scores, groups, TopK(), 0.3, Head(), 16)
    assert (int(hd["q"].sum()), int(hd["k"].sum())) == (16, 16)  # 1.2 -> 1 head, 0.6 -> 1 head


def test_selectors_topk_bottomk_disjoint_and_random_seeded():
    ties = torch.ones(10)
    top, bottom = TopK()(ties, 5, torch.Generator()), BottomK()(ties, 5, torch.Generator())
    assert set(top.tolist()).isdisjoint(bottom.tolist())
    scores = {"a": torch.rand(64, generator=torch.Generator().manual_seed(3))}
    groups = {"q_proj": ["a"]}
    r1 = build_masks(scores, groups, RandomK(), 0.3, seed=1)["a"]
    r2 = build_masks(scores, groups, RandomK(), 0.3, seed=1)["a"]
    r3 = build_masks(scores, groups, RandomK(), 0.3, seed=2)["a"]
    assert torch.equal(r1, r2) and not torch.equal(r1, r3) and int(r1.sum()) == 19
    t = build_masks(scores, groups, TopK(), 0.3)["a"]
    b = build_masks(scores, groups, BottomK(), 0.3)["a"]
    assert not (t & b).any() and int(b.sum()) == 19
    assert rows(b) == set(scores["a"].argsort()[:19].tolist())
