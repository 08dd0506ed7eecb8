"""The fp32 KL check: the same step's KL in fp32 beside bf16, on a tiny model moved as one RL step would."""

import copy

import pytest
import torch
from hydra.errors import InstantiationException

from longact_pl.algos.algorithm import GroupPolicyGradient
from longact_pl.algos.kl import k3_kl
from longact_pl.distributed import LocalOps
from longact_pl.guards import NonFiniteGuard
from longact_pl.kl_fp32 import Fp32KLCheck, check_kl_fp32_setting
from longact_pl.learner import Learner, TrainBatch
from longact_pl.models.tiny import tiny_llama
from longact_pl.ops.policy_logprobs import LogprobPass
from longact_pl.train import run
from tests.helpers import FakeOps, compose_train
from tests.test_learner import _rollouts

ROWS = 3  # of 4


@pytest.fixture(scope="module")
def setup():
    """A reference, a policy one lr-2e-6 sign step away (as AdamW's first step), the learner, rollouts."""
    reference = tiny_llama(seed=0).model.eval()
    policy = copy.deepcopy(reference)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p += 2e-6 * torch.randn(p.shape, generator=gen).sign()  # [*p.shape]
    learner = Learner(
        GroupPolicyGradient(kl_coef=0.04), LogprobPass.for_model(reference), NonFiniteGuard(), temperature=0.7
    )
    rollouts = _rollouts(reference.config.vocab_size)
    with torch.autocast("cpu", torch.bfloat16):
        ref_bf16 = learner.no_grad_logprobs(reference, rollouts)  # [N, C]: the step's reference pass
    return learner, policy, reference, TrainBatch(rollouts, torch.zeros(4), ref_logp=ref_bf16)


def _kl(learner, policy, reference, rollouts, bf16: bool) -> float:
    """Token-mean k3 KL of the first ROWS rows, every log-prob computed at one precision."""
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        logp = learner.no_grad_logprobs(policy, rollouts)[:ROWS]  # [n, C]
        ref = learner.no_grad_logprobs(reference, rollouts)[:ROWS]  # [n, C]
    mask = rollouts.completion_mask[:ROWS].bool()  # [n, C]
    return float(k3_kl(logp.double(), ref.double())[mask].mean())


def test_fp32_kl_is_the_fp32_recomputation_and_bf16_reads_rounding_flips(setup):
    learner, policy, reference, batch = setup
    with torch.autocast("cpu", torch.bfloat16):  # as inside a bf16-mixed training step
        got = Fp32KLCheck(ROWS)(learner, policy, reference, batch, LocalOps())
    fp32 = _kl(learner, policy, reference, batch.rollouts, bf16=False)
    bf16 = _kl(learner, policy, reference, batch.rollouts, bf16=True)
    assert got["train/kl_fp32"] == pytest.approx(fp32, rel=1e-4)
    assert got["train/kl_autocast"] == pytest.approx(bf16, rel=1e-4)
    # a 2e-6 step: in fp32 the KL is tiny, in bf16 the weights that crossed a rounding boundary dominate
    assert got["train/kl_autocast"] > 10 * got["train/kl_fp32"] > 0


def test_the_same_weights_read_zero_in_both(setup):
    learner, _, reference, batch = setup
    with torch.autocast("cpu", torch.bfloat16):
        got = Fp32KLCheck(ROWS)(learner, reference, reference, batch, LocalOps())
    assert got == {"train/kl_autocast": 0.0, "train/kl_fp32": 0.0}


def test_the_value_is_a_token_mean_over_every_ranks_checked_rows(setup):
    """Under DDP each rank checks its own first rows; the logged value is their global token mean."""
    learner, policy, reference, batch = setup
    one = Fp32KLCheck(ROWS)(learner, policy, reference, batch, LocalOps())
    tokens = float(batch.rollouts.completion_mask[:ROWS].sum())  # 5 + 2 + 4
    other = torch.tensor([0.5, 0.25, 9.0])  # another rank: KL sums 0.5 (autocast) and 0.25 (fp32), 9 tokens
    ops = FakeOps(world_size=2, other_sums=[other])
    got = Fp32KLCheck(ROWS)(learner, policy, reference, batch, ops)
    assert got["train/kl_autocast"] == pytest.approx((one["train/kl_autocast"] * tokens + 0.5) / (tokens + 9))
    assert got["train/kl_fp32"] == pytest.approx((one["train/kl_fp32"] * tokens + 0.25) / (tokens + 9))


def test_settings_that_cannot_check_in_fp32_are_refused():
    check_kl_fp32_setting(0, "bf16-mixed", sharded=True)  # off
    check_kl_fp32_setting(2, "32-true", sharded=True)
    check_kl_fp32_setting(2, "bf16-mixed", sharded=False)
    with pytest.raises(ValueError, match="FSDP2 gathers the parameters in bf16"):
        check_kl_fp32_setting(2, "bf16-mixed", sharded=True)
    with pytest.raises(ValueError, match="module.kl_fp32_check_rows must be >= 0"):
        check_kl_fp32_setting(-1, "32-true", sharded=False)


def test_a_check_without_a_reference_model_is_refused_before_anything_is_written(tmp_path):
    cfg = compose_train(tmp_path, "algo=dapo", "module.kl_fp32_check_rows=2")  # dapo: kl_coef 0
    with pytest.raises(InstantiationException, match="algo.kl_coef > 0"):
        run(cfg, tmp_path)
    assert not any(tmp_path.iterdir())


def test_fsdp_with_bf16_is_refused_before_a_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr("longact_pl.train.instantiate", lambda *a, **k: pytest.fail("built a component"))
    cfg = compose_train(
        tmp_path, "strategy=fsdp", "trainer.precision=bf16-mixed", "module.kl_fp32_check_rows=2"
    )
    with pytest.raises(ValueError, match="strategy=fsdp"):
        run(cfg, tmp_path)
    assert not any(tmp_path.iterdir())
