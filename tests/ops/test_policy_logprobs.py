import logging

import pytest
import torch

from longact_pl.models.tiny import tiny_qwen3
from longact_pl.ops.logprob_plan import plan_logprobs
from longact_pl.ops.logprobs import completion_logprobs
from longact_pl.ops.policy_logprobs import LogprobCall, LogprobPass, trim_left_padding
from tests.ops.test_shared_prefix import C, G, P, _assert_same, _batch, _run


def _pass(lp: LogprobPass, calls: list | None = None):
    hook = calls.append if calls is not None else None
    return lambda m, i, a: lp(m, LogprobCall(i, a, C, temperature=0.7, with_entropy=True), hook)


@pytest.mark.parametrize("chunk", [None, 5])
def test_shared_and_per_row_paths_give_the_same_values_and_grads(tiny_any, chunk):
    model = tiny_any.model.train()
    ids, mask = _batch(model.config.vocab_size)
    naive = _run(model, lambda m, i, a: completion_logprobs(m, i, a, C, 0.7, True), ids, mask)
    shared_calls, row_calls = [], []
    shared = LogprobPass.for_model(model, shared_prefix=True, chunk_size=chunk)
    per_row = LogprobPass.for_model(model, shared_prefix=False, chunk_size=chunk)
    _assert_same(_run(model, _pass(shared, shared_calls), ids, mask), naive)
    _assert_same(_run(model, _pass(per_row, row_calls), ids, mask), naive)
    assert shared.plan.path == "padded" and per_row.plan.path == "per_row"  # no fallback happened
    # shared: a prompt run and a completion run per group and layer (interleaved); per row: one forward over
    # the trimmed rows
    layers = model.config.num_hidden_layers
    assert shared.plan.interleave
    assert [None if c is None else tuple(c.shape) for c in shared_calls] == [
        (1, P),
        None,
        (G, C),
        None,
    ] * layers + [
        (1, P - 4),
        None,
        (G, C),
        None,
    ] * layers
    assert [None if c is None else tuple(c.shape) for c in row_calls] == [(2 * G, P + C), None]


def test_unsupported_model_falls_back_to_per_row_once(caplog):
    model = tiny_qwen3(seed=0).model.eval()
    model.config.use_sliding_window = True  # what the shared caches refuse (the forward ignores it)
    ids, mask = _batch(model.config.vocab_size)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        lp = LogprobPass.for_model(model, shared_prefix=True, chunk_size=None)  # warns here, once
        got = lp(model, LogprobCall(ids, mask, C))[0]
        lp(model, LogprobCall(ids, mask, C))
    assert lp.plan.path == "per_row" and "full-attention" in lp.plan.reason
    assert sum("one row at a time" in r.message for r in caplog.records) == 1
    with torch.no_grad():
        want = completion_logprobs(model, *trim_left_padding(ids, mask), C)[0]
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_trim_left_padding_drops_only_all_padding_columns():
    ids = torch.tensor([[0, 0, 5, 6], [0, 3, 4, 6]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    got_ids, got_mask = trim_left_padding(ids, mask)
    assert torch.equal(got_ids, ids[:, 1:]) and torch.equal(got_mask, mask[:, 1:])


def test_bad_chunk_size_names_the_field():
    with pytest.raises(ValueError, match="module.logprobs.chunk_size"):
        plan_logprobs(tiny_qwen3(seed=0).model, chunk_size=0)


def _entropy_loss_grads(model, fn, ids, mask):
    """Every parameter gradient of ``sum(logp * w) - 0.5 * sum(entropy)`` over the valid completion tokens."""
    model.zero_grad(set_to_none=True)
    comp = mask[:, -C:].float()
    logp, ent = fn(model, ids, mask)
    weights = torch.linspace(-1.0, 2.0, ids.shape[0])[:, None]
    ((logp * weights - 0.5 * ent) * comp).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("shared", "chunk"), [(True, 5), (False, 5), (False, None)])
def test_entropy_with_gradient_matches_autograd_through_full_logits(shared, chunk):
    """The entropy bonus backpropagates through the chunked (checkpointed) head and the per-row path alike."""
    model = tiny_qwen3(seed=0).model.train()
    ids, mask = _batch(model.config.vocab_size)
    want = _entropy_loss_grads(
        model, lambda m, i, a: completion_logprobs(m, i, a, C, 0.7, True, entropy_grad=True), ids, mask
    )
    lp = LogprobPass.for_model(model, shared_prefix=shared, chunk_size=chunk, entropy_grad=True)
    got = _entropy_loss_grads(model, _pass(lp), ids, mask)
    for name, g in want.items():
        scale = g.abs().max().clamp(min=1e-8)
        torch.testing.assert_close(got[name] / scale, g / scale, atol=1e-5, rtol=0, msg=name)
    # the entropy term does change the gradient (a detached entropy would leave only the log-prob part)
    plain = _entropy_loss_grads(model, _pass(LogprobPass.for_model(model, shared, chunk)), ids, mask)
    name = "lm_head.weight" if "lm_head.weight" in want else next(iter(want))
    assert not torch.allclose(plain[name], want[name], atol=1e-6)


def test_entropy_is_detached_by_default():
    model = tiny_qwen3(seed=0).model.train()
    ids, mask = _batch(model.config.vocab_size)
    for shared, chunk in [(True, 5), (False, 5), (False, None)]:
        lp = LogprobPass.for_model(model, shared, chunk)
        logp, ent = lp(model, LogprobCall(ids, mask, C, 0.7, with_entropy=True))
        assert logp.requires_grad and not ent.requires_grad
