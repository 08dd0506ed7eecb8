import logging
from types import SimpleNamespace

import pytest

from longact_pl.step_log import StepLog, format_step
from longact_pl.train import run
from tests.helpers import compose_train


def test_format_step_prints_present_metrics_in_order():
    line = format_step(3, 16, {"train/tokens_per_s": 401.7, "train/reward_mean": 0.625, "train/kl": 3e-4})
    assert line == "step 3/16 reward 0.625 kl 3.00e-04 tok/s 402"
    assert format_step(2, -1, {}) == "step 2"


def test_bad_every_n_names_the_field():
    with pytest.raises(ValueError, match="callbacks.step_log.every_n"):
        StepLog(every_n=0)


def test_a_run_logs_one_line_per_step(tmp_path, caplog):
    cfg = compose_train(tmp_path, "data.reward._target_=tests.helpers.ParityReward")
    with caplog.at_level(logging.INFO, logger="longact_pl"):
        run(cfg, tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split(" reward ")[0] for line in lines] == ["step 1/2", "step 2/2"]
    assert all(" acc " in line and " tok/s " in line for line in lines)


def test_a_skipped_step_is_not_printed_twice(caplog):
    """A skipped RL step (DAPO, all groups uniform) leaves global_step and the metrics unchanged."""

    trainer = SimpleNamespace(
        global_step=3, max_steps=16, is_global_zero=True, callback_metrics={"train/reward_mean": 0.5}
    )
    cb = StepLog()
    with caplog.at_level(logging.INFO, logger="longact_pl"):
        cb.on_train_batch_end(trainer, None, None, None, 0)
        cb.on_train_batch_end(trainer, None, None, None, 1)
    assert [r.getMessage() for r in caplog.records] == ["step 3/16 reward 0.500"]


def test_the_step_line_counts_skipped_steps_once_there_are_some():
    assert (
        format_step(3, 16, {"train/reward_mean": 0.5, "train/skipped_steps_total": 0.0})
        == "step 3/16 reward 0.500"
    )
    assert format_step(3, 16, {"train/skipped_steps_total": 4.0}) == "step 3/16 skipped 4"
