import json

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from longact_pl.masking import BottomK, Head, RopePair, SaliencyMask
from longact_pl.models.tiny import tiny_llama, tiny_qwen3
from tests.masking.stub import StubData, StubModule, fit

TARGET_SUFFIX = (".q_proj.weight", ".k_proj.weight", ".q_proj.bias", ".k_proj.bias")


def is_target(name):
    return name.endswith(TARGET_SUFFIX)


def module_of(param_name):
    return param_name.rsplit(".", 1)[0]


def check_exact_steps(module, others_frozen=False):
    """Per optimizer step: rows outside that step's mask unchanged bit for bit, kept rows all moved."""
    for step in module.steps:
        for name, before in step["before"].items():
            after = step["after"][name]
            if is_target(name):
                mask = step["masks"][module_of(name)]
                assert torch.equal(before[~mask], after[~mask]), name
                assert torch.equal(
                    step["grads"][name][~mask], torch.zeros_like(before[~mask])
                )  # clip saw this
                n = int(mask.sum())
                assert (after[mask] != before[mask]).reshape(n, -1).any(1).all(), name
                assert (step["grads"][name][mask] != 0).reshape(n, -1).any(1).all(), name
            elif others_frozen:
                assert torch.equal(before, after), name
                assert name not in step["grads"]


def test_exact_rows_with_adamw_decay_across_refresh():
    policy = tiny_llama(seed=0).model
    start = {n: p.detach().clone() for n, p in policy.named_parameters()}
    cb = SaliencyMask(ratio=0.3, calib_samples=2, refresh_every=2, ema=0.0)
    module = StubModule(policy)
    trainer = fit(module, StubData(policy.config.vocab_size), [cb], max_steps=5)
    assert trainer.global_step == 5 and len(module.steps) == 5
    check_exact_steps(module)
    # refreshes after steps 2 and 4; some row trained at step 1 (so it has Adam momentum) left the mask
    assert [h["step"] for h in cb.history] == [0, 2, 4]
    assert all(0.0 <= h["jaccard"] <= 1.0 and 0.0 < h["l1_share"] < 1.0 for h in cb.history[1:])
    m1, m3 = module.steps[0]["masks"], module.steps[2]["masks"]
    left = {k: m1[k] & ~m3[k] for k in m1}
    assert any(v.any() for v in left.values())
    for name, mask in left.items():  # frozen for steps 3 and 4 (same mask), despite their momentum
        w = name + ".weight"
        assert torch.equal(module.steps[3]["after"][w][mask], module.steps[2]["before"][w][mask])
    never = {k: ~torch.stack([s["masks"][k] for s in module.steps]).any(0) for k in m1}
    for name, mask in never.items():
        assert torch.equal(
            dict(policy.named_parameters())[name + ".weight"].detach()[mask], start[name + ".weight"][mask]
        )
    # non-target parameters got their dense update
    assert not torch.equal(
        policy.model.layers[0].mlp.up_proj.weight, start["model.layers.0.mlp.up_proj.weight"]
    )
    assert not torch.equal(
        policy.model.layers[1].self_attn.v_proj.weight, start["model.layers.1.self_attn.v_proj.weight"]
    )


def test_others_frozen_and_target_biases():
    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, attention_bias=True, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    with torch.no_grad():  # biases start at zero; make them distinct so "unchanged" means something
        for n, p in policy.named_parameters():
            if n.endswith("bias"):
                p.normal_()
    cb = SaliencyMask(ratio=0.5, unit=RopePair(), calib_samples=1, others="frozen")
    module = StubModule(policy)
    data = StubData(300)
    data.calibration_prompts = lambda n: [list(range(10, 60))] * n
    fit(module, data, [cb], max_steps=3)
    check_exact_steps(module, others_frozen=True)
    assert all(not p.requires_grad for n, p in policy.named_parameters() if not is_target(n))


def test_resume_restores_masks_without_recalibrating(tmp_path):
    data = StubData(49152)
    cb = SaliencyMask(ratio=0.3, calib_samples=2, unit=Head(), scope="global")
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1, save_top_k=0)
    fit(StubModule(tiny_llama(seed=0).model), data, [cb, ckpt], max_steps=2)
    assert data.calls == 1
    cb2 = SaliencyMask(ratio=0.3, calib_samples=2, unit=Head(), scope="global")
    module2 = StubModule(tiny_llama(seed=1).model)  # weights come from the checkpoint
    trainer = fit(module2, data, [cb2], max_steps=3, ckpt_path=str(tmp_path / "last.ckpt"))
    assert data.calls == 1 and trainer.global_step == 3
    assert cb2.masks.keys() == cb.masks.keys()
    assert all(torch.equal(cb.masks[k], cb2.masks[k]) for k in cb.masks)
    assert all(torch.equal(module2.steps[-1]["masks"][k], cb.masks[k]) for k in cb.masks)


def test_export_at_train_end(tmp_path):
    module = StubModule(tiny_llama(seed=0).model, export_dir=tmp_path / "final")
    cb = SaliencyMask(selector=BottomK(), ratio=0.3, calib_samples=1, refresh_every=1, statistic="rms")
    fit(module, StubData(49152), [cb], max_steps=2)
    masks = load_file(str(tmp_path / "final" / "mask.safetensors"))
    names = [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in ("q", "k")]
    assert sorted(masks) == sorted(names)
    assert {k: (v.dtype, v.numel(), int(v.sum())) for k, v in masks.items()} == {
        n: (torch.bool, 64 if ".q_" in n else 32, 19 if ".q_" in n else 10) for n in names
    }
    assert all(torch.equal(masks[k], cb.masks[k]) for k in names)
    summary = json.loads((tmp_path / "final" / "mask_summary.json").read_text())
    assert summary["selector"] == "BottomK" and summary["statistic"] == "rms" and summary["kept_rows"] == 58
    assert [h["step"] for h in summary["history"]] == [0, 1, 2]
    assert summary["modules"][names[1]]["kept"] == 10
    cb.export(tmp_path / "again")
    assert (tmp_path / "again" / "mask.safetensors").is_file()


def test_qwen3_measure_at_norm_trains():
    policy = tiny_qwen3(seed=0).model
    cb = SaliencyMask(measure_at="norm", calib_samples=1, refresh_every=1, ema=0.5)
    module = StubModule(policy)
    fit(module, StubData(49152), [cb], max_steps=2)
    check_exact_steps(module)
    assert len(cb.history) == 3


def test_measure_at_norm_errors_on_llama_and_bad_options():
    with pytest.raises(ValueError, match="measure_at=norm"):
        fit(
            StubModule(tiny_llama(seed=0).model),
            StubData(49152),
            [SaliencyMask(measure_at="norm")],
            max_steps=1,
        )
    for kwargs in ({"ratio": 0}, {"others": "half"}, {"statistic": "p99"}, {"unit": "row"}, {"scope": "all"}):
        with pytest.raises(ValueError):
            SaliencyMask(**kwargs)
