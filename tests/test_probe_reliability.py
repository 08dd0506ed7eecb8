"""Issue 22, own probe: resume settings beyond the listed cases, checked without training (crafted checkpoints
recording a composed config), each a silent setting or a loss found by the probe and fixed:

- every frozen group is compared, not only algo/model/masking (seed, batch size, temperature, PPO epochs,
  lengths, the rollout correction), and the allowed ones (lr, max_steps, loggers, cadence, speed) pass;
- a checkpoint past ``trainer.max_steps`` was accepted and reported its weights as a shorter run;
- a misspelt ``resume_allow_changes`` entry allowed nothing, silently;
- a checkpoint from before configs were recorded is said to be unchecked.
"""

import logging
import re

import pytest
import torch
from omegaconf import OmegaConf

from longact_pl.checkpoints.run_config import CONFIG_KEY
from longact_pl.train import check_config
from tests.helpers import compose_train

PARITY = "data.reward._target_=tests.helpers.ParityReward"


@pytest.fixture
def ckpt(tmp_path):
    """A 2-step checkpoint recording the tiny default config."""
    path = tmp_path / "last.ckpt"
    config = OmegaConf.to_container(compose_train(tmp_path, PARITY), resolve=True)
    torch.save({"global_step": 2, "callbacks": {}, CONFIG_KEY: config}, path)
    return path


@pytest.mark.parametrize(
    "change,field",
    [
        ("seed=7", "seed"),
        ("data.batch_size=4", "data.batch_size"),
        ("rollout.temperature=0.9", "rollout.temperature"),
        ("module.learner.ppo_epochs=2", "module.learner.ppo_epochs"),
        ("data.train.lengths=[512]", "data.train.lengths"),
        ("rollout=vllm correction=token_tis", "correction.level"),  # a correction needs an external sampler
        ("data.max_prompt_tokens=2048", "data.max_prompt_tokens"),
        ("algo.kl_coef=0.1", "algo.kl_coef"),
    ],
)
def test_every_frozen_setting_is_refused_by_name(tmp_path, ckpt, change, field):
    """Refused naming the field; the override the message suggests lets the change through."""
    escaped = field.replace(".", r"\.")
    with pytest.raises(ValueError, match=rf"{escaped}: .* -> .*resume_allow_changes=") as err:
        check_config(compose_train(tmp_path, PARITY, f"ckpt_path={ckpt}", *change.split()))
    override = re.search(r"resume_allow_changes=\[[^\]]*\]", str(err.value)).group(0)
    assert check_config(compose_train(tmp_path, PARITY, f"ckpt_path={ckpt}", *change.split(), override)) == 2


def test_how_a_run_is_computed_logged_or_validated_may_change(tmp_path, ckpt):
    allowed = ["module.optimizer.lr=3e-4", "module.scheduler.warmup_steps=5",
               "module.optimizer.weight_decay=0.1",
               "module.learner.max_grad_norm=0.5",
               "trainer.max_steps=10", "trainer.val_check_interval=1", "logger=tensorboard",
               "callbacks.model_checkpoint.every_n_train_steps=1", "data.val.num_samples=4",
               "module.learner.micro_batch_size=2", "module.logprobs.chunk_size=16",
               "model.gradient_checkpointing=true",
               "sigterm_exit_code=75", "validate_before_training=true"]  # fmt: skip
    assert check_config(compose_train(tmp_path, PARITY, f"ckpt_path={ckpt}", *allowed)) == 2


def test_a_checkpoint_past_max_steps_is_refused(tmp_path, ckpt):
    with pytest.raises(ValueError, match=r"has trained 2 steps, more than trainer\.max_steps=1"):
        check_config(compose_train(tmp_path, PARITY, f"ckpt_path={ckpt}", "trainer.max_steps=1"))


def test_a_misspelt_override_is_refused(tmp_path, ckpt):
    with pytest.raises(ValueError, match=r"resume_allow_changes lists 'algoo', which names no field"):
        check_config(compose_train(tmp_path, PARITY, f"ckpt_path={ckpt}", "resume_allow_changes=[algoo]"))


def test_a_checkpoint_without_a_recorded_config_is_said_to_be_unchecked(tmp_path, caplog):
    old = tmp_path / "old.ckpt"
    torch.save({"global_step": 1, "callbacks": {}}, old)
    with caplog.at_level(logging.WARNING):
        assert check_config(compose_train(tmp_path, PARITY, f"ckpt_path={old}", "algo=dapo")) == 1
    assert any("records no config" in r.getMessage() for r in caplog.records)
