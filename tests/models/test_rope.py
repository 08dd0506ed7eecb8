"""One RoPE scaling (model.rope_scaling) for policy, reference and vLLM engine; max_model_len vs window."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from longact_pl.models.rope import (
    check_folder_window,
    check_max_model_len,
    check_policy_window,
    effective_window,
    scaled_config_fields,
)
from longact_pl.models.tiny import tiny_qwen3
from longact_pl.rollout.vllm_engine import engine_kwargs
from longact_pl.train import check_config
from tests.helpers import compose_train

YARN = {"rope_type": "yarn", "factor": 2.0}


def test_effective_window_is_base_times_factor():
    assert effective_window(40960, None) == 40960
    assert effective_window(40960, YARN) == 81920
    assert effective_window(40960, {**YARN, "original_max_position_embeddings": 32768}) == 65536
    # vLLM reads yarn's max_position_embeddings as the scaled window, linear's as the base it multiplies
    assert scaled_config_fields(40960, YARN)["max_position_embeddings"] == 81920
    assert (
        scaled_config_fields(40960, {"rope_type": "linear", "factor": 2.0})["max_position_embeddings"]
        == 40960
    )
    assert scaled_config_fields(40960, None) == {}


def test_max_model_len_above_the_window_names_the_fix():
    """The sequence-parallel length of docs/gpu.md on Qwen3's 40,960 positions: refused unless YaRN is set."""
    with pytest.raises(ValueError) as err:
        check_max_model_len(70656, 40960, None)
    message = str(err.value)
    assert "rollout.max_model_len=70656" in message and "window of 40960" in message
    assert "model.rope_scaling={rope_type: yarn, factor: 1.75}" in message
    check_max_model_len(70656, 40960, YARN)
    check_max_model_len(40960, 40960, None)
    check_max_model_len(None, 40960, None)
    with pytest.raises(ValueError, match="factor >= 1"):
        effective_window(40960, {"rope_type": "yarn"})


def test_policy_reference_and_engine_share_one_scaling(tmp_path):
    plain = tiny_qwen3().model
    policy = tiny_qwen3(rope_scaling=YARN).model
    reference = copy.deepcopy(policy)  # the module's frozen reference is a copy of the policy
    for model in (policy, reference):
        assert model.config.rope_parameters["rope_type"] == "yarn"
        assert model.config.rope_parameters["factor"] == 2.0
        assert model.config.max_position_embeddings == 16384  # tiny's 8192 x 2
        assert model.model.rotary_emb.rope_type == "yarn"
    # the scaling changes the computation (same seed, same weights)
    ids = torch.arange(10, 50).unsqueeze(0)  # [1, 40]
    assert not torch.allclose(plain(ids).logits, policy(ids).logits)
    # the engine: its config folder and its hf_overrides carry the same scaling and window
    policy.config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["rope_parameters"] == policy.config.rope_parameters
    kwargs = engine_kwargs(str(tmp_path), policy.config, {"max_model_len": 16384}, 0)
    assert kwargs["hf_overrides"] == {
        "rope_parameters": policy.config.rope_parameters,
        "max_position_embeddings": 16384,
    }
    assert "hf_overrides" not in engine_kwargs(str(tmp_path), plain.config, {}, 0)
    check_policy_window(16384, policy.config)
    with pytest.raises(ValueError, match="exceeds the model's window of 16384"):
        check_policy_window(16385, policy.config)
    with pytest.raises(ValueError, match="window of 8192"):
        check_policy_window(8193, plain.config)


def test_early_config_check_reads_the_model_folder(tmp_path):
    """rollout.max_model_len over a local model's window fails in check_config, before any weights load."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    base = ("model=hf", f"model.name_or_path={folder}", "rollout=vllm", "rollout.max_model_len=6000")
    with pytest.raises(ValueError, match="rollout.max_model_len=6000 exceeds the model's window of 4096"):
        check_config(compose_train(tmp_path, *base, tiny=False))
    check_config(compose_train(tmp_path, *base, "model.rope_scaling={rope_type:yarn,factor:1.5}", tiny=False))
    check_folder_window(str(folder), None, None)
