"""The layer-interleaved shared-prefix pass equals the two-pass one bit for bit, and frees the K/V hold.

Values, entropy and every parameter gradient are compared with ``torch.equal``: the interleaved pass runs the
same operations on the same inputs, and autograd accumulates each gradient in the same order (completions
before prompt at every layer, as in the two-pass backward), so nothing is left to a tolerance.
"""

import pytest
import torch

from longact_pl.masking.stats import StatsCollector
from longact_pl.models.tiny import tiny_llama, tiny_qwen3
from longact_pl.ops.interleaved import can_interleave
from longact_pl.ops.logprob_plan import plan_logprobs
from longact_pl.ops.shared_prefix import grouped_completion_logprobs
from tests.ops.test_packed import C, P, _batch

pytestmark = pytest.mark.usefixtures("one_thread")

GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])


def _run(model, ids, mask, **kwargs):
    """Log-probs, entropy (with its gradient) and every parameter gradient of a loss using both."""
    model.zero_grad(set_to_none=True)
    comp = mask[:, -C:].float()
    logp, ent = grouped_completion_logprobs(
        model, ids, mask, C, None, 0.7, True, chunk_size=4, row_groups=GROUPS, entropy_grad=True, **kwargs
    )  # [N, C] each
    weights = torch.linspace(-1.0, 2.0, ids.shape[0])[:, None]  # [N, 1] distinct per-row "advantages"
    (logp * weights * comp + 0.1 * ent * comp).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), ent.detach(), grads


def _assert_equal(got, want):
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[2].keys() == want[2].keys() and len(want[2]) > 0
    for name, g in want[2].items():
        assert torch.equal(got[2][name], g), name


@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen3], ids=["llama", "qwen3"])
@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "ckpt"])
@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_interleaved_equals_two_pass_bit_for_bit(build, ckpt, pack):
    model = build(seed=0, gradient_checkpointing=ckpt).model.train()
    ids, mask = _batch(model.config.vocab_size)
    want = _run(model, ids, mask, pack=pack, pad_spans=1, interleave=False)
    got = _run(model, ids, mask, pack=pack, pad_spans=1, interleave=True)
    _assert_equal(got, want)
    assert got[2]["model.embed_tokens.weight"][ids[0, P - 1]].abs().sum() > 0  # prompts got their gradient


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_bf16_autocast_equal_too(pack):
    model = tiny_qwen3(seed=0, gradient_checkpointing=True).model.train()
    ids, mask = _batch(model.config.vocab_size)
    with torch.autocast("cpu", torch.bfloat16):
        want = _run(model, ids, mask, pack=pack, interleave=False)
        got = _run(model, ids, mask, pack=pack, interleave=True)
    _assert_equal(got, want)


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "ckpt"])
@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split_group"])
def test_statistics_hooks_see_the_same_tokens_once(ckpt, pack, split):
    """LongAct's collector gathers identical statistics: each prompt token once per layer, no recompute.

    ``split``: group 1's prompt is counted in another micro-batch (``count_prompts``), its completions here.
    """
    model = tiny_qwen3(seed=0, gradient_checkpointing=ckpt).model.train()
    ids, mask = _batch(model.config.vocab_size)
    modules = {f"{i}.{n}": getattr(layer.self_attn, n) for i, layer in enumerate(model.model.layers)
               for n in ("q_norm", "k_proj")}  # fmt: skip
    stats = {}
    counted = torch.tensor([True] * 3 + [not split] * 3)  # [N]
    for interleave in (False, True):
        state = {"mask": None}
        collector = StatsCollector(modules, gate=lambda state=state: state["mask"])
        collector.attach()
        try:
            _run(model, ids, mask, pack=pack, pad_spans=1, interleave=interleave, count_prompts=counted,
                 token_mask_hook=lambda m, state=state: state.__setitem__("mask", m))  # fmt: skip
        finally:
            collector.detach()
        stats[interleave] = collector.reset()
    real = int(mask[:, P:].sum())
    assert stats[True].keys() == stats[False].keys() == modules.keys()
    for key, want in stats[False].items():
        got = stats[True][key]
        assert got.count == want.count == P + (0 if split else P - 3) + real
        assert torch.equal(got.sum_abs, want.sum_abs) and torch.equal(got.max_abs, want.max_abs)


def _most_layers_with_kv_grads(model, ids, mask, interleave: bool) -> int:
    """Most layers whose prompt K/V gradients exist at once during the backward (packed, 2 prompts).

    A layer's prompt K/V gradients exist from its completion attention's backward (the gradient of the
    completions' queries, made together with them) until its prompt runs' key projections get theirs.
    """
    events: list[tuple[str, int]] = []

    def watch(index: int, proj: str):
        def hook(module, args, out):  # [1, t, *]: prompts have P or P - 3 tokens, the packed row more
            prompt = out.shape[1] in (P, P - 3)
            if proj == "q" and not prompt:
                out.register_hook(lambda g: events.append(("kv", index)))
            elif proj == "k" and prompt:
                out.register_hook(lambda g: events.append(("done", index)))

        return hook

    handles = [
        getattr(layer.self_attn, f"{proj}_proj").register_forward_hook(watch(i, proj))
        for i, layer in enumerate(model.model.layers)
        for proj in ("q", "k")
    ]
    try:
        logp, _ = grouped_completion_logprobs(
            model, ids, mask, C, None, row_groups=GROUPS, pack=True, interleave=interleave
        )  # [N, C]
        (logp * mask[:, -C:]).sum().backward()
    finally:
        for h in handles:
            h.remove()
    pending: dict[int, int] = {}  # layer -> prompt runs still to take its K/V gradients
    most = 0
    for kind, index in events:
        if kind == "kv":
            pending[index] = 2
        else:
            pending[index] -= 1
            if not pending[index]:
                del pending[index]
        most = max(most, len(pending))
    assert not pending and len(events) == 3 * model.config.num_hidden_layers
    return most


def _held_prompt_keys(model, ids, mask, interleave: bool, monkeypatch) -> int:
    """Prompt keys recorded by the forward that are still alive when the backward starts."""
    import weakref

    from longact_pl.ops import shared_prefix

    refs, update = [], shared_prefix._RecordLayer.update

    def spy(self, keys, values, *args, **kwargs):
        refs.append(weakref.ref(keys))
        return update(self, keys, values, *args, **kwargs)

    monkeypatch.setattr(shared_prefix._RecordLayer, "update", spy)
    logp, _ = grouped_completion_logprobs(
        model, ids, mask, C, None, row_groups=GROUPS, pack=True, interleave=interleave
    )  # [N, C]
    alive = sum(r() is not None for r in refs)
    (logp * mask[:, -C:]).sum().backward()
    return alive


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "ckpt"])
def test_one_layers_kv_gradients_at_a_time(ckpt):
    """Two-pass: every layer's prompt K/V gradients wait for the prompt's backward; interleaved: one."""
    model = tiny_llama(seed=0, gradient_checkpointing=ckpt).model.train()
    ids, mask = _batch(model.config.vocab_size)
    layers = model.config.num_hidden_layers
    assert layers >= 2
    assert _most_layers_with_kv_grads(model, ids, mask, interleave=False) == layers
    assert _most_layers_with_kv_grads(model, ids, mask, interleave=True) == 1


def test_checkpointed_layers_hold_no_prompt_keys_between_forward_and_backward(monkeypatch):
    model = tiny_llama(seed=0, gradient_checkpointing=True).model.train()
    ids, mask = _batch(model.config.vocab_size)
    runs = 2 * model.config.num_hidden_layers  # 2 prompts x layers
    assert _held_prompt_keys(model, ids, mask, False, monkeypatch) == runs  # the checkpoints keep them
    assert _held_prompt_keys(model, ids, mask, True, monkeypatch) == 0  # recomputed in each layer's backward


def test_the_plan_interleaves_where_the_decoder_allows_and_says_so():
    plan = plan_logprobs(tiny_llama(seed=0).model, pack_completions=True)
    assert plan.interleave and "layer by layer" in plan.reason
    assert can_interleave(tiny_qwen3(seed=0).model.model) is None
    no_norm = tiny_llama(seed=0).model
    del no_norm.model.norm
    assert "norm" in can_interleave(no_norm.model)
    per_row = plan_logprobs(tiny_llama(seed=0).model, shared_prefix=False)
    assert not per_row.interleave
