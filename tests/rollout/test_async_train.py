"""``rollout.mode=async`` through ``train.py`` (tiny model): lag, metrics, refusals, a crash, a SIGTERM."""

import csv
import threading
from collections import Counter

import pytest
import torch

from longact_pl.rollout.async_loop import EngineFailure
from longact_pl.rollout.hf import HFRollout
from longact_pl.train import run
from tests.helpers import ParityReward, compose_train

PARITY = "data.reward._target_=tests.helpers.ParityReward"
ASYNC = ["rollout.mode=async", "correction=token_tis", "trainer.val_check_interval=100", "data.val=null"]
# validation at step 2: HF generation on the policy (main thread) beside the producer's on its copy
WITH_VAL = ["rollout.mode=async", "correction=token_tis", "trainer.val_check_interval=2"]


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("train/reward_mean")]


class CountingReward(ParityReward):
    """Parity rewards; records the first reference of every prompt it scores (each trained batch's)."""

    seen: list[str] = []

    def __call__(self, completions, references, **meta):
        CountingReward.seen += [str(refs) for refs in references]  # G rows per prompt
        return super().__call__(completions, references, **meta)


class FailingHF(HFRollout):
    """HF rollouts whose ``fail_at``-th sampling in the producer thread raises (an engine that died)."""

    calls = 0
    fail_at = 2

    def generate(self, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            FailingHF.calls += 1
            if FailingHF.calls == FailingHF.fail_at:
                raise OSError("engine process died")
        return super().generate(*args, **kwargs)


class CountingHF(HFRollout):
    """HF rollouts that count the batches the producer thread started sampling."""

    started = 0

    def generate(self, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            CountingHF.started += 1
        return super().generate(*args, **kwargs)


def test_async_run_trains_one_step_off_policy_and_logs_staleness(tmp_path):
    run(compose_train(tmp_path, *WITH_VAL, PARITY, "trainer.max_steps=3"), tmp_path)
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert any(r.get("val/acc") for r in csv.DictReader(f))
    rows = _rows(tmp_path)
    assert [float(r["train/async/lag_max"]) for r in rows] == [
        0.0,
        1.0,
        1.0,
    ]  # batch k+1 sampled by version k
    assert [float(r["train/async/lag_mean"]) for r in rows] == [0.0, 1.0, 1.0]
    assert all(r["train/correction/k3_kl"] for r in rows)  # the mismatch of the stale sampler is measured
    assert float(rows[-1]["train/correction/k3_kl"]) > 0  # lag 1: the sampler's weights are not the trainer's


def test_async_without_a_correction_is_refused_before_the_model_loads(tmp_path, no_model_load):
    with pytest.raises(ValueError, match="correction=token_tis"):
        run(compose_train(tmp_path, "rollout.mode=async"), tmp_path)
    assert not tmp_path.joinpath("config.yaml").exists()


@pytest.mark.slow  # a stopped and a resumed tiny run
def test_an_engine_crash_stops_with_a_resumable_checkpoint(tmp_path):
    """The producer's 2nd batch (step 1's) fails: the run stops naming the cause and a checkpoint of the
    weights after step 0 (nothing of step 1 applied); the resume trains steps 1 and 2."""
    FailingHF.calls = 0
    common = [*ASYNC, "data.reward._target_=tests.helpers.ParityReward", "trainer.max_steps=3"]
    with pytest.raises(
        EngineFailure, match="sampling batch 1 .*engine process died.*resume from the checkpoint"
    ):
        run(
            compose_train(tmp_path, *common, "rollout._target_=tests.rollout.test_async_train.FailingHF"),
            tmp_path,
        )
    ckpt = tmp_path / "checkpoints" / "async_engine_failed.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 1
    run(compose_train(tmp_path, *common, f"ckpt_path={ckpt}"), tmp_path)
    assert [r["step"] for r in _rows(tmp_path)] == ["0", "1", "2"]


@pytest.mark.slow  # three tiny runs (uninterrupted, stopped, resumed): ~15 s on an idle 2-core machine
@pytest.mark.parametrize("staleness", [1, 2])
def test_sigterm_during_async_generation_resumes_without_training_a_sample_twice_or_losing_one(
    tmp_path, staleness
):
    """Staleness 2: the lookahead requests two batches ahead; both are dropped at the stop."""
    common = [*ASYNC, "data.reward._target_=tests.rollout.test_async_train.CountingReward",
              "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=1",
              "rollout._target_=tests.rollout.test_async_train.CountingHF",
              f"rollout.max_staleness={staleness}"]  # fmt: skip
    CountingReward.seen = []
    full = tmp_path / "full"
    run(compose_train(full, *common), full)
    expected = Counter(CountingReward.seen)
    assert max(float(r["train/async/lag_max"]) for r in _rows(full)) <= staleness
    CountingReward.seen, CountingHF.started = [], 0
    part = tmp_path / "part"
    with pytest.raises(SystemExit):  # stopped after step 2, while batch 3 was being sampled ahead
        run(compose_train(part, *common, "+callbacks.sigterm._target_=tests.helpers.SigtermAt",
                          "+callbacks.sigterm.step=2"), part)  # fmt: skip
    first = len(CountingReward.seen)
    assert first == sum(expected.values()) // 2  # 2 of the 4 steps trained
    assert CountingHF.started >= 3  # batch 2 was being sampled ahead when the run stopped: it is dropped
    run(compose_train(part, *common, f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}"), part)
    assert Counter(CountingReward.seen) == expected  # every prompt trained once, none lost
    assert max(float(r["train/async/lag_max"]) for r in _rows(part)) <= staleness
    for thread in threading.enumerate():  # the stopped run's producer ended too (no leaked sampler)
        if thread.name == "async-rollouts":
            thread.join(timeout=30)
            assert not thread.is_alive()
