import pytest
import torch

from tests.algos.presets import preset

# two sequences: row 0 has 2 valid tokens, row 1 has 1; advantages +2 and -1; on-policy (ratio 1)
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
ADV = torch.tensor([2.0, -1.0])
LOGP = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -9.0, -9.0]])
# padded positions hold garbage (inf, NaN) that must not reach the loss or the gradient
WEIGHTS = torch.tensor([[0.5, 2.0, float("inf")], [3.0, float("nan"), 9.0]])


def _loss_and_grad(algo, weights):
    logp = LOGP.clone().requires_grad_(True)
    ref = LOGP - 0.5 if algo.kl_coef > 0 else None
    loss, metrics = algo.loss(logp, logp.detach(), ref, ADV, MASK, token_weights=weights)
    loss.backward()
    return loss.detach(), logp.grad, metrics


@pytest.mark.parametrize(
    ("algo", "expected_loss", "expected_grad"),
    [
        # per-token surrogate at ratio 1 is -A: row 0 (-2 * 0.5, -2 * 2), row 1 (+1 * 3)
        # GRPO: seq mean of token means = ((-1 - 4) / 2 + 3 / 1) / 2 = 0.25; grad = -A * w / (len * 2)
        (preset("grpo", kl_coef=0.0), 0.25, [[-0.25, -1.0, 0.0], [1.5, 0.0, 0.0]]),
        # DAPO: token mean = (-1 - 4 + 3) / 3 = -2/3; grad = -A * w / 3
        (preset("dapo", overlong_max_len=20), -2 / 3, [[-1 / 3, -4 / 3, 0.0], [1.0, 0.0, 0.0]]),
        # Dr. GRPO: token sums / 4, mean over 2 rows = ((-5) / 4 + 3 / 4) / 2 = -0.25; grad = -A * w / 8
        (preset("dr_grpo", max_len=4), -0.25, [[-0.125, -0.5, 0.0], [0.375, 0.0, 0.0]]),
    ],
    ids=["grpo", "dapo", "dr_grpo"],
)
def test_token_weights_scale_the_per_token_surrogate(algo, expected_loss, expected_grad):
    loss, grad, _ = _loss_and_grad(algo, WEIGHTS)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-6)
    torch.testing.assert_close(grad, torch.tensor(expected_grad), atol=1e-6, rtol=0)
    assert torch.isfinite(grad).all()


def test_unit_weights_equal_no_weights_and_kl_is_not_weighted():
    algo = preset("grpo", kl_coef=0.1)
    plain, plain_grad, plain_m = _loss_and_grad(algo, None)
    ones, ones_grad, _ = _loss_and_grad(algo, torch.ones_like(LOGP))
    assert torch.equal(plain, ones) and torch.equal(plain_grad, ones_grad)
    weighted, _, m = _loss_and_grad(algo, WEIGHTS)
    # only the policy-gradient part changes: the KL term (and its metric) is identical
    assert (weighted - m["pg_loss"]).item() == pytest.approx((plain - plain_m["pg_loss"]).item(), abs=1e-7)
    assert m["kl"].item() == pytest.approx(plain_m["kl"].item())
    assert m["pg_loss"].item() == pytest.approx(0.25, abs=1e-6)
