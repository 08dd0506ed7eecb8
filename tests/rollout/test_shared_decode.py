import pytest
import torch
from transformers import AttentionInterface

from longact_pl.ops.logprobs import completion_logprobs
from longact_pl.rollout.hf import HFRollout
from longact_pl.rollout.shared_decode import ATTN_NAME, decode_attention
from tests.conftest import two_prompts

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_behaviour_logp_match_a_teacher_forced_forward(tiny_any, autocast):
    """The sampler's log-probs are the trainer's: ragged prompts (left padding), GQA, Llama and Qwen3; under
    bf16 autocast both sides run bf16 matmuls (the prompt key/values cast once), so the gap is bf16's."""
    model, tok = tiny_any.model, tiny_any.tokenizer
    engine = HFRollout(prefill_once=True, group_size=3, max_new_tokens=10, temperature=0.7)
    assert engine.lean_decoding(model)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        ro = engine.generate(model, tok, two_prompts(tok), seed=1)
        logp, _ = completion_logprobs(model, ro.input_ids, ro.attention_mask, 10, temperature=0.7)
    tol = 5e-2 if autocast else 1e-4
    torch.testing.assert_close(logp.float() * ro.completion_mask, ro.behaviour_logp, atol=tol, rtol=tol)
    assert ro.input_ids.shape == (6, ro.prompt_width + 10) and len(ro.completions) == 6


def test_greedy_equals_generate_and_a_seed_fixes_the_samples(tiny):
    model, tok = tiny.model, tiny.tokenizer
    prompts = two_prompts(tok)
    want = HFRollout(group_size=2, max_new_tokens=7).generate(model, tok, prompts, greedy=True)
    lean = HFRollout(prefill_once=True, group_size=2, max_new_tokens=7)
    got = lean.generate(model, tok, prompts, greedy=True)
    assert torch.equal(got.input_ids, want.input_ids) and got.input_ids.shape[0] == 2
    torch.testing.assert_close(got.behaviour_logp, want.behaviour_logp, atol=1e-5, rtol=1e-5)
    a, b, c = (lean.generate(model, tok, prompts, seed=s) for s in (4, 4, 5))
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)


def test_stops_when_every_row_has_ended(tiny):
    """Every token an EOS: each row ends at its first token, so only the prefill runs (no decode forward)."""
    model, tok = tiny.model, tiny.tokenizer
    model.generation_config.eos_token_id = list(range(model.config.vocab_size))
    calls = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        ro = HFRollout(prefill_once=True, group_size=4, max_new_tokens=9).generate(
            model, tok, two_prompts(tok)
        )
    finally:
        hook.remove()
    assert len(calls) == 1 and ro.completion_mask.shape == (8, 1) and ro.completion_mask.all()


def test_prompt_key_values_stay_single_and_completions_fill_one_buffer(tiny):
    """Every decode step sees the prompt key/values once per prompt ([B, ...]) and the rows' own key/values
    as growing views of one preallocated [B, h, G, C, d] buffer (no concatenation)."""
    seen: list[tuple] = []

    def spy(module, query, key, value, *args, **kwargs):
        from longact_pl.rollout.shared_decode import _ACTIVE

        cache = _ACTIVE.get()
        pk_t, pv = cache.prefix[module.layer_idx]
        own_k, _ = cache.own[module.layer_idx]
        seen.append(
            (pv.shape[0], query.shape[0], key.shape[3], own_k.shape, key.data_ptr() == own_k.data_ptr())
        )
        return decode_attention(module, query, key, value, *args, **kwargs)

    AttentionInterface.register(ATTN_NAME, spy)
    try:
        HFRollout(prefill_once=True, group_size=4, max_new_tokens=4).generate(
            tiny.model, tiny.tokenizer, two_prompts(tiny.tokenizer), seed=0
        )
    finally:
        AttentionInterface.register(ATTN_NAME, decode_attention)
    cfg = tiny.model.config
    buffer = (2, cfg.num_key_value_heads, 4, 4, cfg.hidden_size // cfg.num_attention_heads)
    want = [(2, 8, t, buffer, True) for t in (1, 2, 3) for _ in range(cfg.num_hidden_layers)]
    assert seen == want  # 3 decode forwards for 4 tokens: the first comes from the prefill


def test_generation_settings_it_does_not_apply_keep_generate(tiny):
    """A checkpoint's repetition penalty: the engine keeps ``generate`` (which applies it), so the samples
    are ``rollout=hf``'s for the seed."""
    model, tok = tiny.model, tiny.tokenizer
    model.generation_config.repetition_penalty = 1.3
    engine = HFRollout(prefill_once=True, group_size=3, max_new_tokens=6)
    assert not engine.lean_decoding(model)
    want = HFRollout(group_size=3, max_new_tokens=6).generate(model, tok, two_prompts(tok), seed=2)
    got = engine.generate(model, tok, two_prompts(tok), seed=2)
    assert torch.equal(got.input_ids, want.input_ids)


@pytest.mark.parametrize("field,value", [("decode", "fast"), ("sampler", "gumbel")])
def test_bad_engine_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"rollout.{field}"):
        HFRollout(prefill_once=True, **{field: value})


def test_a_rank_whose_rows_ended_keeps_forwarding_while_another_runs(tiny, monkeypatch):
    """FSDP over several ranks (sharded forwards are collectives): this rank's rows all end at their first
    token, another rank runs 3 more tokens, so this rank runs 3 more forwards, on padding, drawing nothing."""
    from longact_pl.rollout import shared_decode

    model, tok = tiny.model, tiny.tokenizer
    model.generation_config.eos_token_id = list(range(model.config.vocab_size))
    others = iter([True, True, True, False])
    flags: list[bool] = []

    def all_ranks(running, device):
        flags.append(running)
        return running or next(others)

    monkeypatch.setattr(shared_decode, "lockstep_ranks", lambda policy: True)
    monkeypatch.setattr(shared_decode, "any_rank_running", all_ranks)
    inputs: list[torch.Tensor] = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: inputs.append(i[0].clone()))
    try:
        ro = HFRollout(prefill_once=True, group_size=2, max_new_tokens=9).generate(
            model, tok, two_prompts(tok)
        )
    finally:
        hook.remove()
    assert flags == [False] * 4 and len(inputs) == 4  # the prefill, then 3 lock-step forwards
    assert all(x.shape == (4, 1) for x in inputs[1:])  # the tokens just drawn, then padding
    assert (
        torch.equal(inputs[1][:, 0], ro.input_ids[:, -1])
        and (torch.cat(inputs[2:]) == tok.pad_token_id).all()
    )
    assert ro.completion_mask.shape == (4, 1)


def test_lockstep_only_for_sharded_policies_over_several_ranks(tiny):
    from longact_pl.rollout.shared_decode import lockstep_ranks

    assert not lockstep_ranks(tiny.model)  # one process
    tiny.model._is_fsdp_managed_module = True  # what longact_pl.strategies marks; still one process
    assert not lockstep_ranks(tiny.model)
