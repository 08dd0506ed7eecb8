"""Packed completions (one row, no padding, each on its group's prompt) equal the padded and naive paths."""

import logging

import pytest
import torch

from longact_pl.masking.stats import StatsCollector
from longact_pl.models.tiny import tiny_llama, tiny_qwen3
from longact_pl.ops.logprob_plan import plan_logprobs
from longact_pl.ops.logprobs import completion_logprobs
from longact_pl.ops.packed import PackedCompletions
from longact_pl.ops.policy_logprobs import LogprobCall, LogprobPass
from longact_pl.ops.shared_prefix import grouped_completion_logprobs
from tests.ops.test_shared_prefix import _assert_same

pytestmark = pytest.mark.usefixtures("one_thread")

P, C = 10, 7
LENGTHS = [[7, 1, 3], [2, 7, 5]]  # completion lengths per group: 1-token and full-width rows mixed


def _batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two groups of 3 rows; group 1's prompt has 3 left-pad tokens; right-padded mixed-length completions."""
    gen = torch.Generator().manual_seed(0)
    rows = [len(g) for g in LENGTHS]
    ids = torch.randint(10, vocab, (sum(rows), P + C), generator=gen)
    mask = torch.ones_like(ids)
    for b, lengths in enumerate(LENGTHS):
        first = sum(rows[:b])
        ids[first : first + rows[b], :P] = ids[first, :P]
        ids[first : first + rows[b], : 3 * b], mask[first : first + rows[b], : 3 * b] = 0, 0
        for r, length in enumerate(lengths):
            ids[first + r, P + length :], mask[first + r, P + length :] = 0, 0
    return ids, mask


def _run(model, fn, ids, mask):
    """Masked log-probs, entropy and all parameter gradients of a loss with distinct per-row weights."""
    model.zero_grad(set_to_none=True)
    comp = mask[:, -C:].float()
    logp, ent = fn(model, ids, mask)
    weights = torch.linspace(-1.0, 2.0, ids.shape[0], device=ids.device)[:, None]
    (logp * weights * comp).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach() * comp, ent * comp, grads


def _grouped(pack: bool, **kwargs):
    def fn(model, ids, mask):
        return grouped_completion_logprobs(
            model, ids, mask, C, None, 0.7, True, pack=pack, row_groups=torch.tensor([0, 0, 0, 1, 1, 1]),
            **kwargs,
        )  # fmt: skip

    return fn


def _naive(model, ids, mask):
    return completion_logprobs(model, ids, mask, C, temperature=0.7, with_entropy=True)


@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen3], ids=["llama", "qwen3"])
@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "ckpt"])
def test_packed_equals_padded_and_naive_values_and_all_grads(build, ckpt):
    model = build(seed=0, gradient_checkpointing=ckpt).model.train()
    ids, mask = _batch(model.config.vocab_size)
    want = _run(model, _naive, ids, mask)
    padded = _run(model, _grouped(False), ids, mask)
    packed = _run(model, _grouped(True), ids, mask)
    _assert_same(padded, want)
    _assert_same(packed, want)
    _assert_same(_run(model, _grouped(True, chunk_size=4), ids, mask), want)
    # the prompts still get their gradient through the shared key/values
    assert packed[2]["model.embed_tokens.weight"][int(ids[0, P - 1])].abs().sum() > 0


def test_eager_attention_takes_an_additive_mask():
    model = tiny_llama(seed=0).model.train()
    model.config._attn_implementation = "eager"
    ids, mask = _batch(model.config.vocab_size)
    _assert_same(_run(model, _grouped(True), ids, mask), _run(model, _naive, ids, mask))


def test_layout_by_hand():
    """Spans with prompts of 2 and 1 tokens; rows of 2, 1 (span 0) and 2 (span 1) tokens."""
    ids = torch.tensor([[5, 6, 0], [7, 0, 0], [8, 9, 0]])
    mask = (ids > 0).long()
    layout = PackedCompletions.build(ids, mask, torch.tensor([0, 0, 1]), torch.tensor([2, 1]))
    assert layout.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert layout.position_ids.tolist() == [[2, 3, 2, 1, 2]]  # prompt length of the owner + column
    assert layout.owner.tolist() == [0, 0, 0, 1, 1] and layout.seq.tolist() == [0, 0, 1, 2, 2]
    assert layout.cu_seqlens.tolist() == [0, 2, 3, 5]
    model = tiny_llama(seed=0).model
    got = layout.attention_mask(model, torch.float32)[0, 0].int().tolist()
    # keys: prompt 0 (2), prompt 1 (1), then the 5 packed tokens
    assert got == [
        [1, 1, 0, 1, 0, 0, 0, 0],
        [1, 1, 0, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 1, 0, 0],
        [0, 0, 1, 0, 0, 0, 1, 0],
        [0, 0, 1, 0, 0, 0, 1, 1],
    ]
    assert layout.scatter(torch.arange(5.0), 3, 3).tolist() == [[0, 1, 0], [2, 0, 0], [3, 4, 0]]
    with pytest.raises(ValueError, match="right-padded"):
        PackedCompletions.build(
            ids, torch.tensor([[0, 1, 0], [1, 0, 0], [1, 1, 0]]), torch.zeros(3).long(), torch.tensor([1])
        )


def test_statistics_hooks_see_only_real_tokens_once():
    """LongAct's StatsCollector gathers the same statistics from the packed pass as from the padded one."""
    model = tiny_qwen3(seed=0).model.train()
    ids, mask = _batch(model.config.vocab_size)
    modules = {f"{i}.q": layer.self_attn.q_norm for i, layer in enumerate(model.model.layers)}
    stats, shapes = {}, {}
    for pack in (False, True):
        state = {"mask": None}
        calls = []

        def hook(m, state=state, calls=calls):
            state["mask"] = m
            calls.append(None if m is None else tuple(m.shape))

        collector = StatsCollector(modules, gate=lambda state=state: state["mask"])
        collector.attach()
        try:
            _grouped(pack, token_mask_hook=hook)(model, ids, mask)
        finally:
            collector.detach()
        stats[pack], shapes[pack] = collector.reset(), calls
    real = int(mask[:, P:].sum())
    layers = model.config.num_hidden_layers  # told around each layer run (the interleaved pass)
    assert shapes[True] == [(1, P), None, (1, P - 3), None, (1, real), None] * layers
    for key, want in stats[False].items():
        got = stats[True][key]
        assert got.count == want.count == P + (P - 3) + real
        torch.testing.assert_close(got.sum_abs, want.sum_abs, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got.max_abs, want.max_abs, rtol=1e-5, atol=1e-5)


def _layer_calls(model):
    """Counts of forward and backward calls of the first decoder layer."""
    counts = {"forward": 0, "backward": 0}
    layer = model.model.layers[0]
    layer.register_forward_hook(lambda *a: counts.__setitem__("forward", counts["forward"] + 1))
    layer.register_full_backward_hook(lambda *a: counts.__setitem__("backward", counts["backward"] + 1))
    return counts


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_lock_step_dummies_add_forwards_and_backwards_but_change_nothing(pack):
    model = tiny_llama(seed=0).model.train()
    ids, mask = _batch(model.config.vocab_size)
    want = _run(model, _grouped(pack), ids, mask)
    counts = _layer_calls(model)
    calls = []
    got = _run(model, _grouped(pack, pad_spans=2, token_mask_hook=calls.append), ids, mask)
    _assert_same(got, want)
    forwards = 2 + 2 + (1 if pack else 2 + 2)  # 2 prompts + 2 dummy prompts, then the completion passes
    assert counts == {"forward": forwards, "backward": forwards}  # every forward is in the backward graph
    layers = model.config.num_hidden_layers  # told around each layer run (the interleaved pass)
    assert len(calls) == (2 + (1 if pack else 2)) * 2 * layers  # never told about a dummy forward


def test_one_token_completions_keep_the_completion_pass_in_the_backward():
    """All completions of 1 token: no packed output predicts anything, yet backward runs through it."""
    model = tiny_llama(seed=0).model.train()
    ids, mask = _batch(model.config.vocab_size)
    mask[:, P + 1 :] = 0
    counts = _layer_calls(model)
    _run(model, _grouped(True), ids, mask)
    assert counts == {"forward": 3, "backward": 3}


def test_rows_without_a_call_run_one_dummy_forward_per_span():
    """An empty micro-batch (another rank has more): dummies only, [0, C] log-probs, a backward."""
    model = tiny_llama(seed=0).model.train()
    ids, mask = _batch(model.config.vocab_size)
    for shared, pack, forwards in [(True, True, 3), (True, False, 4), (False, False, 1)]:
        model = tiny_llama(seed=0).model.train()
        lp = LogprobPass.for_model(model, shared_prefix=shared, chunk_size=None, pack_completions=pack)
        counts = _layer_calls(model)
        empty = LogprobCall(ids[:0], mask[:0], C, row_groups=torch.zeros(0).long(), pad_spans=2)
        logp, _ = lp(model, empty)
        assert logp.shape == (0, C)
        logp.sum().backward()
        assert counts == {"forward": forwards, "backward": forwards}


def test_models_that_cannot_pack(caplog):
    model = tiny_llama(seed=0).model
    model.config._attn_implementation = "flash_attention_2"  # never run: the check comes first
    with pytest.raises(ValueError, match="module.logprobs.pack_completions=true.*flash_attention_2"):
        plan_logprobs(model, pack_completions=True)  # refused when the model is configured
    with caplog.at_level(logging.WARNING):
        plan = plan_logprobs(model, pack_completions="auto")
    assert plan.path == "padded" and "flash_attention_2" in plan.reason
    assert sum("module.logprobs.pack_completions" in r.message for r in caplog.records) == 1
    with pytest.raises(ValueError, match="module.logprobs.shared_prefix=true"):
        plan_logprobs(model, shared_prefix=False, pack_completions=True)
    with pytest.raises(ValueError, match="module.logprobs.pack_completions must be"):
        plan_logprobs(model, pack_completions="yes")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen3], ids=["llama", "qwen3"])
def test_packed_equals_naive_on_cuda(build):
    """The same exactness on CUDA SDPA kernels (fp32), where the packed mask takes the masked kernels."""
    model = build(seed=0).model.train().cuda()
    ids, mask = (t.cuda() for t in _batch(model.config.vocab_size))
    packed = _run(model, _grouped(True), ids, mask)
    want = _run(model, _naive, ids, mask)
    _assert_same(packed, want)
