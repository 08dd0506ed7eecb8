"""``conf/module/default.yaml``: typed nodes checked once, any torch optimizer by config, old names."""

import pytest
import torch
from hydra.utils import instantiate

from longact_pl.checkpoints.run_config import frozen_changes
from longact_pl.config_check import check_combinations, check_types
from longact_pl.module_config import LearnerConfig, LogprobConfig, SafetyConfig, ValidationConfig
from longact_pl.train import run
from tests.helpers import compose_train

PARITY = "data.reward._target_=tests.helpers.ParityReward"


def test_nested_nodes_build_typed_objects(tmp_path):
    cfg = compose_train(tmp_path, "module.learner.micro_batch_size=2", "module.logprobs.chunk_size=null")
    check_types(cfg)
    module = cfg.module
    learner, logprobs = instantiate(module.learner), instantiate(module.logprobs)
    assert learner == LearnerConfig(micro_batch_size=2, max_prompt_tokens=cfg.data.max_prompt_tokens)
    assert logprobs == LogprobConfig(shared_prefix=True, chunk_size=None, pack_completions="auto")
    assert instantiate(module.guards) == SafetyConfig()
    assert instantiate(module.validation) == ValidationConfig(lengths=(256,), max_new_tokens=8)
    optimizer = instantiate(module.optimizer)  # a constructor waiting for the parameters
    assert optimizer.func is torch.optim.AdamW and optimizer.keywords["lr"] == 1e-3


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (LearnerConfig, dict(ppo_epochs=0), "module.learner.ppo_epochs must be >= 1"),
        (LearnerConfig, dict(max_grad_norm=-1.0), "module.learner.max_grad_norm must be >= 0"),
        (
            LearnerConfig,
            dict(micro_batch_tokens=10, max_prompt_tokens=20),
            "micro_batch_tokens=10 is smaller",
        ),
        (LogprobConfig, dict(chunk_size=0), "module.logprobs.chunk_size must be >= 1"),
        (
            LogprobConfig,
            dict(pack_completions=True, shared_prefix=False),
            "needs module.logprobs.shared_prefix",
        ),
        (SafetyConfig, dict(max_skipped_steps=0), "module.guards.max_skipped_steps must be >= 1"),
        (ValidationConfig, dict(max_new_tokens=0), "module.validation.max_new_tokens must be >= 1"),
    ],
)
def test_each_node_checks_its_values_naming_the_config_path(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("override", "error", "match"),
    [
        ("module.scheduler.warmup_steps=-1", ValueError, "module.scheduler.warmup_steps must be >= 0"),
        ("module.optimizer.weight_decay=abc", TypeError, "module.optimizer.weight_decay must be a float"),
        ("+module.optimizer.betas=[1.5,0.9]", ValueError, r"module.optimizer \(AdamW\) refuses .*beta"),
        ("~module.optimizer._partial_", ValueError, "module.optimizer needs a _target_ .* _partial_: true"),
        ("module.guards.max_nonfinite_steps=0", ValueError, "module.guards.max_nonfinite_steps must be >= 1"),
    ],
)
def test_bad_module_settings_fail_before_anything_is_loaded(tmp_path, no_model_load, override, error, match):
    run_dir = tmp_path / "run"
    with pytest.raises(error, match=match):
        run(compose_train(run_dir, override), run_dir)
    assert not run_dir.exists()


def test_sgd_by_config_trains(tmp_path):
    """``module.optimizer._target_=torch.optim.SGD`` alone: the default node's keys suit it, it trains."""
    run_dir = tmp_path / "run"
    cfg = compose_train(
        run_dir, PARITY, "module.optimizer._target_=torch.optim.SGD", "trainer.max_steps=1",
        "trainer.val_check_interval=1", "callbacks.model_checkpoint.save_last=false",
        "+callbacks.record._target_=tests.test_module_config.Recorder",
    )  # fmt: skip
    Recorder.seen.clear()
    check_combinations(cfg)
    run(cfg, run_dir)
    (opt,) = Recorder.seen
    assert type(opt) is torch.optim.SGD and opt.defaults["fused"] is True  # CPU auto kernel
    assert opt.defaults["lr"] == 1e-3
    assert Recorder.changed  # the step moved the weights


class Recorder:
    """A callback (by ``_target_``) that records the optimizer and whether the first step moved weights."""

    seen: list = []
    changed = False

    def __new__(cls):
        import lightning as L

        class _Recorder(L.Callback):
            def on_train_start(self, trainer, pl_module):
                Recorder.seen.append(trainer.optimizers[0])
                self.before = [p.detach().clone() for p in pl_module.policy.parameters()]

            def on_train_end(self, trainer, pl_module):
                after = list(pl_module.policy.parameters())
                Recorder.changed = any(not torch.equal(a, b) for a, b in zip(self.before, after))

        return _Recorder()


def test_a_checkpoint_with_the_old_names_compares_under_the_new_ones():
    old = {"module": {"ppo_epochs": 1, "lr": 1e-6}, "train": {"shared_prefix": True}}
    new = {
        "module": {
            "learner": {"ppo_epochs": 1},
            "optimizer": {"lr": 1e-5},
            "logprobs": {"shared_prefix": True},
        }
    }
    assert frozen_changes(old, new) == []  # the learning rate may change; ppo_epochs is the same
    new["module"]["learner"]["ppo_epochs"] = 2
    assert frozen_changes(old, new) == [("module.learner.ppo_epochs", 1, 2)]
