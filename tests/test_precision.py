"""fp32 master weights: every way a user trains a real model moves (nearly) every weight at lr 1e-6.

The runs load a tiny Qwen3 saved to a folder through ``model=hf``, as a user's checkpoint would be, and
override only what needs a GPU, vLLM, W&B or long prompts. In bf16, AdamW's lr-1e-6 step rounds away for
almost every entry; such runs are refused before anything is written.
"""

from types import SimpleNamespace

import pytest
import torch
from hydra.errors import InstantiationException
from safetensors.torch import load_file
from torch.distributed.fsdp import MixedPrecisionPolicy

from longact_pl import strategies
from longact_pl.models.tiny import tiny_qwen3
from longact_pl.precision import check_master_weights, fsdp_mixed_precision
from longact_pl.train import run
from tests.helpers import compose_train

MATRIX = "model.layers.0.mlp.down_proj.weight"
# the presets' vLLM context (37888, Qwen3's window) capped at the tiny model's window (8192)
TINY_WINDOW = ["rollout.max_model_len=8192"]
# how a user trains: each preset (DAPO's overlong cache of the 4 new tokens), and model=hf by default
SETUPS = {
    "paper_qwen3_8b_dapo": ["experiment=paper_qwen3_8b_dapo", "algo.overlong_cache_len=2", *TINY_WINDOW],
    "paper_qwen3_4b_grpo": ["experiment=paper_qwen3_4b_grpo", *TINY_WINDOW],
    "cpu_longact": ["experiment=cpu_longact", "model=hf"],
    "model_hf": ["model=hf"],
}
# what the presets need beyond this machine (GPUs, FSDP ranks, W&B, 32k prompts), shrunk for one CPU step
CPU = [
    "trainer.accelerator=cpu", "strategy=single", "logger=csv", "trainer.max_steps=1",
    "+trainer.limit_val_batches=0", "validate_before_training=false", "data.batch_size=1",
    "data.max_prompt_tokens=4096", "data.train.lengths=[512]", "data.val.lengths=[512]",
    "data.val.num_samples=1", "rollout.max_new_tokens=4", "module.optimizer.lr=1e-6",
    "module.scheduler.warmup_steps=0",
    "data.reward._target_=tests.helpers.ParityReward", "callbacks.model_checkpoint.save_last=false",
    "seed=0",  # (with seed 42 the 4 completions of model=hf all get reward 1: no gradient)
    "rollout._target_=tests.helpers.VLLMStandIn",  # the presets' rollout=vllm, sampled by HF here
]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Qwen3 saved like a user's fp32 checkpoint."""
    folder = tmp_path_factory.mktemp("tiny_qwen3")
    loaded = tiny_qwen3(seed=0)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def _train(tmp_path, checkpoint, setup: str, *overrides: str) -> float:
    """Run one step; the share of ``MATRIX``'s entries that changed."""
    cfg = compose_train(
        tmp_path, *SETUPS[setup], f"model.name_or_path={checkpoint}", *CPU, *overrides, tiny=False
    )
    run(cfg, tmp_path)
    before = load_file(checkpoint / "model.safetensors")[MATRIX]
    after = load_file(tmp_path / "final" / "model.safetensors")[MATRIX]
    assert str(after.dtype) == f"torch.{cfg.model.dtype}"  # fp32 runs export as precisely as they loaded
    return float((after != before.to(after.dtype)).float().mean())


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_one_step_at_lr_1e6_moves_nearly_every_weight(tmp_path, checkpoint, setup):
    assert _train(tmp_path, checkpoint, setup) > 0.9  # measured: 0.999 to 1.0


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_bf16_weights_are_refused_before_anything_is_written(tmp_path, checkpoint, setup):
    cfg = compose_train(
        tmp_path, *SETUPS[setup], f"model.name_or_path={checkpoint}", *CPU, "model.dtype=bfloat16", tiny=False
    )
    with pytest.raises((ValueError, InstantiationException), match="model.dtype=float32"):  # hydra wraps it
        run(cfg, tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_opt_out_trains_bf16_weights_and_shows_why_it_is_refused(tmp_path, checkpoint):
    moved = _train(
        tmp_path, checkpoint, "model_hf", "model.dtype=bfloat16", "module.allow_low_precision_weights=true"
    )
    assert moved < 0.1  # the lr-1e-6 update rounded away for almost every entry (measured: 0.019)


def test_bf16_true_precision_is_refused_when_the_optimizer_is_built(tmp_path, checkpoint):
    cfg = compose_train(
        tmp_path, "model=hf", f"model.name_or_path={checkpoint}", *CPU, "trainer.precision=bf16-true"
    )
    with pytest.raises(ValueError, match="module.allow_low_precision_weights"):
        run(cfg, tmp_path)


def test_frozen_low_precision_parameters_are_allowed():
    frozen = torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16), requires_grad=False)
    check_master_weights([frozen, torch.nn.Parameter(torch.zeros(2))])  # e.g. a bf16 reference model
    with pytest.raises(ValueError, match="float16"):
        check_master_weights([torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))])
    check_master_weights([torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))], allow_low_precision=True)


@pytest.mark.parametrize(("precision", "param", "reduce"), [("bf16-mixed", torch.bfloat16, torch.float32),
                                                             ("32-true", None, None)])  # fmt: skip
def test_fsdp_gathers_bf16_and_reduces_fp32_under_bf16_mixed(monkeypatch, precision, param, reduce):
    """``LongActFSDP.parallelize`` hands the policy and the reference model the precision's policy."""
    calls = []
    monkeypatch.setattr(
        strategies, "shard_model", lambda model, mesh, reshard, mp, *offload: calls.append((model, mp))
    )
    fake = SimpleNamespace(
        precision_plugin=SimpleNamespace(precision=precision), device_mesh={"data_parallel": "mesh"},
        activation_checkpointing=False, reshard_after_forward=True, sequence_parallel_size=1,
        cpu_offload=False,
        sequence_parallel=None,
    )  # fmt: skip
    module = SimpleNamespace(policy=torch.nn.Linear(2, 2), ref_model=torch.nn.Linear(2, 2))
    strategies.LongActFSDP.parallelize(fake, module)
    assert [m for m, _ in calls] == [module.policy, module.ref_model]
    for _, mp in calls:
        assert mp == fsdp_mixed_precision(precision)
        assert (mp.param_dtype, mp.reduce_dtype) == (param, reduce)
    assert fsdp_mixed_precision("32-true") == MixedPrecisionPolicy()
