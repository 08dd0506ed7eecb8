import functools

import pytest
import torch

from longact_pl.models.tiny import tiny_llama, tiny_qwen3
from longact_pl.ops.logprobs import completion_logprobs
from longact_pl.ops.shared_prefix import group_spans, grouped_completion_logprobs

G, P, C = 3, 12, 6


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(vocab: int, groups: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups of G rows sharing a prompt; group b has 4*b left-pad tokens; row r ends r tokens early."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (groups * G, P + C), generator=gen)
    mask = torch.ones_like(ids)
    for b in range(groups):
        rows = slice(b * G, (b + 1) * G)
        ids[rows, :P] = ids[b * G, :P]
        ids[rows, : 4 * b], mask[rows, : 4 * b] = 0, 0
        for r in range(1, G):
            ids[b * G + r, -r:], mask[b * G + r, -r:] = 0, 0  # EOS padding: unequal completion lengths
    return ids, mask


def _run(model, fn, ids, mask):
    """Log-probs, entropy and every parameter gradient of a masked loss over the log-probs."""
    model.zero_grad(set_to_none=True)
    comp = mask[:, -C:].float()
    logp, ent = fn(model, ids, mask)
    weights = torch.linspace(-1.0, 2.0, ids.shape[0])[:, None]  # distinct per-row "advantages"
    (logp * weights * comp).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach() * comp, ent * comp, grads


def _naive(model, ids, mask):
    return completion_logprobs(model, ids, mask, C, temperature=0.7, with_entropy=True)


def _assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=1e-5)
    assert got[2].keys() == want[2].keys() and len(want[2]) > 0
    for name, g in want[2].items():
        scale = g.abs().max().clamp(min=1e-8)
        torch.testing.assert_close(got[2][name] / scale, g / scale, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen3], ids=["llama", "qwen3"])
@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "ckpt"])
def test_matches_naive_values_and_all_grads(build, ckpt):
    model = build(seed=0, gradient_checkpointing=ckpt).model.train()
    ids, mask = _batch(model.config.vocab_size)
    want = _run(model, _naive, ids, mask)
    ours = functools.partial(
        grouped_completion_logprobs, completion_width=C, group_size=G, temperature=0.7, with_entropy=True
    )
    got = _run(model, lambda m, i, a: ours(m, i, a), ids, mask)
    _assert_same(got, want)
    # the prompt gets its gradient through the shared key/values: embeddings of prompt tokens are trained
    prompt_tok = int(ids[0, P - 1])
    assert got[2]["model.embed_tokens.weight"][prompt_tok].abs().sum() > 0
    chunked = _run(model, lambda m, i, a: ours(m, i, a, chunk_size=5), ids, mask)
    _assert_same(chunked, want)
    assert not any(getattr(m, "_can_checkpoint_with_cache", False) for m in model.modules())


def test_one_token_completion_and_single_row_groups(tiny):
    model = tiny.model.train()
    ids, mask = _batch(model.config.vocab_size)
    ids, mask = ids[:, : P + 1], mask[:, : P + 1]
    naive = completion_logprobs(model, ids, mask, 1, temperature=1.0)[0]
    torch.testing.assert_close(
        grouped_completion_logprobs(model, ids, mask, 1, G)[0], naive, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        grouped_completion_logprobs(model, ids, mask, 1, 1)[0], naive, atol=1e-5, rtol=0
    )


def test_auto_groups_handle_any_row_order(tiny):
    model = tiny.model.eval()
    ids, mask = _batch(model.config.vocab_size)
    order = torch.tensor([0, 1, 3, 4, 2, 5])  # runs: [0, 1], [3, 4], [2], [5]
    ids, mask = ids[order], mask[order]
    assert group_spans(ids, mask, P, None) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    comp = mask[:, -C:]
    with torch.no_grad():
        want = completion_logprobs(model, ids, mask, C)[0] * comp
        got = grouped_completion_logprobs(model, ids, mask, C, None)[0] * comp
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="same prompt"):
        grouped_completion_logprobs(model, ids, mask, C, G)
    with pytest.raises(ValueError, match="whole groups"):
        grouped_completion_logprobs(model, ids[:4], mask[:4], C, G)


def test_row_groups_fix_the_spans_whatever_the_prompts(tiny):
    model = tiny.model.eval()
    ids, mask = _batch(model.config.vocab_size)
    ids[G:], mask[G:] = ids[:G].clone(), mask[:G].clone()  # group 1 repeats group 0's prompt
    assert group_spans(ids, mask, P, None) == [(0, 2 * G)]  # content-based runs merge the two groups
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    assert group_spans(ids, mask, P, None, row_groups=groups) == [(0, G), (G, 2 * G)]
    assert group_spans(ids, mask, P, None, row_groups=torch.tensor([4, 4, 7, 7, 7, 2])) == [
        (0, 2), (2, 5), (5, 6),
    ]  # fmt: skip
    calls = []
    with torch.no_grad():
        got = grouped_completion_logprobs(
            model, ids, mask, C, None, token_mask_hook=calls.append, row_groups=groups
        )[0]
        want = completion_logprobs(model, ids, mask, C)[0]
    torch.testing.assert_close(got * mask[:, -C:], want * mask[:, -C:], atol=1e-5, rtol=0)
    prompt_masks = {id(c) for c in calls if c is not None and c.shape[0] == 1}
    assert len(prompt_masks) == 2  # one prompt pass per group (the same mask told at every layer)
    other = _batch(model.config.vocab_size, seed=1)[0]
    ids[1, :P] = other[0, :P]
    with pytest.raises(ValueError, match="same row_groups index"):
        group_spans(ids, mask, P, None, row_groups=groups)
    with pytest.raises(ValueError, match="shape"):
        group_spans(ids, mask, P, None, row_groups=groups[:4])


@pytest.mark.parametrize("interleave", [False, True], ids=["two_pass", "interleaved"])
def test_token_mask_hook_counts_prompt_tokens_once(tiny, interleave):
    model = tiny.model.train()
    ids, mask = _batch(model.config.vocab_size)
    calls: list[torch.Tensor | None] = []
    seen: list[int] = []
    handle = model.model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda mod, inp, out: seen.append(out.shape[0] * out.shape[1])
    )
    try:
        grouped_completion_logprobs(
            model, ids, mask, C, G, token_mask_hook=calls.append, interleave=interleave
        )
    finally:
        handle.remove()
    shapes = [None if c is None else tuple(c.shape) for c in calls]
    layers = model.config.num_hidden_layers if interleave else 1  # interleaved: told around each layer run
    assert shapes == [(1, P), None, (G, C), None] * layers + [(1, P - 4), None, (G, C), None] * layers
    masks = [c for c in calls if c is not None]
    layer0 = [m for k, m in enumerate(masks) if (k // 2) % layers == 0]
    assert [m.numel() for m in layer0] == seen  # each mask is aligned with the forward that follows it
    assert all(masks[k] is masks[k % 2] for k in range(2 * layers))  # one mask object per run, every layer
    assert torch.equal(masks[1], mask[:G, P:].bool()) and masks[0].all()
    runs = list({id(m): m for m in masks}.values())
    assert sum(int(m.sum()) for m in runs) == int(mask[::G, :P].sum() + mask[:, P:].sum())


def test_reentrant_checkpointing_is_refused():
    model = tiny_llama(seed=0).model
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    ids, mask = _batch(model.config.vocab_size)
    with pytest.raises(ValueError, match="non-reentrant"):
        grouped_completion_logprobs(model, ids, mask, C, G)


def test_bf16_autocast_close_to_naive(tiny_any):
    model = tiny_any.model.train()
    ids, mask = _batch(model.config.vocab_size)
    comp = mask[:, -C:].float()
    with torch.autocast("cpu", torch.bfloat16):
        want = completion_logprobs(model, ids, mask, C)[0]
        got = grouped_completion_logprobs(model, ids, mask, C, G)[0]
        (got * comp).sum().backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got * comp, want.detach() * comp, atol=0.05, rtol=0.01)
    assert all(p.grad is not None for p in model.parameters())
