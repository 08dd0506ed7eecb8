import pytest
import torch

from longact_pl.ops.logprobs import completion_logprobs
from longact_pl.rollout.hf import HFRollout
from longact_pl.rollout.types import concat_rollouts
from tests.conftest import chat_ids


def _prompts(tok):
    return [
        chat_ids(tok, "Tell me a number."),
        chat_ids(tok, "A much longer question about the colour of the sky?"),
    ]


def test_shapes_and_layout(tiny):
    engine = HFRollout(group_size=3, max_new_tokens=7)
    prompts = _prompts(tiny.tokenizer)
    ro = engine.generate(tiny.model, tiny.tokenizer, prompts, seed=0)
    n, width = 6, max(len(p) for p in prompts)
    assert ro.input_ids.shape == (n, width + 7) and ro.attention_mask.shape == (n, width + 7)
    assert ro.completion_mask.shape == (n, 7) and ro.behaviour_logp.shape == (n, 7)
    assert len(ro.completions) == n and ro.prompt_width == width
    # rows of one group share the prompt; the shorter prompt is left-padded
    assert torch.equal(ro.input_ids[3, :width], ro.input_ids[5, :width])
    assert ro.attention_mask[0, : width - len(prompts[0])].sum() == 0
    assert torch.equal(ro.attention_mask[:, width:], ro.completion_mask)


def test_tokens_after_eos_are_masked(tiny):
    engine = HFRollout(group_size=4, max_new_tokens=12)
    prompts = _prompts(tiny.tokenizer)
    free = engine.generate(tiny.model, tiny.tokenizer, prompts, seed=3)
    # Declare a token the model samples early as EOS, then regenerate with the same seed.
    eos = int(free.input_ids[0, free.prompt_width + 2])
    tiny.model.generation_config.eos_token_id = eos
    ro = engine.generate(tiny.model, tiny.tokenizer, prompts, seed=3)
    comp = ro.input_ids[:, ro.prompt_width :]
    for row in range(comp.shape[0]):
        hits = (comp[row] == eos).nonzero().flatten().tolist()
        if hits:
            first = hits[0]
            assert ro.completion_mask[row, : first + 1].all()
            assert not ro.completion_mask[row, first + 1 :].any()
            assert (ro.behaviour_logp[row, first + 1 :] == 0).all()
    assert ro.completion_mask[0, 3:].sum() == 0  # row 0 stops at the token we declared EOS


def test_seeding_reproduces_samples(tiny):
    engine = HFRollout(group_size=3, max_new_tokens=6)
    prompts = _prompts(tiny.tokenizer)
    a = engine.generate(tiny.model, tiny.tokenizer, prompts, seed=11)
    b = engine.generate(tiny.model, tiny.tokenizer, prompts, seed=11)
    c = engine.generate(tiny.model, tiny.tokenizer, prompts, seed=12)
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_behaviour_logp_matches_training_forward(tiny):
    engine = HFRollout(group_size=2, max_new_tokens=5, temperature=0.7)
    ro = engine.generate(tiny.model, tiny.tokenizer, _prompts(tiny.tokenizer), seed=0)
    logp, _ = completion_logprobs(tiny.model, ro.input_ids, ro.attention_mask, 5, temperature=0.7)
    torch.testing.assert_close(logp * ro.completion_mask, ro.behaviour_logp, atol=1e-4, rtol=1e-4)


def test_greedy_gives_one_row_per_prompt(tiny):
    engine = HFRollout(group_size=4, max_new_tokens=4)
    ro = engine.generate(tiny.model, tiny.tokenizer, _prompts(tiny.tokenizer), greedy=True)
    again = engine.generate(tiny.model, tiny.tokenizer, _prompts(tiny.tokenizer), greedy=True, seed=99)
    assert ro.input_ids.shape[0] == 2 and torch.equal(ro.input_ids, again.input_ids)


def test_concat_and_select_keep_layout(tiny):
    engine = HFRollout(group_size=2, max_new_tokens=5)
    p = _prompts(tiny.tokenizer)
    a = engine.generate(tiny.model, tiny.tokenizer, p[:1], seed=0)
    b = engine.generate(tiny.model, tiny.tokenizer, p[1:], seed=1, max_new_tokens=3)
    both = concat_rollouts([a, b], tiny.tokenizer.pad_token_id)
    assert both.input_ids.shape == (4, max(a.prompt_width, b.prompt_width) + 5)
    logp, _ = completion_logprobs(
        tiny.model, both.input_ids, both.attention_mask, 5, temperature=engine.temperature
    )
    torch.testing.assert_close(logp * both.completion_mask, both.behaviour_logp, atol=1e-4, rtol=1e-4)
    second = both.select_groups(torch.tensor([False, True]))
    assert second.completions == b.completions


@pytest.mark.parametrize("field,value", [("group_size", 1), ("temperature", 0.0), ("top_p", 1.5)])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"rollout.{field}"):
        HFRollout(**{field: value})


def test_samples_equal_generate_with_num_return_sequences(tiny):
    """The engine repeats prompts itself (so both HF paths share one code path): same samples as HF's own
    ``num_return_sequences`` for a seed."""
    from longact_pl.rollout.batch_builder import left_pad

    prompts = _prompts(tiny.tokenizer)
    ro = HFRollout(group_size=3, max_new_tokens=6).generate(tiny.model, tiny.tokenizer, prompts, seed=4)
    ids, mask = left_pad(prompts, tiny.tokenizer.pad_token_id)
    torch.manual_seed(4)
    out = tiny.model.generate(
        input_ids=ids, attention_mask=mask, do_sample=True, num_return_sequences=3, max_new_tokens=6,
        temperature=0.7, top_p=1.0, top_k=0, pad_token_id=tiny.tokenizer.pad_token_id,
        eos_token_id=tiny.model.generation_config.eos_token_id,
    )  # fmt: skip
    real = ro.completion_mask.bool()
    assert torch.equal(ro.input_ids[:, ro.prompt_width :][real], out[:, ids.shape[1] :][real])


def test_eos_ids_resolved_once_for_every_engine(tiny):
    from types import SimpleNamespace

    from longact_pl.rollout.batch_builder import eos_token_ids

    tok = SimpleNamespace(eos_token_id=7)

    def policy(eos):
        return SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos))

    assert eos_token_ids(policy([3, 4]), tok) == [3, 4] and eos_token_ids(policy(5), tok) == [5]
    assert eos_token_ids(policy(None), tok) == [7] and eos_token_ids(SimpleNamespace(), tok) == [7]


def test_build_batch_masks_after_eos_and_beyond_lengths(tiny):
    from longact_pl.rollout.batch_builder import build_batch

    tok = tiny.tokenizer
    prompt_ids, prompt_mask = torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]])
    completion = torch.tensor([[11, 2, 12], [13, 14, 15]])  # [N, C]; row 0 ends at EOS 2, row 1 has 2 tokens
    behaviour = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, -9.0]])
    ro = build_batch(prompt_ids, prompt_mask, completion, behaviour, 2, [2], tok, torch.tensor([3, 2]))
    assert ro.completion_mask.tolist() == [[1, 1, 0], [1, 1, 0]]
    assert ro.input_ids.tolist() == [[0, 5, 6, 11, 2, tok.pad_token_id], [0, 5, 6, 13, 14, tok.pad_token_id]]
    assert ro.behaviour_logp.tolist() == [[-1.0, -2.0, 0.0], [-0.5, -0.25, 0.0]]
    assert ro.attention_mask.tolist() == [[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0]]
    assert (ro.prompt_width, ro.group_size, len(ro.completions)) == (3, 2, 2)
