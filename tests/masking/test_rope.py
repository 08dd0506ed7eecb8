"""RoPE-true statistics: pair layouts read from the model, RoPE-invariant pair scores, post-RoPE taps."""

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from longact_pl.masking.calibrate import collect_stats
from longact_pl.masking.rope import rope_pairs
from longact_pl.masking.stats import StatsCollector
from longact_pl.masking.targets import find_targets, head_dim_of
from longact_pl.masking.units import RopePair
from tests.masking import models

PROMPTS = [list(range(10, 60)), list(range(100, 140))]
SUFFIXES = {"phi3": ("qkv_proj",), "neox": ("query_key_value",)}


def _pairs(model, targets):
    return rope_pairs(model, model.get_submodule(targets[0].attention), head_dim_of(model))


def test_pair_layouts_are_read_from_the_models_rope():
    half = list(range(8)) * 2  # Llama: d with d + 8
    built = {"llama": models.llama(), "cohere": models.cohere(), "neox": models.neox(),
             "phi3": models.phi3(partial_rotary_factor=0.5)}  # fmt: skip
    got = {n: _pairs(m, find_targets(m, SUFFIXES.get(n, ("q_proj",)))).tolist() for n, m in built.items()}
    assert got["llama"] == half
    assert got["cohere"] == [i // 2 for i in range(16)]  # interleaved: 2i with 2i + 1
    # partial rotary: the first 8 (Phi-3) / 4 (NeoX) channels pair as rotate-half, the rest stand alone
    assert got["phi3"] == [0, 1, 2, 3, 0, 1, 2, 3, *range(4, 12)]
    assert got["neox"] == [0, 1, 0, 1, *range(2, 14)]


def test_rope_pair_refuses_a_model_without_rope_or_with_unreadable_rope(monkeypatch):
    opt = models.opt()
    with pytest.raises(ValueError, match=r"masking.unit=rope_pair .* no \*RotaryEmbedding module"):
        _pairs(opt, find_targets(opt, ("q_proj",)))
    llama = models.llama()
    import transformers.models.llama.modeling_llama as modeling

    def mixes_all(q, k, cos, sin, unsqueeze_dim=1):  # a "RoPE" that mixes every channel with every other
        return q + q.sum(-1, keepdim=True), k

    monkeypatch.setattr(modeling, "apply_rotary_pos_emb", mixes_all)
    with pytest.raises(ValueError, match="mixes channel 0 with channels"):
        _pairs(llama, find_targets(llama, ("q_proj",)))


@pytest.mark.parametrize("name", ["llama", "cohere", "phi3_partial", "neox"])
def test_pair_scores_at_projection_equal_scores_after_rope(name):
    model = {"llama": models.llama, "cohere": models.cohere, "neox": models.neox,
             "phi3_partial": lambda: models.phi3(partial_rotary_factor=0.5)}[name]()  # fmt: skip
    suffixes = SUFFIXES.get(name.split("_")[0], ("q_proj", "k_proj"))
    d = head_dim_of(model)
    stats = {}
    for at in ("proj", "post_rope"):
        targets = find_targets(model, suffixes, at)
        pairs = _pairs(model, targets)
        units = {t.name: RopePair(pairs).index(t.rows, d) for t in targets}
        stats[at] = collect_stats(model, targets, PROMPTS, units=units)
    assert len(stats["proj"]) == 4 and stats["proj"].keys() == stats["post_rope"].keys()
    for key, before in stats["proj"].items():
        after = stats["post_rope"][key]
        assert before.count == after.count == 90
        for statistic in ("mean_abs", "rms", "max_abs"):
            torch.testing.assert_close(
                before.statistic(statistic), after.statistic(statistic), rtol=1e-5, atol=1e-6
            )
        # the old score (sum of the pair's channel statistics) is not invariant: RoPE moves mass within a pair
        assert not torch.allclose(before.mean_l1(), after.mean_l1(), rtol=1e-3)


def _hand_rope(x, theta):
    """Rotate-half RoPE written out: x [T, H, D] at positions 0..T-1."""
    t, _, d = x.shape
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)  # [D/2]
    angle = torch.arange(t).float()[:, None] * inv_freq  # [T, D/2]
    cos, sin = (
        torch.cat([angle.cos()] * 2, -1)[:, None],
        torch.cat([angle.sin()] * 2, -1)[:, None],
    )  # [T, 1, D]
    rotated = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)  # [T, H, D]
    return x * cos + rotated * sin


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_post_rope_statistics_match_a_hand_computed_rope(name):
    model = getattr(models, name)()
    theta = model.config.rope_parameters["rope_theta"]
    attn = model.model.layers[1].self_attn
    # what attention reads before RoPE: the projection, or Qwen3's q_norm/k_norm output
    before = {
        "q": attn.q_norm if name == "qwen3" else attn.q_proj,
        "k": attn.k_norm if name == "qwen3" else attn.k_proj,
    }
    seen = {}
    handles = [
        m.register_forward_hook(lambda mod, a, out, r=r: seen.setdefault(r, out)) for r, m in before.items()
    ]
    ids = torch.tensor([PROMPTS[0]])  # [1, T]
    with torch.no_grad():
        model.model(input_ids=ids)
    for h in handles:
        h.remove()
    targets = find_targets(model, ("q_proj", "k_proj"), "post_rope")
    stats = collect_stats(model, targets, PROMPTS[:1])
    for role, proj in (("q", "q_proj"), ("k", "k_proj")):
        x = seen[role][0].view(len(PROMPTS[0]), -1, 16)  # [T, H, D]
        expected = _hand_rope(x, theta).flatten(1).abs().mean(0)  # [H*D]
        got = stats[f"model.layers.1.self_attn.{proj}"].statistic("mean_abs")
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got, x.flatten(1).abs().mean(0), rtol=1e-3)  # RoPE did change them


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attention_tap_passes_through_and_restores_the_real_function(implementation):
    model, other = models.llama(), models.llama(seed=1)  # `other`: untapped, through the same function
    for m in (model, other):
        m.config._attn_implementation = implementation
    real = ALL_ATTENTION_FUNCTIONS.get(implementation)  # None for eager: each model's own default
    ids = torch.tensor([PROMPTS[0]])  # [1, T]
    with torch.no_grad():
        plain = model(input_ids=ids).logits  # [1, T, V]
    targets = find_targets(model, ("q_proj", "k_proj"), "post_rope")
    gate = torch.ones_like(ids, dtype=torch.bool)  # [1, T]
    collector = StatsCollector({t.name: t.probe for t in targets}, gate=lambda: gate)
    collector.attach()
    collector.attach()  # idempotent
    with torch.no_grad():
        tapped = model(input_ids=ids).logits
        other(input_ids=ids)
    assert ALL_ATTENTION_FUNCTIONS.get(implementation) is not real
    second = StatsCollector({t.name: t.probe for t in targets}, gate=lambda: gate)
    second.attach()
    collector.detach()
    assert ALL_ATTENTION_FUNCTIONS.get(implementation) is not real  # still tapped by `second`
    second.detach()
    assert torch.equal(plain, tapped)
    assert ALL_ATTENTION_FUNCTIONS.get(implementation) is real
    assert implementation not in ALL_ATTENTION_FUNCTIONS._local_mapping
    assert {k: s.count for k, s in collector.stats.items()} == {t.name: 50 for t in targets}  # not `other`


def test_post_rope_keys_count_only_the_new_tokens_of_a_cached_forward():
    """Shared-prefix log-probs run completions against the prompt's cached keys: the key statistics must
    count the completion tokens' keys (the newest positions), once, like the projection hooks do."""
    from longact_pl.ops.shared_prefix import grouped_completion_logprobs

    model = models.llama().train()
    gen = torch.Generator().manual_seed(0)
    g, p, c = 3, 12, 6
    ids = torch.randint(10, models.VOCAB, (g, p + c), generator=gen)  # [G, P + C]
    ids[:, :p] = ids[0, :p]
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # a shorter completion
    d = head_dim_of(model)
    stats, current = {}, [None]
    for at in ("proj", "post_rope"):
        targets = find_targets(model, ("q_proj", "k_proj"), at)
        units = {t.name: RopePair(_pairs(model, targets)).index(t.rows, d) for t in targets}
        collector = StatsCollector({t.name: t.probe for t in targets}, gate=lambda: current[0], units=units)
        collector.attach()
        grouped_completion_logprobs(
            model, ids, mask, c, g, token_mask_hook=lambda m: current.__setitem__(0, m)
        )
        collector.detach()
        stats[at] = collector.stats
    for key, before in stats["proj"].items():
        assert before.count == stats["post_rope"][key].count == p + g * c - 2
        torch.testing.assert_close(before.statistic("max_abs"), stats["post_rope"][key].statistic("max_abs"))
