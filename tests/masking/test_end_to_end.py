"""LongAct through ``train.py``'s composition: exact masks in real GRPO/DAPO runs."""

import pytest
import torch

from longact_pl.masking.export import read_masks, read_summary
from longact_pl.models.hf import load_hf
from longact_pl.models.tiny import tiny_llama
from longact_pl.train import run
from tests.helpers import NO_CKPT, compose_train

PARITY = "data.reward._target_=tests.helpers.ParityReward"


def _final(run_dir):
    return load_hf(str(run_dir / "final"), dtype="float32").model


@pytest.mark.parametrize("algo", ["grpo", "dapo"])
def test_saliency_run_updates_exactly_the_masked_rows(tmp_path, algo):
    cfg = compose_train(tmp_path, f"algo={algo}", "masking=saliency", "masking.calib_samples=2", PARITY)
    run(cfg, tmp_path)
    masks = read_masks(tmp_path / "final")
    assert len(masks) == 4  # q_proj and k_proj in 2 layers
    start, final = tiny_llama(seed=cfg.seed).model, _final(tmp_path)
    for name, keep in masks.items():
        before, after = start.get_submodule(name).weight, final.get_submodule(name).weight
        assert keep.sum() == round(0.3 * keep.numel())  # 19 of 64 q rows, 10 of 32 k rows
        assert torch.equal(after[~keep], before[~keep])  # frozen rows bit-identical
        assert not torch.equal(after[keep], before[keep])  # kept rows trained
    assert not torch.equal(final.model.layers[0].mlp.up_proj.weight, start.model.layers[0].mlp.up_proj.weight)
    summary = read_summary(tmp_path / "final")
    assert summary["ratio"] == 0.3


def test_full_ratio_mask_equals_dense_training_bit_for_bit(tmp_path):
    """The callback itself (hooks, calibration, restore) perturbs nothing when every row is kept."""
    dense, masked = tmp_path / "dense", tmp_path / "masked"
    run(compose_train(dense, "masking=none", PARITY), dense)
    run(
        compose_train(masked, "masking=saliency", "masking.ratio=1.0", "masking.calib_samples=1", PARITY),
        masked,
    )
    a, b = _final(dense), _final(masked)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_random_and_inverse_controls_differ_from_saliency(tmp_path):
    kept = {}
    for option in ("saliency", "random", "inverse"):
        d = tmp_path / option
        run(
            compose_train(d, f"masking={option}", "masking.calib_samples=1", "trainer.max_steps=1", PARITY), d
        )
        kept[option] = read_masks(d / "final")
    for name, sal in kept["saliency"].items():
        assert kept["random"][name].sum() == sal.sum() == kept["inverse"][name].sum()
        assert not (kept["inverse"][name] & sal).any()
    assert any(not torch.equal(kept["random"][n], s) for n, s in kept["saliency"].items())


@pytest.mark.slow
def test_one_grpo_step_with_longact_on_smollm2(tmp_path):
    cfg = compose_train(
        tmp_path, "model=smollm2_135m", "masking=saliency", "masking.calib_samples=1", "trainer.max_steps=1",
        "trainer.val_check_interval=1", "data.batch_size=1", "rollout.group_size=4",
        "rollout.max_new_tokens=8", "rollout.temperature=2.0",
        "data.train.lengths=[512]", "data.val.lengths=[512]", "data.val.num_samples=1",
        "module.optimizer.lr=1e-5",
        "trainer.precision=bf16-mixed", "algo.kl_coef=0.0", PARITY,
        NO_CKPT,
    )  # fmt: skip
    run(cfg, tmp_path)
    masks = read_masks(tmp_path / "final")
    assert len(masks) == 60  # 30 layers x (q_proj, k_proj)
    name = "model.layers.15.self_attn.q_proj"
    assert masks[name].shape == (576,) and masks[name].sum() == round(0.3 * 576)
    from longact_pl.models.smollm2 import load_smollm2

    start, final = load_smollm2().model, _final(tmp_path)
    keep = masks[name]
    before, after = start.get_submodule(name).weight, final.get_submodule(name).weight
    assert torch.equal(after[~keep], before[~keep])
    assert not torch.equal(after[keep], before[keep])


def test_every_new_option_together_on_qwen3(tmp_path):
    """rope_pair scored after q_norm + RoPE, joint Q-K units, frozen q/k norms, refresh, telemetry: GRPO."""
    import csv

    from longact_pl.models.tiny import tiny_qwen3

    cfg = compose_train(
        tmp_path, "model=tiny_qwen3", "masking=saliency", "masking.calib_samples=1", "masking/unit=rope_pair",
        "masking.measure_at=post_rope", "masking.pairing=joint", "masking.norms=frozen",
        "masking.refresh_every=1", PARITY,
    )  # fmt: skip
    run(cfg, tmp_path)
    masks, summary = read_masks(tmp_path / "final"), read_summary(tmp_path / "final")
    start, final = tiny_qwen3(seed=cfg.seed).model, _final(tmp_path)
    for name, keep in masks.items():
        before, after = start.get_submodule(name).weight, final.get_submodule(name).weight
        assert torch.equal(after[~keep], before[~keep]) and not torch.equal(after[keep], before[keep])
    q, k = (masks[f"model.layers.1.self_attn.{p}_proj"].view(-1, 16) for p in ("q", "k"))  # [heads, D]
    assert torch.equal(q, k.repeat_interleave(2, 0)) and torch.equal(k[:, :8], k[:, 8:])  # joint, pairs
    for norm in ("q_norm", "k_norm"):
        w = f"model.layers.0.self_attn.{norm}.weight"
        assert torch.equal(final.get_parameter(w), start.get_parameter(w))
    assert summary["measure_at"] == "post_rope" and [h["step"] for h in summary["history"]] == [0, 1, 2]
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("mask/grad_share_kept")]
    assert len(rows) == 2 and all(0 < float(r["mask/act_l1_share_kept"]) < 1 for r in rows)


def test_a_nan_in_a_frozen_row_does_not_skip_the_step(tmp_path):
    """The non-finite check and train/grad_norm see the gradient applied (masked); the pre-mask norm is
    logged as train/grad_norm_pre_mask."""
    import csv
    import math

    cfg = compose_train(
        tmp_path, "masking=saliency", "masking.calib_samples=1", PARITY,
        "+callbacks.nan._target_=tests.masking.stub.NaNInFrozenRow",
    )  # fmt: skip
    run(cfg, tmp_path)
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/grad_norm")]
    assert len(rows) == 2 and not any(float(r.get("train/nonfinite_steps") or 0) for r in rows)
    assert all(
        math.isfinite(float(r["train/grad_norm"])) and r["train/grad_norm_pre_mask"] == "nan" for r in rows
    )
    masks, final = read_masks(tmp_path / "final"), _final(tmp_path)
    start = tiny_llama(seed=cfg.seed).model
    for name, keep in masks.items():
        before, after = start.get_submodule(name).weight, final.get_submodule(name).weight
        assert torch.equal(after[~keep], before[~keep]) and not torch.equal(after[keep], before[keep])
    assert all(torch.isfinite(p).all() for p in final.parameters())
