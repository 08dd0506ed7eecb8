import pytest
import torch
from torch import nn

from longact_pl.masking.calibrate import collect_stats
from longact_pl.masking.selection import BottomK, RandomK, TopK
from longact_pl.masking.stats import StatsCollector
from longact_pl.masking.targets import find_targets, head_dim_of
from longact_pl.models.tiny import tiny_llama, tiny_qwen3
from tests.masking.build import build_masks


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(seed=0).model


@pytest.fixture(scope="module")
def qwen3():
    return tiny_qwen3(seed=0).model


PROMPTS = [list(range(1000, 1064)), list(range(2000, 2048))]


def test_collector_counts_only_gated_valid_tokens_of_matching_shape():
    lin = nn.Linear(3, 2)
    gate = [None]
    col = StatsCollector({"m": lin}, gate=lambda: gate[0])
    col.attach()
    x = torch.randn(2, 5, 3)  # [B, T, in]
    lin(x)  # no mask: not counted
    assert col.stats == {}
    gate[0] = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    lin(x[:, :4])  # shape mismatch (e.g. a generation step): not counted
    assert col.stats == {}
    out = lin(x)  # [B, T, 2]
    valid = out[gate[0]].detach()  # [7, 2]
    assert col.stats["m"].count == 7
    torch.testing.assert_close(col.stats["m"].statistic("mean_abs"), valid.abs().mean(0))
    torch.testing.assert_close(col.stats["m"].statistic("max_abs"), valid.abs().amax(0))
    col.detach()
    lin(x)
    assert col.reset()["m"].count == 7 and col.stats == {}


def test_targets_gqa_and_head_dim(llama):
    targets = find_targets(llama, ("q_proj", "k_proj"))
    assert [t.name for t in targets] == [
        f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in ("q", "k")
    ]
    assert [t.rows for t in targets] == [64, 32, 64, 32]
    assert head_dim_of(llama) == 16
    assert [t.rows for t in find_targets(llama, ("gate_proj",))] == [128, 128]
    with pytest.raises(ValueError, match="no nn.Linear"):
        find_targets(llama, ("qkv_proj",))
    with pytest.raises(ValueError, match="measure_at=norm"):
        find_targets(llama, ("q_proj",), measure_at="norm")


def test_calibration_stats_and_controls(llama):
    targets = find_targets(llama, ("q_proj", "k_proj"))
    stats = collect_stats(llama, targets, PROMPTS)
    assert {k: s.count for k, s in stats.items()} == {t.name: 112 for t in targets}
    assert llama.training  # mode restored
    scores = {k: s.statistic("mean_abs") for k, s in stats.items()}
    groups = {"q_proj": [targets[0].name, targets[2].name], "k_proj": [targets[1].name, targets[3].name]}
    sal = build_masks(scores, groups, TopK(), 0.3)
    inv = build_masks(scores, groups, BottomK(), 0.3)
    rnd = [build_masks(scores, groups, RandomK(), 0.3, seed=s) for s in (7, 7, 8)]
    for name in scores:
        assert int(sal[name].sum()) == int(inv[name].sum()) == int(rnd[0][name].sum())
        assert not (sal[name] & inv[name]).any()  # ratio <= 0.5: disjoint
        assert torch.equal(rnd[0][name], rnd[1][name]) and not torch.equal(rnd[0][name], rnd[2][name])
        assert not torch.equal(rnd[0][name], sal[name]) and not torch.equal(sal[name], inv[name])
    bf16 = collect_stats(llama, targets, PROMPTS[:1], bf16=True)
    assert bf16[targets[0].name].count == 64


def test_qwen3_measure_at_norm_flattens_heads(qwen3):
    proj = collect_stats(qwen3, find_targets(qwen3, ("q_proj", "k_proj")), PROMPTS[:1])
    norm_targets = find_targets(qwen3, ("q_proj", "k_proj"), measure_at="norm")
    assert norm_targets[0].measured is qwen3.model.layers[0].self_attn.q_norm
    norm = collect_stats(qwen3, norm_targets, PROMPTS[:1])
    for t in norm_targets:
        s = norm[t.name].statistic("mean_abs")
        assert s.shape == (t.rows,)
        assert not torch.allclose(s, proj[t.name].statistic("mean_abs"))
