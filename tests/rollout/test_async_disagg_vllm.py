"""``rollout=vllm rollout.mode=async rollout.placement=disaggregated``: a vLLM-CPU engine in its own process,
a gloo trainer, through ``train.py`` (marked vllm and slow: the engine process starts vLLM, ~1-2 min)."""

import csv

import pytest

from longact_pl.rollout import async_remote
from longact_pl.train import run
from tests.helpers import NO_CKPT, compose_train
from tests.rollout.test_async_disagg import _descendants
from tests.rollout.test_vllm import vllm_engine


@vllm_engine
def test_async_run_with_a_vllm_engine_process(tmp_path, monkeypatch):
    """Three steps one-step off-policy. The engine holds the trainer's weights (step 0, lag 0: the trainer /
    engine mismatch is at the bf16 floor; a random engine gives k3 >> 0.1), every later batch lags exactly
    one version, and the engine process and its vLLM workers are gone after the run."""
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm_cache"))
    started = []
    init = async_remote.RemoteRollouts.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        started.append(self.pid)

    monkeypatch.setattr(async_remote.RemoteRollouts, "__init__", record)
    cfg = compose_train(
        tmp_path, "model.hidden_size=256", "rollout=vllm", "rollout.mode=async", "correction=token_tis",
        "rollout.placement=disaggregated", "rollout.group_size=4", "rollout.max_new_tokens=8",
        "data.batch_size=2", "data.reward._target_=tests.helpers.ParityReward",
        "trainer.max_steps=3", "trainer.val_check_interval=100", "data.val=null",
        "validate_before_training=false", "module.optimizer.lr=1e-3", NO_CKPT,
    )  # fmt: skip
    run(cfg, tmp_path)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/reward_mean")]
    assert [float(r["train/async/lag_max"]) for r in rows] == [0.0, 1.0, 1.0]
    assert float(rows[0]["train/correction/k3_kl"]) < 5e-3
    assert len(started) == 1
    assert not _descendants(started[0])


@pytest.mark.parametrize("level", [1, 2])
def test_vllm_async_with_sleep_is_refused(tmp_path, no_model_load, level):
    with pytest.raises(ValueError, match="no idle phase to sleep in"):
        overrides = ["rollout=vllm", "rollout.mode=async", "correction=token_tis",
                     "rollout.placement=disaggregated", f"rollout.sleep_level={level}"]  # fmt: skip
        run(compose_train(tmp_path, *overrides), tmp_path)
