"""train.py's memory preflight: the plan printed in one block; a run that would not fit refused before
anything loads or is written, naming the settings that would make it fit; ``memory.check=warn`` runs it
anyway."""

import pytest

from longact_pl.memory.__main__ import main as plan_cli
from longact_pl.memory.preflight import MemoryPlanError, memory_preflight
from longact_pl.train import run
from tests.helpers import NO_CKPT, compose_train

TOO_SMALL = "memory.limit_gb=0.05"  # the tiny run's plan: ~0.12 GiB


def test_a_run_over_the_limit_is_refused_naming_fixes_and_writes_nothing(tmp_path, capsys, no_model_load):
    run_dir = tmp_path / "run"
    cfg = compose_train(run_dir, TOO_SMALL, "trainer.max_steps=1")
    with pytest.raises(MemoryPlanError, match="exceeds the 0.05 GiB of memory.limit_gb") as err:
        run(cfg, run_dir)
    message = str(err.value)
    fixes = ("model.gradient_checkpointing=true", "module.learner.micro_batch_tokens=",
             "sequence_parallel_size", "strategy=fsdp", "cpu_offload=true", "memory.check=warn")  # fmt: skip
    for fix in fixes:
        assert fix in message, fix
    assert not run_dir.exists()  # no folder, no config.yaml
    out = capsys.readouterr().out
    assert out.count("memory plan per rank: tiny_llama") == 1 and "does NOT fit" in out


def test_warn_prints_the_plan_and_trains(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run(compose_train(run_dir, TOO_SMALL, "memory.check=warn", "trainer.max_steps=1", NO_CKPT), run_dir)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    assert "memory plan per rank: tiny_llama" in capsys.readouterr().out


def test_off_plans_nothing_and_bad_settings_name_the_field(tmp_path):
    assert memory_preflight(compose_train(tmp_path, TOO_SMALL, "memory.check=off")) is None
    with pytest.raises(ValueError, match="memory.check must be one of"):
        memory_preflight(compose_train(tmp_path, "memory.check=maybe"))
    with pytest.raises(ValueError, match="memory.limit_gb must be a positive number"):
        memory_preflight(compose_train(tmp_path, "memory.limit_gb=-1"))


def test_unknown_hub_model_is_not_planned(tmp_path):
    cfg = compose_train(tmp_path, "model=hf", "model.name_or_path=some-org/unknown-model", tiny=False)
    assert memory_preflight(cfg, announce=False) is None


def test_plan_cli_exit_codes(capsys):
    """``python -m longact_pl.memory``: 0 when it fits, 1 when not; Qwen3-4B planned from its known shape."""
    assert plan_cli(["model=tiny_qwen3"]) == 0
    qwen = ["model=hf", "model.name_or_path=Qwen/Qwen3-4B", "trainer.accelerator=gpu", "trainer.devices=1"]
    assert plan_cli([*qwen, "memory.limit_gb=72"]) == 1  # 78.2 GiB planned: 60 of weights, grads, AdamW
    out = capsys.readouterr().out
    assert "Qwen/Qwen3-4B (L=36, H=2560, heads 32/8, V=151936)" in out and "would fit:" in out
    assert "recommended: strategy=fsdp trainer.strategy.cpu_offload=true" in out
    assert plan_cli([*qwen, "memory.limit_gb=72", "memory.check=warn"]) == 0
