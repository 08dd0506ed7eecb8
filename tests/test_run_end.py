"""Issue 22: the final validation scores the final weights; a pre-emption stops at the next safe point in any
phase; a run pre-empted after its last step writes final/ when resumed."""

import csv
import logging

import pytest
import torch

from longact_pl.train import run
from tests.helpers import compose_train

PARITY = "data.reward._target_=tests.helpers.ParityReward"
SIGTERM_AT = ["+callbacks.sigterm._target_=tests.helpers.SigtermAt"]


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _val_steps(run_dir):
    return sorted(p.name for p in (run_dir / "val_predictions").iterdir())


def test_the_final_validation_scores_the_final_weights(tmp_path, caplog):
    """ppo_epochs=2 (2 optimizer steps per RL batch) and a DAPO step skipped: Lightning's validation, every
    val_check_interval=4 (= max_steps) RL batches, never comes in the 3 batches; the run validates the final
    weights (step 4) and prints val/acc a -> b."""
    from tests.helpers import UniformThenParity

    UniformThenParity.calls = 0
    cfg = compose_train(
        tmp_path, "data.reward._target_=tests.helpers.UniformThenParity", "algo=dapo",
        "algo.max_gen_rounds=1",
        "module.learner.ppo_epochs=2", "trainer.max_steps=4", "trainer.val_check_interval=4",
        "validate_before_training=true",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="longact_pl"):
        metrics = run(cfg, tmp_path)
    assert _val_steps(tmp_path) == ["step_0.jsonl", "step_4.jsonl"]
    assert "val/acc" in metrics and "val/acc@step0" in metrics
    assert any(r.getMessage().startswith("val/acc: ") and " -> " in r.getMessage() for r in caplog.records)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_sigterm_in_any_phase_stops_and_a_resume_finishes_the_run(tmp_path):
    """SIGTERM during the step-0 validation: exit 143 with a step-0 checkpoint (not trained to the end).
    Resumed, SIGTERM right after the last optimizer step: exit 143. Resumed again: final/ is written and the
    end validated; metrics.csv holds one step-0 validation and two training steps."""
    common = [PARITY, "validate_before_training=true"]
    with pytest.raises(SystemExit) as stop:
        run(compose_train(tmp_path, *common, "+callbacks.sigterm._target_=tests.helpers.SigtermInValidation"),
            tmp_path)  # fmt: skip
    assert stop.value.code == 143
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 0
    assert not [r for r in _rows(tmp_path) if r.get("train/reward_mean")]
    with pytest.raises(SystemExit) as stop:
        run(compose_train(tmp_path, *common, f"ckpt_path={last}", *SIGTERM_AT, "+callbacks.sigterm.step=2"),
            tmp_path)  # fmt: skip
    assert stop.value.code == 143 and not (tmp_path / "final").exists()
    assert torch.load(last, weights_only=True)["global_step"] == 2
    run(compose_train(tmp_path, *common, f"ckpt_path={last}"), tmp_path)
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert "step_2.jsonl" in _val_steps(tmp_path)
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows if r.get("train/reward_mean")] == ["0", "1"]
    assert len([r for r in rows if r.get("val/acc") and r["step"] == "0"]) == 1
