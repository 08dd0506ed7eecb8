import csv
import math

import pytest
import torch

from longact_pl.algos.tis import truncated_is_weights
from longact_pl.train import run
from tests.helpers import compose_train


def test_weights_are_capped_ratios_and_one_on_padding():
    train = torch.tensor([[0.0, -1.0, -2.0], [-0.5, 0.0, 0.0]])
    behaviour = torch.tensor([[-math.log(2), -1.0, -9.0], [-0.5 + math.log(4), 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    weights, m = truncated_is_weights(train, behaviour, mask, cap=3.0)
    # ratios: 2, 1, exp(7) -> capped at 3; 1/4; padding -> 1
    torch.testing.assert_close(weights, torch.tensor([[2.0, 1.0, 3.0], [0.25, 1.0, 1.0]]))
    assert m["tis_ratio_mean"].item() == pytest.approx((2 + 1 + math.exp(7) + 0.25) / 4, rel=1e-5)
    assert m["tis_capped_frac"].item() == pytest.approx(0.25)


@pytest.mark.parametrize(("shift", "ratio", "capped"), [(math.log(2), 0.5, 0.0), (-math.log(4), 4.0, 1.0)])
def test_module_weights_the_loss_by_the_engine_mismatch(tmp_path, shift, ratio, capped):
    cfg = compose_train(
        tmp_path, "rollout=hf", "rollout._target_=tests.distributed_helpers.ShiftedRollout",
        f"+rollout.shift={shift}", "+rollout.tis_cap=2.0", "trainer.max_steps=1",
        "data.reward._target_=tests.helpers.ParityReward",
    )  # fmt: skip
    run(cfg, tmp_path)
    with open(tmp_path / "metrics.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r.get("train/reward_mean")]
    # on-policy pass: the trainer's old log-probs are the behaviour ones before the shift
    assert float(row["train/tis_ratio_mean"]) == pytest.approx(ratio, rel=1e-3)
    assert float(row["train/tis_capped_frac"]) == capped


def test_rollout_tis_cap_is_the_learners_setting(tmp_path):
    """``rollout.tis_cap`` (the vLLM engine's config) reaches the learner as ``module.tis_cap``."""
    assert compose_train(tmp_path, "rollout=vllm", "rollout.tis_cap=2.0").module.tis_cap == 2.0
    assert compose_train(tmp_path, "rollout=vllm").module.tis_cap is None
    assert compose_train(tmp_path).module.tis_cap is None  # HF rollouts have no such field
