import pytest
import torch
from transformers import GenerationConfig, TopKLogitsWarper, TopPLogitsWarper

from longact_pl.rollout.token_sampling import TokenSampler, _first_above, inverse_cdf, unsupported_settings


def _within(draws: torch.Tensor, probs: torch.Tensor) -> None:
    """Pearson's chi-square of ``draws`` against ``probs`` far below its 1e-6 tail, and no draw of a token
    of probability 0. Tokens expected fewer than 20 times share one bin."""
    n = draws.numel()
    counts = torch.bincount(draws, minlength=probs.numel()).double()  # [V]
    assert (counts[probs == 0] == 0).all()
    expected = probs * n  # [V]
    big = expected >= 20
    observed = torch.cat([counts[big], counts[~big].sum().view(1)])  # [bins]
    wanted = torch.cat([expected[big], expected[~big].sum().view(1)])
    keep = wanted > 0
    chi2 = ((observed[keep] - wanted[keep]) ** 2 / wanted[keep]).sum().item()
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 7 * (2 * dof) ** 0.5 + 10, (chi2, dof)


@pytest.mark.parametrize("block", [2, 4, 8])
def test_inverse_cdf_draws_the_distribution(block):
    """Blocks that tile the vocabulary or leave a remainder, zero-probability tokens inside and at a block
    edge, unnormalised weights: frequencies match the weights."""
    weights = torch.tensor([0.2, 0.0, 0.5, 0.1, 0.0, 0.6, 0.6])  # sums to 2
    torch.manual_seed(0)
    draws = inverse_cdf(weights.repeat(50_000, 1), block=block)
    _within(draws, (weights / weights.sum()).double())


def test_first_above_keeps_rounding_on_a_token_of_positive_mass():
    cdf = torch.tensor([[0.1, 0.3, 0.3, 0.3], [0.0, 0.0, 0.5, 1.0]], dtype=torch.float64)
    u = torch.tensor([[0.3], [0.0]], dtype=torch.float64)  # row 0: u reached the total by rounding
    assert _first_above(cdf, u).flatten().tolist() == [1, 2]


@pytest.mark.parametrize(
    "top_k,top_p", [(0, 1.0), (7, 1.0), (0, 0.8), (20, 0.9)], ids=["full", "top_k", "top_p", "both"]
)
def test_both_samplers_draw_generates_distribution(top_k, top_p):
    """``inverse_cdf`` and ``multinomial`` match the softmax of ``generate``'s warped scores (an odd
    vocabulary of 101 entries, bf16 logits as under autocast)."""
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(1, 101, generator=gen) * 2).bfloat16()
    scores = logits.float() / 0.7
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    probs = torch.softmax(scores, -1)[0].double()  # [V]
    for method in ("inverse_cdf", "multinomial"):
        sampler = TokenSampler(0.7, top_k, top_p, method)
        torch.manual_seed(2)
        draws = torch.cat([sampler(logits.expand(2000, -1))[0] for _ in range(6)])  # 12k draws
        _within(draws, probs)
    wrong = torch.softmax(logits.float(), -1)[0].double()  # temperature 1: the test tells them apart
    with pytest.raises(AssertionError):
        _within(draws, wrong)


def test_logp_is_the_unfiltered_log_softmax_at_the_temperature():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 1000, generator=gen).bfloat16()
    for sampler, temp in [(TokenSampler(0.7, 5, 0.9), 0.7), (TokenSampler(0.7, 0, 1.0, greedy=True), 1.0)]:
        tokens, logp = sampler(logits)
        want = torch.log_softmax(logits.float() / temp, -1).gather(-1, tokens[:, None]).squeeze(-1)
        torch.testing.assert_close(logp, want, atol=1e-6, rtol=1e-6)
    assert torch.equal(tokens, logits.float().argmax(-1))  # greedy: the raw argmax


def test_multinomial_makes_generates_draws_and_a_seed_fixes_the_tokens():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(8, 500, generator=gen)
    torch.manual_seed(9)
    want = torch.multinomial(torch.softmax(logits / 0.7, -1), 1).squeeze(1)  # what generate calls
    torch.manual_seed(9)
    assert torch.equal(TokenSampler(0.7, 0, 1.0, "multinomial")(logits)[0], want)
    sampler = TokenSampler(0.7, 0, 1.0)
    draws = []
    for seed in (9, 9, 10):
        torch.manual_seed(seed)
        draws.append(sampler(logits)[0])
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_settings_the_sampler_does_not_apply_are_named():
    assert unsupported_settings(GenerationConfig()) == [] and unsupported_settings(None) == []
    config = GenerationConfig(repetition_penalty=1.05, min_new_tokens=2, temperature=0.6, top_k=20)
    assert unsupported_settings(config) == ["repetition_penalty", "min_new_tokens"]
    with pytest.raises(ValueError, match="rollout.sampler"):
        TokenSampler(0.7, 0, 1.0, "gumbel")
