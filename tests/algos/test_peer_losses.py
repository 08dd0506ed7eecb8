"""New loss paths (GSPO, KL estimators, KL in the reward, entropy bonus) against verl's numbers.

The expected numbers were produced by verl's own formulas (``verl/trainer/ppo/core_algos.py`` at commit
4849643 of a verl mirror: ``compute_policy_loss_gspo``, ``compute_policy_loss_vanilla``, ``agg_loss``,
``kl_penalty_forward``, ``compute_grpo_outcome_advantage``; ``ray_trainer.apply_kl_penalty``;
``dp_actor``'s ``policy_loss = pg_loss - entropy_coeff * agg(entropy) + kl_loss_coef * agg(kld)`` with
``verl.utils.torch_functional.entropy_from_logits``), copied verbatim into a scratch script and run on the
inputs below with torch 2.13 (float32). verl's ``seq-mean-token-mean`` adds 1e-8 to each row's token count,
hence the tolerances of 1e-6.
"""

import pytest
import torch

from longact_pl.algos.kl import KL_ESTIMATORS
from longact_pl.ops.logprobs import token_entropy, token_logprobs
from tests.algos.presets import preset

MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
LOGP = torch.tensor([[-1.0, -2.0, -0.5, -7.0], [-0.3, -1.2, -5.0, -5.0], [-2.0, -0.1, -0.7, -1.5]])
# logp - old per token: row means 2e-4 (inside GSPO's [1 - 3e-4, 1 + 4e-4]), 1e-3 (above), -1e-3 (below)
DELTA = torch.tensor([[1e-4, 3e-4, 2e-4, 0.0], [5e-4, 1.5e-3, 0.0, 0.0], [-2e-3, 0.0, -1e-3, -1e-3]])
OLD = LOGP - DELTA
ADV = torch.tensor([0.5, 1.0, -1.0])
REF = LOGP + torch.tensor([[0.3, -0.2, 0.5, 0.0], [-0.4, 0.1, 0.0, 0.0], [0.25, -0.6, 0.05, 0.7]])
LN2 = 0.6931471805599453
AGG = {"seq-mean-token-mean": "seq_mean_token_mean", "token-mean": "token_mean"}


def _close(got, want):
    torch.testing.assert_close(torch.as_tensor(got).float(), torch.tensor(want), atol=1e-6, rtol=1e-5)


def test_gspo_loss_and_gradient_match_verl():
    logp = LOGP.clone().requires_grad_()
    loss, metrics = preset("gspo").loss(logp, OLD, None, ADV, MASK)
    loss.backward()
    # verl compute_policy_loss_gspo(clip_ratio_low=3e-4, clip_ratio_high=4e-4, seq-mean-token-mean)
    _close(loss, -0.1669333130121231)
    # row 0 inside the range: d/dlogp_t = -A * s_0 / (3 tokens * 3 rows); rows 1 and 2 clipped: no gradient
    g0 = -0.05556666851043701
    _close(logp.grad, [[g0, g0, g0, 0.0], [0.0] * 4, [0.0] * 4])
    # the flags are per sequence: row 1 (A > 0, above) clipped high, row 2 (A < 0, below) clipped low
    _close(metrics["clip_frac_high"], 2 / 9)
    _close(metrics["clip_frac_low"], 4 / 9)


KL_CASES = [
    # (estimator, verl aggregation, total loss, KL term, d total / d logp) with kl_coef 0.1, ratio 1
    ("k1", "seq-mean-token-mean", -0.17166666686534882, -0.04999999329447746,
     [[-0.04444444552063942] * 3 + [0.0], [-0.15000000596046448] * 2 + [0.0] * 2, [0.09166666865348816] * 4]),
    ("k1", "token-mean", 0.04777777940034866, -0.07777777314186096,
     [[-0.04444444552063942] * 3 + [0.0], [-0.10000000149011612] * 2 + [0.0] * 2, [0.12222222238779068] * 4]),
    ("k2", "seq-mean-token-mean", -0.15932638943195343, 0.0734027847647667,
     [[-0.058888889849185944, -0.0533333346247673, -0.06111111119389534, 0.0],
      [-0.1599999964237213, -0.16833333671092987, 0.0, 0.0],
      [0.08125000447034836, 0.08833333849906921, 0.08291666954755783, 0.07750000059604645]]),
    ("k2", "token-mean", 0.06369444727897644, 0.08138888329267502,
     [[-0.058888889849185944, -0.0533333346247673, -0.06111111119389534, 0.0],
      [-0.1066666692495346, -0.11222222447395325, 0.0, 0.0],
      [0.10833333432674408, 0.11777777969837189, 0.11055555939674377, 0.10333333164453506]]),
    ("low_var_kl", "seq-mean-token-mean", -0.15884508192539215, 0.07821587473154068,
     [[-0.059442877769470215, -0.05354145169258118, -0.06276357173919678, 0.0],
      [-0.16117200255393982, -0.16841952502727509, 0.0, 0.0],
      [0.08096645772457123, 0.08709324151277542, 0.082906074821949, 0.07488539814949036]]),
    ("low_var_kl", "token-mean", 0.06434069573879242, 0.0878513902425766,
     [[-0.059442877769470215, -0.05354145169258118, -0.06276357173919678, 0.0],
      [-0.10744800418615341, -0.11227967590093613, 0.0, 0.0],
      [0.10795527696609497, 0.11612431704998016, 0.110541433095932, 0.09984719008207321]]),
]  # fmt: skip
# verl's kl_penalty_forward computes "k3" and "low_var_kl" in one branch, "kl" as "k1", "mse" as "k2"
ALIASES = {"low_var_kl": "k3", "k1": "kl", "k2": "mse"}
KL_CASES += [(ALIASES[case[0]], *case[1:]) for case in KL_CASES if case[0] in ALIASES]


def test_abs_is_verls_abs():
    logp = torch.zeros(1, 2, requires_grad=True)
    kl = KL_ESTIMATORS["abs"](logp, torch.tensor([[0.5, -2.0]]))
    kl.sum().backward()
    _close(kl, [[0.5, 2.0]])  # verl: (logprob - ref_logprob).abs()
    _close(logp.grad, [[-1.0, 1.0]])


@pytest.mark.parametrize(("estimator", "agg", "total", "kl_term", "grad"), KL_CASES)
def test_kl_loss_terms_match_verl(estimator, agg, total, kl_term, grad):
    algo = preset("grpo", kl_coef=0.1, kl_estimator=estimator, aggregation=AGG[agg])
    logp = LOGP.clone().requires_grad_()
    loss, metrics = algo.loss(logp, logp.detach(), REF, ADV, MASK)
    loss.backward()
    _close(loss, total)
    _close((loss - metrics["pg_loss"]) / 0.1, kl_term)
    _close(logp.grad, grad)


@pytest.mark.parametrize("name", ["k3", "low_var_kl"])
def test_k3_is_verls_clamped_k3_under_both_names(name):
    logp = torch.zeros(1, 5, requires_grad=True)
    ref = torch.tensor([[15.0, -25.0, 0.5, 100.0, -100.0]])  # d = ref - logp; exp(100) is inf in fp32
    kl = KL_ESTIMATORS[name](logp, ref)
    kl.sum().backward()
    # verl kl_penalty_forward(..., "k3") and (..., "low_var_kl"), one branch: d clamped to [-20, 20], then
    # exp(d) - d - 1 clamped to [-10, 10]: exp(15) - 16, exp(-20) + 19, exp(20) - 21 are all > 10;
    # exp(0.5) - 1.5 = 0.14872121810913086, gradient -(exp(0.5) - 1) = -0.6487212181091309, 0 where clamped
    _close(kl, [[10.0, 10.0, 0.14872121810913086, 10.0, 10.0]])
    _close(logp.grad, [[0.0, 0.0, -0.6487212181091309, 0.0, 0.0]])


def test_default_grpo_kl_is_finite_for_a_log_ratio_past_fp32_exp():
    logp = torch.zeros(1, 2, requires_grad=True)  # fp32
    ref = torch.tensor([[100.0, LN2]])  # ref - logp = 100 > 88.72 = ln(fp32 max): an unclamped k3 is inf
    algo = preset("grpo")  # kl_coef 0.04, kl_estimator k3 (the default), seq-mean-token-mean
    loss, metrics = algo.loss(logp, logp.detach(), ref, torch.zeros(1), torch.ones(1, 2))
    loss.backward()
    # advantage 0: no policy term; KL per token [10 (clamped), 2 - ln 2 - 1], mean 5.153426, times 0.04
    k3 = 1.0 - LN2
    _close(metrics["kl"], (10.0 + k3) / 2)
    _close(loss, 0.04 * (10.0 + k3) / 2)
    # the clamped token has no gradient; d k3 / d logp = 1 - exp(ln 2) = -1 on the other, times 0.04 / 2
    _close(logp.grad, [[0.0, -0.02]])


@pytest.mark.parametrize(
    ("estimator", "rewards", "advantages"),
    [
        ("k1", [1.059999942779541, -0.030000001192092896, 1.040000081062317],
         [0.5933102965354919, -1.1545501947402954, 0.5612397193908691]),
        ("low_var_kl", [0.9782689213752747, -0.007549107074737549, 0.9502139091491699],
         [0.6021626591682434, -1.154337763786316, 0.5521751046180725]),
    ],
)  # fmt: skip
def test_kl_in_reward_matches_verl_apply_kl_penalty_then_grpo_advantage(estimator, rewards, advantages):
    # verl: token_level_rewards = scores at the last token - 0.1 * kl_penalty(old, ref) * mask; advantage of
    # the row sums, one group of 3 (compute_grpo_outcome_advantage, eps 1e-6)
    algo = preset("grpo", kl_coef=0.1, kl_estimator=estimator, kl_in_reward=True)
    shaped = algo.kl_reward(torch.tensor([1.0, 0.0, 1.0]), LOGP, REF, MASK)
    _close(shaped, rewards)
    _close(algo.advantages(shaped, 3), advantages)
    # the KL is then not a loss term (no reference log-probs needed in the loss)
    loss, metrics = algo.loss(LOGP, LOGP, None, ADV, MASK)
    assert "kl" not in metrics and loss.item() == pytest.approx(metrics["pg_loss"].item())


@pytest.mark.parametrize(
    ("agg", "total", "entropy", "grad_00", "grad_23"),
    [
        ("seq-mean-token-mean", -0.1797664314508438, 1.3099758625030518,
         [-0.05156947672367096, 0.003879641415551305, 0.009736510924994946, 0.008075850084424019,
          0.029877474531531334],
         [-0.054058901965618134, 0.08043311536312103, -0.008446542546153069, -0.009051909670233727,
          -0.008875765837728977]),
        ("token-mean", 0.0423680916428566, 1.3187466859817505,
         [-0.05156947672367096, 0.003879641415551305, 0.009736510924994946, 0.008075850084424019,
          0.029877474531531334],
         [-0.07207853347063065, 0.10724414885044098, -0.011262057349085808, -0.012069213204085827,
          -0.01183435507118702]),
    ],
)  # fmt: skip
def test_entropy_bonus_matches_verl(agg, total, entropy, grad_00, grad_23):
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5).requires_grad_()  # [N, T, V]
    targets = torch.tensor([[0, 1, 2, 3], [4, 0, 1, 2], [3, 4, 0, 1]])
    logp = token_logprobs(logits, targets)  # [N, T]
    ent = token_entropy(logits, grad=True)  # [N, T]
    algo = preset("grpo", kl_coef=0.0, entropy_coef=0.01, aggregation=AGG[agg])
    loss, metrics = algo.loss(logp, logp.detach(), None, ADV, MASK, entropy=ent)
    loss.backward()
    _close(loss, total)
    _close(metrics["entropy_bonus"] / 0.01, entropy)
    _close(logits.grad[0, 0], grad_00)
    _close(logits.grad[2, 3], grad_23)


def test_entropy_bonus_refuses_a_detached_entropy():
    logp = LOGP.clone().requires_grad_()
    algo = preset("grpo", kl_coef=0.0, entropy_coef=0.01)
    with pytest.raises(ValueError, match="entropy_coef.*gradient"):
        algo.loss(logp, logp.detach(), None, ADV, MASK, entropy=torch.ones_like(LOGP))
    with pytest.raises(ValueError, match="entropy_coef.*got None"):
        algo.loss(logp, logp.detach(), None, ADV, MASK)
