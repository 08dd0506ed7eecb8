"""Runs that cannot learn stop with a checkpoint and an error saying what to change (not loop or exit 0)."""

import csv
import logging
import traceback

import pytest
import torch
from hydra.utils import instantiate

from longact_pl.guards import RewardFunctionError, SkippedStepsError
from longact_pl.models.tiny import tiny_llama
from longact_pl.train import run
from tests.helpers import FakeOps, compose_train

BROKEN = "data.reward._target_=tests.helpers.BrokenReward"


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_dapo_stops_after_consecutive_skipped_steps(tmp_path, caplog):
    """Every reward 0 (random model, default task): each DAPO step is skipped; the 3rd in a row stops."""
    cfg = compose_train(tmp_path, "algo=dapo", "algo.max_gen_rounds=1", "module.guards.max_skipped_steps=3",
                        "trainer.max_epochs=1", "data.train.num_samples=10")  # fmt: skip  # 5 batches
    with caplog.at_level(logging.INFO, logger="longact_pl"), pytest.raises(SkippedStepsError) as err:
        run(cfg, tmp_path)
    message = str(err.value)
    assert "3 RL steps in a row were skipped" in message and "algo.max_gen_rounds=1" in message
    assert "algo.dynamic_sampling=false" in message and "module.guards.max_skipped_steps" in message
    ckpt = tmp_path / "checkpoints" / "skipped.ckpt"
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["global_step"] == 0
    # the step that stops raises before its row is written: steps 1 and 2 are in metrics.csv
    skips = [r["train/skipped_steps_total"] for r in _rows(tmp_path)]
    assert [n for n in skips if n] == ["1.0", "2.0"]
    lines = [r.getMessage() for r in caplog.records if " skipped: " in r.getMessage()]
    expected = "step 0/2 skipped: dynamic sampling kept no group with mixed rewards (3 in a row, 3 in total)"
    assert lines[-1] == expected


def test_a_reward_function_that_always_raises_stops_the_run(tmp_path):
    cfg = compose_train(tmp_path, BROKEN, "module.guards.max_reward_failure_steps=2", "trainer.max_steps=5")
    with pytest.raises(RewardFunctionError) as err:
        run(cfg, tmp_path)
    assert "every completion of 2 RL steps in a row" in str(err.value)
    assert "ConnectionError: reward server down" in str(err.value) and "data.reward" in str(err.value)
    first = err.value.__cause__
    assert isinstance(first, ConnectionError)  # raised `from` the first failure: its traceback prints too
    assert 'raise ConnectionError("reward server down")' in "".join(traceback.format_exception(first))
    ckpt = tmp_path / "checkpoints" / "reward_errors.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 1  # the first failing step trained (on 0s)


def test_ranks_stop_together_only_when_every_rank_failed(tmp_path):
    """A failed step counts only if every rank's reward calls all failed (``dist.min``)."""
    cfg = compose_train(tmp_path, BROKEN, "module.guards.max_reward_failure_steps=1")
    parts = {"algorithm": instantiate(cfg.algo), "rollout": instantiate(cfg.rollout)}
    module = instantiate(cfg.module, policy=tiny_llama(seed=0).model, tokenizer=None, reward_fn=None, **parts)
    module.reward_errors.record(ConnectionError("down"), "x", ["y"])
    module.reward_errors.step_scored = 1  # every call of this rank's step failed
    ranks = FakeOps(world_size=2, other_mins=[0, 1])  # the other rank: one success, then all failed too
    errors, save = module.reward_errors, (lambda name: tmp_path / name)
    module.stops.check_rewards(errors.step_all_failed, errors.step_first, ranks, save)  # not on every rank
    assert module.stops.reward_failed.consecutive == 0
    with pytest.raises(RewardFunctionError, match="1 RL steps in a row"):
        module.stops.check_rewards(errors.step_all_failed, errors.step_first, ranks, save)
    assert ranks.min_calls == [1, 1]
