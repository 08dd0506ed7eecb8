import math

import torch

from longact_pl.algos.kl import k3_kl
from longact_pl.algos.losses import clipped_surrogate, masked_mean

LN2 = math.log(2.0)


def test_k3_values():
    logp = torch.tensor([[math.log(0.5), math.log(0.5), -1.0]])
    ref = torch.tensor([[math.log(0.25), math.log(1.0), -1.0]])
    kl = k3_kl(logp, ref)
    # d = ref - logp:
    #   log(0.25) - log(0.5) = -ln 2 -> exp(d) = 0.5; 0.5 + ln 2 - 1 = 0.1931472
    #   log(1) - log(0.5) = +ln 2    -> exp(d) = 2;   2 - ln 2 - 1 = 0.3068528
    #   d = 0 -> 1 - 0 - 1 = 0
    torch.testing.assert_close(kl, torch.tensor([[0.5 + LN2 - 1.0, 2.0 - LN2 - 1.0, 0.0]]))


def test_k3_non_negative():
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(8, 16, generator=gen) * 3
    ref = torch.randn(8, 16, generator=gen) * 3
    assert (k3_kl(logp, ref) >= 0).all()


def test_clipped_surrogate_asymmetric():
    # old_logp = 0, so ratio = exp(logp); one token per row, eps_low = 0.2, eps_high = 0.28
    ratios = torch.tensor([1.5, 1.1, 0.5, 1.5, 0.5, 1.3])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 0.0])
    logp = ratios.log().unsqueeze(-1).requires_grad_()  # [6, 1]
    loss, low, high = clipped_surrogate(logp, torch.zeros(6, 1), adv, eps_low=0.2, eps_high=0.28)
    # row 0: A=+1, ratio 1.5 > 1.28: min(1.5, 1.28) = 1.28 -> loss -1.28, clipped high
    # row 1: A=+1, ratio 1.1 inside: min(1.1, 1.1) -> loss -1.1
    # row 2: A=-1, ratio 0.5 < 0.8: min(-0.5, -0.8) = -0.8 -> loss 0.8, clipped low
    # row 3: A=-1, ratio 1.5: min(-1.5, -1.28) = -1.5 -> loss 1.5, unclipped (gradient flows)
    # row 4: A=+1, ratio 0.5: min(0.5, 0.8) = 0.5 -> loss -0.5, unclipped
    # row 5: A=0 -> loss 0
    torch.testing.assert_close(loss.squeeze(-1), torch.tensor([-1.28, -1.1, 0.8, 1.5, -0.5, 0.0]))
    assert low.squeeze(-1).tolist() == [False, False, True, False, False, False]
    assert high.squeeze(-1).tolist() == [True, False, False, False, False, False]
    loss.sum().backward()
    # d(-ratio * A)/d logp = -A * ratio where unclipped; 0 on the clipped branch
    # rows: 0 (clipped), -1.1, 0 (clipped), +1.5, -0.5, 0 (A = 0)
    torch.testing.assert_close(logp.grad.squeeze(-1), torch.tensor([0.0, -1.1, 0.0, 1.5, -0.5, 0.0]))


def test_clipped_surrogate_broadcasts_advantage_per_sequence():
    logp = torch.zeros(2, 3)
    loss, low, high = clipped_surrogate(logp, logp, torch.tensor([2.0, -1.0]), 0.2, 0.2)
    # ratio 1 everywhere -> loss = -A on each token of the row
    torch.testing.assert_close(loss, torch.tensor([[-2.0, -2.0, -2.0], [1.0, 1.0, 1.0]]))
    assert not low.any() and not high.any()


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # (1 + 2 + 3) / 3 = 2; NaN and inf at masked positions are ignored
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor(2.0))
    # bool values: 2 of the 3 valid positions are True
    flags = torch.tensor([[True, False, True], [True, True, True]])
    torch.testing.assert_close(masked_mean(flags, mask.bool()), torch.tensor(2.0 / 3.0))
    # empty mask -> 0, not NaN
    torch.testing.assert_close(masked_mean(x, torch.zeros(2, 3)), torch.tensor(0.0))
