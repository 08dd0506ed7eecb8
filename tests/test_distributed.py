"""DDP and FSDP2 on CPU (2 processes, gloo) against one process on the same global batch.

What is compared: two RL steps of GRPO with DAPO's token-mean aggregation and LongAct masks on the tiny
Llama. The single process sees 4 prompts per step; each of the 2 ranks sees 2 of them, and the two rank
batches of a step are exactly the single-process batch (``RankShardedData``). Rollouts come from
``PerPromptRollout`` (each prompt generated alone, seeded by its tokens, and cut at seeded random lengths so
the ranks hold different token counts), the reward is deterministic, and calibration prompts are split
across ranks. So every rank must build the single-process mask, and the weights after 2 steps must match
the single-process weights up to float summation order.
"""

import csv

import pytest
import torch
from safetensors.torch import load_file

from longact_pl.models.tiny import tiny_llama
from tests.distributed_helpers import train_cli

SEED = 42
COMMON = [
    "model=tiny_llama",
    f"seed={SEED}",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.max_steps=2",
    "+trainer.limit_val_batches=0",
    "validate_before_training=false",
    "data._target_=tests.distributed_helpers.RankShardedData",
    "trainer.use_distributed_sampler=false",
    "data.train.lengths=[256]",
    "data.reward._target_=tests.helpers.ParityReward",
    "rollout=hf",
    "rollout._target_=tests.distributed_helpers.PerPromptRollout",
    "rollout.group_size=4",
    "rollout.max_new_tokens=8",
    "algo=grpo",
    "algo.aggregation=token_mean",
    "masking=saliency",
    "masking.ratio=0.5",
    "masking.calib_samples=4",
    "module.optimizer.lr=1e-3",
    "module.learner.micro_batch_size=4",
]


def _train(run_dir, *overrides, base=tuple(COMMON)):
    probe = [
        "+callbacks.probe._target_=tests.distributed_helpers.RankProbe",
        f"+callbacks.probe.out_dir={run_dir / 'probe'}",
    ]
    result = train_cli(run_dir, *base, *probe, *overrides)
    # the shared-prefix log-prob path ran on every rank (FSDP2 included), no per-row fallback
    assert "one row at a time" not in result.stdout + result.stderr
    return [torch.load(path) for path in sorted((run_dir / "probe").glob("rank*.pt"))]


def _metric_rows(run_dir) -> list[dict[str, float]]:
    """The logged per-step ``train/*`` and ``mask/*`` values (rank 0 writes ``metrics.csv``)."""
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/reward_mean")]
    return [{k: float(v) for k, v in r.items() if v and k.startswith(("train/", "mask/"))} for r in rows]


def assert_same_metrics(got: list[dict[str, float]], want: list[dict[str, float]]) -> None:
    """Every logged metric of every step equals one process's (up to float summation order), but timing."""
    assert len(got) == len(want) == 2
    for step, (g, w) in enumerate(zip(got, want)):
        assert g.keys() == w.keys(), (step, g.keys() ^ w.keys())
        for key, value in w.items():
            if key != "train/tokens_per_s":  # wall time: summed over ranks, not comparable
                assert g[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (step, key, g[key], value)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single")
    (probe,) = _train(run_dir, "data.batch_size=4")
    return {**probe, "metrics": _metric_rows(run_dir)}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, single, strategy):
    ranks = _train(tmp_path, f"strategy={strategy}", "trainer.devices=2", "data.batch_size=2")
    assert [r["world_size"] for r in ranks] == [2, 2] and all(r["step"] == 2 for r in ranks)
    assert all(r["forward_dtypes"] == {torch.float32} for r in ranks)  # trainer.precision=32-true: no casting
    start = dict(tiny_llama(seed=SEED).model.state_dict())
    masks = ranks[0]["masks"]
    assert masks and set(masks) == set(single["masks"])
    for name, mask in masks.items():
        # every rank trains the same rows, and they are the single-process rows (statistics summed over ranks)
        assert torch.equal(mask, ranks[1]["masks"][name]) and torch.equal(mask, single["masks"][name])
        weight = ranks[0]["weights"][f"{name}.weight"]
        assert torch.equal(weight[~mask], start[f"{name}.weight"][~mask])  # frozen rows bit for bit
        assert not torch.equal(weight[mask], start[f"{name}.weight"][mask])
    moved = 0.0
    for key, value in single["weights"].items():
        assert torch.equal(ranks[0]["weights"][key], ranks[1]["weights"][key]), key
        torch.testing.assert_close(ranks[0]["weights"][key], value, atol=2e-6, rtol=1e-4, msg=key)
        moved = max(moved, float((value - start[key]).abs().max()))
    assert moved > 1e-3  # two AdamW steps at lr 1e-3 moved the weights well beyond the tolerance
    # logged metrics are the global batch's (rewards, losses, token means, counts, mask telemetry), not
    # rank 0's half; the reward is mixed, so the halves differ
    metrics = _metric_rows(tmp_path)
    assert {"train/reward_mean", "train/entropy", "train/kl", "mask/grad_share_kept"} <= metrics[0].keys()
    assert len({r["train/reward_std"] for r in single["metrics"]} - {0.0}) > 0
    assert_same_metrics(metrics, single["metrics"])
    # the exported policy is the full (gathered) model; checkpoints hold full masks (FSDP: sharded weights)
    final = load_file(tmp_path / "final" / "model.safetensors")
    assert final and all(torch.equal(t, ranks[0]["weights"][k]) for k, t in final.items())
    assert (tmp_path / "final" / "mask.safetensors").is_file()
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt / "meta.pt" if ckpt.is_dir() else ckpt, weights_only=False)
    assert all(torch.equal(state["callbacks"]["SaliencyMask"]["masks"][k], m) for k, m in masks.items())


@pytest.mark.slow
def test_fsdp_bf16_mixed_gathers_bf16_and_trains_fp32_master_weights(tmp_path):
    """``trainer.precision=bf16-mixed`` under FSDP2: layers run on bf16 gathers, fp32 shards take the update.

    One step at lr 1e-6 moves nearly every entry of an MLP matrix (bf16 weights would round it away) and
    the export is fp32.
    """
    ranks = _train(
        tmp_path, "strategy=fsdp", "trainer.devices=2", "data.batch_size=2", "trainer.precision=bf16-mixed",
        "module.optimizer.lr=1e-6", "trainer.max_steps=1",
    )  # fmt: skip
    assert [r["forward_dtypes"] for r in ranks] == [{torch.bfloat16}] * 2
    assert all(torch.equal(t, ranks[1]["weights"][k]) for k, t in ranks[0]["weights"].items())
    final = load_file(tmp_path / "final" / "model.safetensors")
    assert {t.dtype for t in final.values()} == {torch.float32}
    name = "model.layers.0.mlp.down_proj.weight"
    start = tiny_llama(seed=SEED).model.state_dict()[name]
    assert float((final[name] != start).float().mean()) > 0.9  # measured: 0.9999


@pytest.mark.slow
def test_dapo_dynamic_sampling_keeps_fsdp_ranks_in_lock_step(tmp_path):
    """Ranks drop different groups and refill in extra rounds; generation and training stay collective.

    Under FSDP generation and every forward are collectives: a rank generating one more round, or training
    on more groups, than the other would hang the run (train_cli's timeout fails the test).
    """
    base = [o for o in COMMON if not o.startswith(("algo", "data.reward"))]
    ranks = _train(
        tmp_path, "strategy=fsdp", "trainer.devices=2", "data.batch_size=2", "algo=dapo",
        "algo.dynamic_sampling=true", "algo.max_gen_rounds=3", "algo.overlong_penalty_coef=0",
        "trainer.max_steps=3",
        "data.reward._target_=tests.helpers.HalfUniformReward", base=base,
    )  # fmt: skip
    assert [r["step"] for r in ranks] == [3, 3]
    assert all(torch.equal(t, ranks[1]["weights"][k]) for k, t in ranks[0]["weights"].items())
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/gen_rounds")]
    assert sum(float(r["train/dropped_groups"]) for r in rows) > 0
    assert max(float(r["train/gen_rounds"]) for r in rows) > 1
    # the global count (summed over ranks): each rank trains on 1 to data.batch_size groups
    assert all(2 <= float(r["train/kept_groups"]) <= 4 for r in rows)


@pytest.mark.slow
def test_default_prefix_shared_rollouts_under_fsdp(tmp_path):
    """``rollout=hf_shared`` (the default: one prefill per prompt, shared-prefix decoding) on 2 FSDP ranks."""
    base = [o for o in COMMON if not o.startswith("rollout")]
    ranks = _train(
        tmp_path, "strategy=fsdp", "trainer.devices=2", "data.batch_size=2", "rollout=hf_shared",
        "rollout.group_size=4", "rollout.max_new_tokens=8", base=base,
    )  # fmt: skip
    assert [r["step"] for r in ranks] == [2, 2]
    start = dict(tiny_llama(seed=SEED).model.state_dict())
    weights = ranks[0]["weights"]
    assert all(torch.equal(t, ranks[1]["weights"][k]) for k, t in weights.items())
    assert any(not torch.equal(t, start[k]) for k, t in weights.items())


@pytest.mark.slow
def test_validation_set_not_divisible_by_the_ranks_under_fsdp(tmp_path):
    """3 held-out prompts on 2 FSDP ranks: rank 1 generates a padding prompt (never scored), so both ranks
    run 2 validation batches; otherwise rank 0's second generation would wait forever for rank 1."""
    base = [o for o in COMMON if o not in ("+trainer.limit_val_batches=0", "validate_before_training=false")]
    _train(
        tmp_path, "strategy=fsdp", "trainer.devices=2", "data.batch_size=2", "trainer.max_steps=1",
        "trainer.val_check_interval=1", "validate_before_training=true", "data.val.lengths=[256]",
        "data.val.num_samples=3", "data.val_batch_size=1", base=base,
    )  # fmt: skip
    with open(tmp_path / "metrics.csv") as f:
        accs = [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")]
    assert len(accs) == 2  # before training and after the step
    assert all(abs(a * 3 - round(a * 3)) < 1e-6 for a in accs)  # means over the 3 real prompts
