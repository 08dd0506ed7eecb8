import pytest
import torch

from longact_pl.ops.chunked import (
    _TargetLogSoftmax,
    chunked_completion_logprobs,
    head_logprobs,
    lm_head_of,
)
from longact_pl.ops.head_blocks import rows_per_block
from longact_pl.ops.logprobs import completion_logprobs, token_entropy, token_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(10, vocab, (3, 14), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0  # left padding
    ids[2, -2:], mask[2, -2:] = 0, 0  # EOS padding
    return ids, mask


def _grads(model, logp, mask):
    model.zero_grad(set_to_none=True)
    (logp * mask * torch.arange(1.0, 4.0)[:, None]).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 7])
def test_chunked_matches_full_values_and_grads(tiny_any, chunk):
    model = tiny_any.model.train()
    ids, mask = _batch(model.config.vocab_size)
    comp = mask[:, -5:].float()
    want, want_ent = completion_logprobs(model, ids, mask, 5, temperature=0.7, with_entropy=True)
    want_grads = _grads(model, want, comp)
    got, ent = chunked_completion_logprobs(
        model, ids, mask, 5, temperature=0.7, with_entropy=True, chunk_size=chunk
    )
    got_grads = _grads(model, got, comp)
    torch.testing.assert_close(got * comp, want.detach() * comp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent * comp, want_ent * comp, atol=1e-4, rtol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    for name, g in want_grads.items():
        scale = g.abs().max().clamp(min=1e-8)
        torch.testing.assert_close(got_grads[name] / scale, g / scale, atol=1e-5, rtol=0, msg=name)


def test_head_logprobs_with_bias_matches_token_logprobs():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 8, generator=gen, requires_grad=True)
    weight = torch.randn(11, 8, generator=gen, requires_grad=True)
    bias = torch.randn(11, generator=gen, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5), generator=gen)
    logits = hidden @ weight.T + bias
    want = token_logprobs(logits, targets, temperature=1.3)
    want_grads = torch.autograd.grad(want.sum(), (hidden, weight, bias))
    got, ent = head_logprobs(hidden, weight, bias, targets, 1.3, with_entropy=True, chunk_size=3)
    got_grads = torch.autograd.grad(got.sum(), (hidden, weight, bias))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent, token_entropy(logits, 1.3), atol=1e-6, rtol=1e-6)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not ent.requires_grad


def test_backward_recomputes_chunks_instead_of_saving_logits():
    """With chunking, no [t, V] tensor is saved for the backward; without it, the logits are."""
    hidden = torch.randn(2, 64, 8, requires_grad=True)
    weight = torch.randn(500, 8, requires_grad=True)
    targets = torch.randint(0, 500, (2, 64))
    for chunk, expect_big in ((16, False), (None, True)):
        saved: list[torch.Size] = []

        def pack(t, saved=saved):
            saved.append(t.shape)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logp, _ = head_logprobs(hidden, weight, None, targets, chunk_size=chunk)
        big = [s for s in saved if s.numel() >= 16 * 500]
        assert bool(big) == expect_big, (chunk, saved)
        logp.sum().backward()
        assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
        hidden.grad = weight.grad = None


def test_bad_chunk_and_head_checks(tiny):
    ids, mask = _batch(tiny.model.config.vocab_size)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_completion_logprobs(tiny.model, ids, mask, 5, chunk_size=0)
    weight, bias = lm_head_of(tiny.model)
    assert weight is tiny.model.get_output_embeddings().weight and bias is None


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_one_pass_head_equals_autograds_log_softmax_under_bf16_autocast(temperature):
    """The head's own backward (``(onehot - p) / T`` from the saved softmax) against autograd through
    ``log_softmax(logits.float() / T)``: the same log-probs and entropy bit for bit, the same gradients
    up to summation order, under bf16 autocast as in training."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 16, generator=gen, requires_grad=True)  # float32, as the decoder's last norm
    weight = torch.randn(50, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (6,), generator=gen)
    upstream = torch.randn(6, generator=gen)  # a loss that weights tokens differently
    with torch.autocast("cpu", torch.bfloat16):
        full = torch.log_softmax(torch.nn.functional.linear(hidden, weight).float() / temperature, -1)
        want = full.gather(-1, targets[:, None]).squeeze(-1)  # [6]
        want_ent = -(full.exp() * full).sum(-1)  # [6]
        want_grads = torch.autograd.grad((want * upstream).sum(), (hidden, weight))
        got, ent = head_logprobs(hidden[None], weight, None, targets[None], temperature, with_entropy=True)
        got_grads = torch.autograd.grad((got[0] * upstream).sum(), (hidden, weight))
    assert torch.equal(got[0], want) and torch.equal(ent[0], want_ent.detach())
    for a, b in zip(got_grads, want_grads):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)  # bf16 matmuls of ~1-ulp different grads
        assert a.abs().max() > 1e-2


def test_entropy_bonus_keeps_the_entropys_gradient():
    """``entropy_grad=True`` (an entropy bonus): the entropy's gradient is ``token_entropy``'s."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 4, 8, generator=gen, requires_grad=True)
    weight = torch.randn(11, 8, generator=gen)
    targets = torch.randint(0, 11, (1, 4), generator=gen)
    _, ent = head_logprobs(hidden, weight, None, targets, 0.7, with_entropy=True, entropy_grad=True)
    (got,) = torch.autograd.grad(ent.sum(), hidden)
    (want,) = torch.autograd.grad(token_entropy(hidden @ weight.T, 0.7, grad=True).sum(), hidden)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_blocked_head_is_bit_identical_to_whole_tensor_ops(dtype, temperature):
    """At a real vocabulary (several row blocks, the last one partial) the blocked forward and the
    logits-dtype backward give exactly the whole-tensor values: log-probs, entropy and the logits' gradient
    ``((onehot - p) * s)`` computed in float32 and rounded once."""
    rows, vocab = 2 * rows_per_block(49152, "cpu") + 3, 49152
    gen = torch.Generator().manual_seed(1)
    logits = (4 * torch.randn(rows, vocab, generator=gen)).to(dtype).requires_grad_(True)
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    upstream = torch.randn(rows, generator=gen)
    logp, ent = _TargetLogSoftmax.apply(logits, targets, temperature, True)
    (grad,) = torch.autograd.grad((logp * upstream).sum(), logits)
    full = torch.log_softmax(logits.detach().float() / temperature, -1)  # [t, V]
    p = full.exp()  # [t, V]
    scale = upstream / temperature  # [t]
    want = p * scale.neg()[:, None]  # [t, V]
    want.scatter_add_(-1, targets[:, None], scale[:, None])
    assert torch.equal(logp, full.gather(-1, targets[:, None])[:, 0])
    assert torch.equal(ent, -(p * full).sum(-1))
    assert grad.dtype == dtype and torch.equal(grad, want.to(dtype))
    with torch.no_grad():  # a no-grad pass (reference, old policy) keeps no softmax, same values
        assert torch.equal(_TargetLogSoftmax.apply(logits, targets, temperature, False)[0], logp)


def test_a_second_backward_through_the_head_is_refused_not_wrong():
    """The backward turns the saved softmax into the gradient in place: a second backward (retain_graph)
    must fail autograd's version check instead of using the overwritten buffer."""
    logits = torch.randn(3, 20, requires_grad=True)
    logp, _ = _TargetLogSoftmax.apply(logits, torch.tensor([1, 2, 3]), 1.0, False)
    logp.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        logp.sum().backward()
