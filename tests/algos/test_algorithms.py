import math

import pytest
import torch

from longact_pl.algos import Algorithm, GroupPolicyGradient
from tests.algos.presets import PRESETS, preset

LN2 = math.log(2.0)

# two sequences: row 0 has 2 valid tokens, row 1 has 1; advantages +2 and -1
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
ADV = torch.tensor([2.0, -1.0])
LOGP = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -9.0, -9.0]])


def _algos():
    return [preset("grpo"), preset("dapo", overlong_max_len=20), preset("dr_grpo", max_len=4), preset("gspo")]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_the_one_class_and_satisfies_protocol(name):
    algo = preset(name)
    assert type(algo) is GroupPolicyGradient and isinstance(algo, Algorithm) and algo.name == name


def test_protocol_flags():
    grpo, dapo, dr, gspo = _algos()
    assert (grpo.kl_coef, grpo.dynamic_sampling, grpo.max_gen_rounds) == (0.04, False, 1)
    assert (dapo.kl_coef, dapo.dynamic_sampling, dapo.max_gen_rounds) == (0.0, True, 3)
    assert (dr.kl_coef, dr.dynamic_sampling, dr.max_gen_rounds) == (0.0, False, 1)
    assert (gspo.kl_coef, gspo.dynamic_sampling, gspo.max_gen_rounds) == (0.0, False, 1)
    assert all(a.entropy_coef == 0.0 for a in _algos())


@pytest.mark.parametrize(
    ("algo", "expected_loss", "expected_grad"),
    [
        # GRPO, seq mean of token means: row 0 tokens -2, -2 -> -2; row 1 token +1 -> 1; (-2 + 1) / 2 = -0.5
        #   grad = -A / (tokens in row * 2 rows): row 0 -2 / 4 = -0.5; row 1 1 / 2 = 0.5
        (preset("grpo", kl_coef=0.0), -0.5, [[-0.5, -0.5, 0.0], [0.5, 0.0, 0.0]]),
        # DAPO, token mean: (-2 - 2 + 1) / 3 = -1; grad = -A / 3
        (preset("dapo", overlong_max_len=20), -1.0, [[-2 / 3, -2 / 3, 0.0], [1 / 3, 0.0, 0.0]]),
        # Dr. GRPO, token sums / max_len 4, mean over 2 rows: (-4 / 4 + 1 / 4) / 2 = -0.375; grad = -A / 8
        (preset("dr_grpo", max_len=4), -0.375, [[-0.25, -0.25, 0.0], [0.125, 0.0, 0.0]]),
        # GSPO at ratio 1: the sequence ratio is 1 too, so the numbers are GRPO's (seq mean of token means)
        (preset("gspo"), -0.5, [[-0.5, -0.5, 0.0], [0.5, 0.0, 0.0]]),
    ],
    ids=["grpo", "dapo", "dr_grpo", "gspo"],
)
def test_on_policy_loss_is_minus_weighted_advantage(algo, expected_loss, expected_grad):
    logp = LOGP.clone().requires_grad_()
    # old_logp == logp -> ratio exactly 1, surrogate = -A per token
    loss, metrics = algo.loss(logp, logp.detach(), None, ADV, MASK)
    torch.testing.assert_close(loss, torch.tensor(expected_loss))
    torch.testing.assert_close(metrics["pg_loss"], torch.tensor(expected_loss))
    assert metrics["ratio_mean"].item() == 1.0
    assert metrics["clip_frac_low"].item() == 0.0 and metrics["clip_frac_high"].item() == 0.0
    assert "kl" not in metrics
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor(expected_grad))


def test_grpo_with_kl():
    logp = LOGP.clone().requires_grad_()
    old = logp.detach().clone().requires_grad_()
    ref = (LOGP + LN2).requires_grad_()  # d = ref - logp = ln 2 on every token
    adv = ADV.clone().requires_grad_()
    loss, metrics = preset("grpo").loss(logp, old, ref, adv, MASK)
    # k3 per token = 2 - ln 2 - 1 = 0.3068528; seq-mean-token-mean of a constant is that constant
    # total = -0.5 + 0.04 * 0.3068528 = -0.4877259
    k3 = 1.0 - LN2
    torch.testing.assert_close(loss, torch.tensor(-0.5 + 0.04 * k3))
    torch.testing.assert_close(metrics["kl"], torch.tensor(k3))
    torch.testing.assert_close(metrics["pg_loss"], torch.tensor(-0.5))
    assert all(not v.requires_grad for v in metrics.values())
    loss.backward()
    # d k3 / d logp = 1 - exp(d) = 1 - 2 = -1, times 0.04 and the aggregation weight (1/4 row 0, 1/2 row 1)
    # row 0: -0.5 - 0.04 / 4 = -0.51; row 1: 0.5 - 0.04 / 2 = 0.48
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.51, -0.51, 0.0], [0.48, 0.0, 0.0]]))
    # gradient flows through logp only
    assert old.grad is None and ref.grad is None and adv.grad is None


def test_dapo_clip_metrics():
    # row 0 token 0: ratio 1.5 with A = +2 (> 1.28: clipped high); row 0 token 1: ratio 1
    # row 1 token 0: ratio 0.5 with A = -1 (< 0.8: clipped low)
    old = LOGP - torch.tensor([[math.log(1.5), 0.0, 0.0], [math.log(0.5), 0.0, 0.0]])
    loss, metrics = preset("dapo", overlong_max_len=20).loss(LOGP, old, None, ADV, MASK)
    # token losses: -min(3, 2.56) = -2.56; -2; -min(-0.5, -0.8) = 0.8 -> (-2.56 - 2 + 0.8) / 3 = -1.2533333
    torch.testing.assert_close(loss, torch.tensor(-3.76 / 3))
    torch.testing.assert_close(metrics["clip_frac_high"], torch.tensor(1 / 3))
    torch.testing.assert_close(metrics["clip_frac_low"], torch.tensor(1 / 3))
    # (1.5 + 1 + 0.5) / 3 = 1
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.0))


@pytest.mark.parametrize("algo", _algos(), ids=lambda a: a.name)
def test_micro_batches_sum_to_mini_batch(algo):
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 5, generator=gen)
    old = logp + 0.3 * torch.randn(4, 5, generator=gen)
    ref = logp + 0.3 * torch.randn(4, 5, generator=gen)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]).float()
    whole, _ = algo.loss(logp, old, ref, adv, mask)
    parts = [
        algo.loss(logp[r], old[r], ref[r], adv[r], mask[r], num_seqs=4, num_tokens=mask.sum())[0]
        for r in (slice(0, 1), slice(1, 3), slice(3, 4))
    ]
    torch.testing.assert_close(sum(parts), whole)
    assert torch.isfinite(whole)


def test_garbage_in_padding_does_not_leak():
    logp = LOGP.clone().requires_grad_()
    old = LOGP.clone()
    old[0, 2] = float("-inf")  # would give ratio inf at a padded position
    ref = LOGP.clone()
    ref[1, 1] = float("inf")
    loss, metrics = preset("grpo").loss(logp, old, ref, ADV, MASK)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert metrics["kl"].item() == 0.0


def test_kl_without_reference_raises():
    with pytest.raises(ValueError, match="ref_logp"):
        preset("grpo", kl_coef=0.1).loss(LOGP, LOGP, None, ADV, MASK)


def test_advantages_and_keep_groups():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    # group 1: mean 0.5, unbiased std sqrt(0.5) = 0.7071068 -> +-0.5 / (0.7071068 + 1e-6) = +-0.7071058
    torch.testing.assert_close(
        preset("grpo").advantages(rewards, 2), torch.tensor([0.7071058, -0.7071058, 0.0, 0.0])
    )
    # Dr. GRPO: centred only
    torch.testing.assert_close(
        preset("dr_grpo", max_len=4).advantages(rewards, 2), torch.tensor([0.5, -0.5, 0.0, 0.0])
    )
    for algo in _algos():
        assert algo.keep_groups(rewards, 2).tolist() == [True, False]


def test_shape_rewards():
    rewards = torch.tensor([1.0, 0.0, 1.0])
    lengths = torch.tensor([10.0, 16.0, 20.0])
    # window starts at 20 - 8 = 12: penalties 0, (12 - 16) / 8 = -0.5, -1
    dapo = preset("dapo", overlong_max_len=20)
    torch.testing.assert_close(dapo.shape_rewards(rewards, lengths), torch.tensor([1.0, -0.5, 0.0]))
    # coefficient 0.5: 1 + 0, 0 - 0.25, 1 - 0.5
    half = preset("dapo", overlong_max_len=20, overlong_penalty_coef=0.5)
    torch.testing.assert_close(half.shape_rewards(rewards, lengths), torch.tensor([1.0, -0.25, 0.5]))
    # GRPO, Dr. GRPO and GSPO do not shape
    for name in ("grpo", "dr_grpo", "gspo"):
        assert torch.equal(preset(name).shape_rewards(rewards, lengths), rewards)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: preset("grpo", eps_low=-0.1), r"algo\.eps_low must be >= 0, got -0\.1"),
        (lambda: preset("grpo", eps_low=1.0), r"algo\.eps_low must be < 1"),
        (lambda: preset("grpo", eps_high=-0.2), r"algo\.eps_high must be >= 0, got -0\.2"),
        (lambda: preset("grpo", kl_coef=-1.0), r"algo\.kl_coef must be >= 0, got -1\.0"),
        (
            lambda: preset("grpo", aggregation="sum"),
            r"algo\.aggregation must be one of .*token_mean.*got 'sum'",
        ),
        (lambda: preset("grpo", aggregation="seq_mean_token_sum_norm", max_len=None), r"algo\.max_len"),
        (lambda: preset("dr_grpo", max_len=0), r"algo\.max_len"),
        (lambda: preset("dapo", overlong_max_len=20, overlong_cache_len=0), r"algo\.overlong_cache_len"),
        (lambda: preset("dapo", overlong_max_len=20, overlong_cache_len=21), r"algo\.overlong_cache_len"),
        (lambda: preset("dapo", max_gen_rounds=0), r"algo\.max_gen_rounds"),
        (
            lambda: preset("dapo", overlong_penalty_coef=-1.0),
            r"algo\.overlong_penalty_coef must be >= 0",
        ),
        (lambda: preset("dapo", eps_high=-0.1), r"algo\.eps_high"),
        (
            lambda: preset("grpo", kl_estimator="k4"),
            r"algo\.kl_estimator must be one of .*low_var_kl.*got 'k4'",
        ),
        (lambda: preset("grpo", surrogate="sequence"), r"algo\.surrogate must be a Surrogate"),
        (lambda: preset("grpo", advantage="centred"), r"algo\.advantage must be an AdvantageEstimator"),
        (lambda: preset("grpo", entropy_coef=-0.01), r"algo\.entropy_coef must be >= 0"),
        (lambda: preset("grpo", overlong_penalty_coef=1.0, overlong_max_len=None), r"algo\.overlong_max_len"),
        (lambda: preset("grpo", overlong_penalty_coef=1.0, overlong_max_len=4), r"algo\.overlong_cache_len"),
    ],
)
def test_constructor_validation(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_the_overlong_window_is_only_checked_with_the_penalty_on():
    # GRPO's preset carries DAPO's window (8 tokens) with coefficient 0: a 4-token budget is fine
    assert preset("grpo", overlong_max_len=4).overlong_penalty_coef == 0.0
