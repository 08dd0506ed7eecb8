"""Rollout correction and the new loss options through ``train.py``'s composition (one tiny step each)."""

import csv
import math

import pytest
from hydra.errors import InstantiationException

from longact_pl.train import run
from tests.helpers import compose_train

SHIFTED = ["rollout=hf", "rollout._target_=tests.distributed_helpers.ShiftedRollout", "trainer.max_steps=1",
           "data.reward._target_=tests.helpers.ParityReward"]  # fmt: skip


def _row(tmp_path) -> dict[str, str]:
    with open(tmp_path / "metrics.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r.get("train/reward_mean")]
    return row


@pytest.mark.parametrize(
    ("correction", "shift", "truncated"),
    [("token_tis", math.log(2), 0.0), ("token_tis", -math.log(4), 1.0), ("none", -math.log(4), 0.0)],
)
def test_an_external_sampler_is_measured_and_corrected(tmp_path, correction, shift, truncated):
    """Engine log-probs = the trainer's + shift: each token ratio pi_train / pi_engine is exp(-shift)."""
    run(compose_train(tmp_path, *SHIFTED, f"+rollout.shift={shift}", f"correction={correction}"), tmp_path)
    row = _row(tmp_path)
    ratio = math.exp(-shift)  # 0.5 or 4
    assert float(row["train/correction/k3_kl"]) == pytest.approx(ratio - math.log(ratio) - 1, rel=1e-3)
    assert float(row["train/correction/log_ratio_abs_max"]) == pytest.approx(abs(shift), rel=1e-3)
    # the 8-token completions fall in the first bucket (<= 256 tokens)
    assert float(row["train/correction/k3_kl/len_le256"]) == float(row["train/correction/k3_kl"])
    # token_tis caps the weights at 2: a ratio of 4 is truncated on every token; none measures only
    assert float(row["train/correction/token_truncated_frac"]) == truncated
    assert float(row["train/correction/token_masked_frac"]) == 0.0


def test_hf_rollouts_log_no_mismatch(tmp_path):
    run(compose_train(tmp_path, "trainer.max_steps=1"), tmp_path)
    assert not any(k.startswith("train/correction/") for k in _row(tmp_path))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["correction=token_tis"], r"correction\.level=token .* rollout=HFRollout samples with the"),
        (["rollout.top_p=0.9"], r"rollout\.top_p=0\.9 / rollout\.top_k=0: training needs top_p=1\.0"),
        (["rollout=vllm", "correction=sequence_mask", "correction.low=3.0"], r"correction\.low must be in"),
        (["algo.kl_estimator=k5"], r"algo\.kl_estimator must be one of"),
    ],
)  # fmt: skip
def test_bad_settings_fail_before_anything_is_written(tmp_path, overrides, match):
    # ValueError, raised directly or by a constructor inside Hydra's instantiate (which wraps it)
    with pytest.raises((ValueError, InstantiationException), match=match):
        run(compose_train(tmp_path, *overrides), tmp_path)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_gspo_with_entropy_bonus_and_kl_in_the_reward_trains(tmp_path):
    cfg = compose_train(
        tmp_path, "algo=gspo", "algo.entropy_coef=0.01", "algo.kl_coef=0.05", "algo.kl_in_reward=true",
        "algo.kl_estimator=low_var_kl", "trainer.max_steps=1",
        "data.reward._target_=tests.helpers.ParityReward",
    )  # fmt: skip
    run(cfg, tmp_path)
    row = _row(tmp_path)
    # the bonus is 0.01 x the aggregated entropy: the micro-batches' terms (2 of 4 rows each, normalised by
    # the whole batch's counts like pg_loss) add up to the optimizer step's (rows differ a little)
    assert float(row["train/entropy_bonus"]) == pytest.approx(0.01 * float(row["train/entropy"]), rel=0.2)
    assert "train/kl" not in row or row["train/kl"] == ""  # the KL went into the reward, not the loss
    assert math.isfinite(float(row["train/loss"])) and float(row["train/grad_norm"]) > 0
