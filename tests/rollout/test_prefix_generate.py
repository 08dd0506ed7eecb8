import pytest
import torch

from longact_pl.models.tiny import tiny_llama, tiny_qwen3
from longact_pl.ops.logprobs import completion_logprobs
from longact_pl.rollout.batch_builder import left_pad
from longact_pl.rollout.hf import HFRollout
from longact_pl.rollout.prefix_generate import (
    ATTN_NAME,
    SharedPrefixCache,
    prefill,
    shared_prefix_attention,
    shared_prefix_decoding,
)
from tests.conftest import two_prompts

pytestmark = pytest.mark.usefixtures("one_thread")


def _same(a, b):
    for field in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    torch.testing.assert_close(a.behaviour_logp, b.behaviour_logp, atol=1e-5, rtol=1e-5)
    assert a.completions == b.completions
    assert (a.prompt_width, a.group_size) == (b.prompt_width, b.group_size)


def test_greedy_identical_to_hf(tiny_any):
    kw = dict(group_size=3, max_new_tokens=6)
    prompts = two_prompts(tiny_any.tokenizer)
    want = HFRollout(**kw).generate(tiny_any.model, tiny_any.tokenizer, prompts, greedy=True)
    got = HFRollout(prefill_once=True, **kw).generate(
        tiny_any.model, tiny_any.tokenizer, prompts, greedy=True
    )
    _same(got, want)


@pytest.mark.parametrize(
    "build,sampling,engine",
    [
        (tiny_llama, dict(temperature=0.7), dict(sampler="multinomial")),
        (tiny_qwen3, dict(temperature=1.0, top_p=0.9, top_k=50), dict(sampler="multinomial")),
        (tiny_llama, dict(temperature=0.7), dict(decode="generate")),
        (tiny_qwen3, dict(temperature=1.0, top_p=0.9, top_k=50), dict(decode="generate")),
        (tiny_llama, {}, dict(shared_attention=False)),
    ],
    ids=["lean-llama-T0.7", "lean-qwen3-top_p-top_k", "generate-llama", "generate-qwen3", "repeated-cache"],
)
def test_sampled_identical_to_hf_with_the_same_seed(build, sampling, engine):
    """Every prefill-once path draws what ``generate`` draws for a seed: ``generate`` over the shared or
    repeated cache, and our own loop with ``sampler=multinomial`` (left padding, GQA, top-k / top-p)."""
    kw = dict(group_size=4, max_new_tokens=8, **sampling)
    loaded = build(seed=0)
    model, tok = loaded.model, loaded.tokenizer
    prompts = two_prompts(tok)
    want = HFRollout(**kw).generate(model, tok, prompts, seed=5)
    got = HFRollout(**kw, prefill_once=True, **engine).generate(model, tok, prompts, seed=5)
    _same(got, want)
    other = HFRollout(**kw, prefill_once=True, **engine).generate(model, tok, prompts, seed=6)
    assert not torch.equal(other.input_ids, got.input_ids)
    assert model.config._attn_implementation == "sdpa"  # restored after decoding


@pytest.mark.parametrize("decode", ["lean", "generate"])
def test_behaviour_logp_and_eos_mask(tiny, decode):
    engine = HFRollout(prefill_once=True, group_size=4, max_new_tokens=12, temperature=0.7, decode=decode)
    prompts = two_prompts(tiny.tokenizer)
    free = engine.generate(tiny.model, tiny.tokenizer, prompts, seed=3)
    eos = int(free.input_ids[0, free.prompt_width + 2])  # a token row 0 samples early becomes EOS
    tiny.model.generation_config.eos_token_id = eos
    ro = engine.generate(tiny.model, tiny.tokenizer, prompts, seed=3)
    assert ro.completion_mask[0, :3].all() and ro.completion_mask[0, 3:].sum() == 0
    comp = ro.input_ids[:, ro.prompt_width :]
    for row in range(comp.shape[0]):
        hits = (comp[row] == eos).nonzero().flatten().tolist()
        if hits:
            assert not ro.completion_mask[row, hits[0] + 1 :].any()
    logp, _ = completion_logprobs(tiny.model, ro.input_ids, ro.attention_mask, 12, temperature=0.7)
    torch.testing.assert_close(logp * ro.completion_mask, ro.behaviour_logp, atol=1e-4, rtol=1e-4)
    assert tiny.model.training is False or tiny.model.training is True  # mode restored below
    tiny.model.train()
    engine.generate(tiny.model, tiny.tokenizer, prompts, seed=3)
    assert tiny.model.training


@pytest.mark.parametrize("decode", ["lean", "generate"])
def test_prefill_runs_once_per_prompt(tiny, decode):
    """The prefill sees B rows (not B * G) and no forward ever sees more than 1 new token per row after it.

    Our loop prefills all P tokens and samples every row's first token from that prefill (C - 1 decode
    forwards); ``generate`` continues from P - 1 prefilled tokens (C decode forwards)."""
    prompts = two_prompts(tiny.tokenizer)
    shapes: list[tuple[int, int]] = []
    hook = tiny.model.model.embed_tokens.register_forward_hook(
        lambda m, i, o: shapes.append(tuple(i[0].shape))
    )
    try:
        HFRollout(prefill_once=True, group_size=4, max_new_tokens=5, decode=decode).generate(
            tiny.model, tiny.tokenizer, prompts
        )
    finally:
        hook.remove()
    width = max(len(p) for p in prompts)
    lean = decode == "lean"
    assert shapes[0] == (2, width if lean else width - 1)
    assert all(s == (8, 1) for s in shapes[1:]) and len(shapes) == (5 if lean else 6)
    ids, mask = left_pad([[5]], 0)
    assert prefill(tiny.model, ids, mask) is None  # a one-token prompt has nothing to prefill


@pytest.mark.parametrize("decode", ["lean", "generate"])
def test_one_token_prompt_still_generates(tiny, decode):
    ro = HFRollout(prefill_once=True, group_size=2, max_new_tokens=3, decode=decode).generate(
        tiny.model, tiny.tokenizer, [[42]]
    )
    assert ro.input_ids.shape == (2, 4) and ro.input_ids[:, 0].tolist() == [42, 42]


@pytest.mark.parametrize("q_len", [1, 3, 20])
def test_shared_prefix_attention_equals_sdpa_on_expanded_keys(q_len):
    """One prompt copy per group gives the same attention as G copies (GQA, left padding, own tokens)."""
    from transformers.cache_utils import DynamicCache
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(0)
    batch, group, heads, kv_heads, width, own, dim = 2, 3, 4, 2, 7, q_len + 4, 8
    rows = batch * group
    prompt_cache = DynamicCache()
    pk, pv = torch.randn(2, batch, kv_heads, width, dim, generator=gen)
    prompt_cache.update(pk, pv, 0)
    cache = SharedPrefixCache(prompt_cache, group)
    own_k, own_v = torch.randn(2, rows, kv_heads, own, dim, generator=gen)
    keys, values = cache.update(own_k, own_v, 0)
    assert torch.equal(keys, own_k) and cache.get_seq_length() == width + own
    query = torch.randn(rows, heads, q_len, dim, generator=gen)
    mask = torch.ones(rows, 1, q_len, width + own, dtype=torch.bool)
    mask[group:, ..., :3] = False  # the second prompt is left-padded
    mask[..., width + own - q_len :] &= torch.ones(q_len, q_len, dtype=torch.bool).tril()  # causal own part

    class Attn(torch.nn.Module):
        layer_idx, num_key_value_groups, is_causal = 0, heads // kv_heads, True

    full_k = torch.cat([pk.repeat_interleave(group, 0), own_k], -2)
    full_v = torch.cat([pv.repeat_interleave(group, 0), own_v], -2)
    want, _ = sdpa_attention_forward(Attn(), query, full_k, full_v, mask, scaling=0.3)
    config = type("Cfg", (), {"_attn_implementation": "sdpa", "get_text_config": lambda self: self})()
    model = type("M", (), {"config": config})()
    with shared_prefix_decoding(model, cache):
        assert config._attn_implementation == ATTN_NAME
        got, _ = shared_prefix_attention(Attn(), query, keys, values, mask, scaling=0.3)
    assert config._attn_implementation == "sdpa"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    outside, _ = shared_prefix_attention(Attn(), query, full_k, full_v, mask, scaling=0.3)  # no active cache
    torch.testing.assert_close(outside, want, atol=1e-6, rtol=1e-6)


def test_decoding_keeps_one_prompt_copy(tiny):
    """``decode=generate``: every decode step runs the shared attention with the prompt key/values stored
    once per prompt."""
    from transformers import AttentionInterface

    seen: list[tuple[int, int]] = []

    def spy(module, query, key, value, *args, **kwargs):
        from longact_pl.rollout.prefix_generate import _ACTIVE

        layer = _ACTIVE.get().layers[module.layer_idx]
        seen.append((layer.prefix_keys.shape[0], query.shape[0]))
        return shared_prefix_attention(module, query, key, value, *args, **kwargs)

    AttentionInterface.register(ATTN_NAME, spy)
    try:
        engine = HFRollout(prefill_once=True, group_size=4, max_new_tokens=3, decode="generate")
        engine.generate(tiny.model, tiny.tokenizer, two_prompts(tiny.tokenizer), seed=0)
    finally:
        AttentionInterface.register(ATTN_NAME, shared_prefix_attention)
    layers = tiny.model.config.num_hidden_layers
    assert seen == [(2, 8)] * (3 * layers)


def test_sliding_window_models_decode_with_a_repeated_cache(tiny):
    model, tok = tiny.model, tiny.tokenizer
    prompts = two_prompts(tok)
    want = HFRollout(group_size=3, max_new_tokens=6).generate(model, tok, prompts, seed=2)
    model.config.use_sliding_window = True  # the shared decoding refuses it (the forward ignores it here)
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, inp, out: calls.append(model.config._attn_implementation) if mod is model else None
    )
    try:
        got = HFRollout(prefill_once=True, group_size=3, max_new_tokens=6).generate(
            model, tok, prompts, seed=2
        )
    finally:
        handle.remove()
    _same(got, want)
    assert calls and set(calls) == {"sdpa"}  # never switched to the shared-prefix attention
