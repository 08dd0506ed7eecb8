"""Q-K joint pairing: the GQA mapping worked out by hand on a 4-query / 2-KV-head model."""

import pytest
import torch

from longact_pl.masking import Channel, RopePair, SaliencyMask, TopK
from longact_pl.masking.builder import MaskBuilder
from longact_pl.masking.options import MaskingOptions
from longact_pl.masking.pairing import joint_scores, split_joint
from longact_pl.masking.targets import find_targets
from tests.masking import models
from tests.masking.stub import StubData, StubModule, fit

Q, K = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"


def _options(**kw) -> MaskingOptions:
    base = dict(selector="TopK", targets=("q_proj", "k_proj"), ratio=0.3, statistic="mean_abs",
                unit="channel", scope="per_matrix", pairing="joint", norms="dense", others="dense",
                measure_at="proj", calib_samples=1, refresh_every=0, ema=0.9, seed=0)  # fmt: skip
    return MaskingOptions(**{**base, **kw})


def _rows(mask):
    return mask.nonzero().flatten().tolist()


def test_joint_scores_by_hand():
    # 4 query heads, 2 kv heads, 2 units per head; query heads 0, 1 read kv head 0 and 2, 3 read kv head 1
    q = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])  # [H*U] head-major
    k = torch.tensor([10.0, 1.0, 2.0, 3.0])  # [G*U]
    # (j=0, u=0): 10 * mean(1, 3) = 20; (0, 1): 1 * mean(2, 4) = 3
    # (j=1, u=0): 2 * mean(5, 7) = 12;  (1, 1): 3 * mean(6, 8) = 21
    assert joint_scores(q, k, 4, 2).tolist() == [20.0, 3.0, 12.0, 21.0]
    q_keep, k_keep = split_joint(torch.tensor([False, True, True, False]), 4, 2)
    assert q_keep.tolist() == [False, True, False, True, True, False, True, False]
    assert k_keep.tolist() == [False, True, True, False]


def test_gqa_mapping_on_a_4_query_2_kv_head_model():
    model = models.llama()  # 4 query heads, 2 kv heads, head_dim 16
    targets = find_targets(model, ("q_proj", "k_proj"))
    builder = MaskBuilder(targets, _options(ratio=1 / 32), TopK(), Channel(), head_dim=16)
    scores = {t.name: torch.ones(t.rows) for t in targets}  # channel units: [64] and [32]
    q, k = scores[Q], scores[K]
    q[2 * 16 + 3] = q[3 * 16 + 3] = 10.0  # query heads 2 and 3 (both read kv head 1), channel 3: joint 10
    q[0 * 16 + 5] = 30.0  # query head 0 only, channel 5, over a weak key (kv head 0): 0.5 * (30 + 1) / 2
    k[0 * 16 + 5] = 0.5
    k[0 * 16 + 7] = 9.0  # a strong key channel alone: 9 * 1
    masks = builder.build(scores)
    assert _rows(masks[K]) == [16 + 3]  # kv head 1, channel 3: the single kept joint unit (k = 1 of 32)
    assert _rows(masks[Q]) == [2 * 16 + 3, 3 * 16 + 3]  # the query heads that read kv head 1
    # each layer keeps the same share of W_Q and W_K rows
    wide = MaskBuilder(targets, _options(ratio=0.25), TopK(), Channel(), head_dim=16).build(scores)
    assert int(wide[Q].sum()) == 16 and int(wide[K].sum()) == 8


def test_joint_pairing_needs_query_and_key_targets():
    with pytest.raises(ValueError, match=r"masking.pairing=joint .* masking.targets=\['q_proj'\]"):
        SaliencyMask(targets=["q_proj"], pairing="joint")
    with pytest.raises(ValueError, match="masking.pairing"):
        SaliencyMask(pairing="both")
    model = models.llama()
    only_q = [t for t in find_targets(model, ("q_proj", "k_proj")) if t.role == "q"]
    with pytest.raises(ValueError, match="has only a query target"):
        MaskBuilder(only_q, _options(), TopK(), Channel(), head_dim=16)


@pytest.mark.parametrize("unit", [Channel(), RopePair()], ids=["channel", "rope_pair"])
def test_joint_training_keeps_the_same_units_in_q_and_k(unit):
    policy = models.llama()
    cb = SaliencyMask(ratio=0.25, unit=unit, pairing="joint", calib_samples=1)
    module = StubModule(policy)
    fit(module, StubData(models.VOCAB), [cb], max_steps=2)
    for layer in range(2):
        q = cb.masks[f"model.layers.{layer}.self_attn.q_proj"].view(2, 2, 16)  # [G, H/G, D]
        k = cb.masks[f"model.layers.{layer}.self_attn.k_proj"].view(2, 1, 16)  # [G, 1, D]
        assert torch.equal(q, k.expand_as(q)) and int(k.sum()) == 8
        if unit == "rope_pair":
            assert torch.equal(k[..., :8], k[..., 8:])  # d and d + 8 together
        before, after = module.steps[0]["before"], module.steps[-1]["after"]
        w = f"model.layers.{layer}.self_attn.k_proj.weight"
        assert torch.equal(before[w][~k.flatten()], after[w][~k.flatten()])
        assert (before[w][k.flatten()] != after[w][k.flatten()]).any(1).all()
