"""Sequence parallelism in the training stack: bad settings are refused early; DP x SP equals DP alone."""

from __future__ import annotations

import csv
import re
from types import SimpleNamespace

import pytest
import torch

from longact_pl.distributed import StrategyOps, data_parallel_rank
from longact_pl.models.tiny import tiny_llama
from longact_pl.ops.sequence_parallel import SPGroup
from longact_pl.train import run
from tests.distributed_helpers import train_cli
from tests.helpers import compose_train
from tests.test_distributed import COMMON as DISTRIBUTED
from tests.test_distributed import SEED, _metric_rows, assert_same_metrics

SP = "trainer.strategy.sequence_parallel_size"


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["strategy=fsdp", "trainer.devices=3", f"{SP}=2"], f"{SP}=2 must divide the world size (3"),
        (
            ["strategy=fsdp", "trainer.devices=3", f"{SP}=3"],
            f"{SP}=3 must divide the number of attention heads (4)",
        ),
        (["strategy=ddp", "trainer.devices=2", f"{SP}=2"], f"{SP}=2 needs strategy=fsdp"),
        (["strategy=fsdp", f"{SP}=0"], f"{SP} must be >= 1"),
    ],
    ids=["world", "heads", "ddp", "zero"],
)
def test_bad_sequence_parallel_settings_fail_before_anything_is_written(tmp_path, overrides, expected):
    cfg = compose_train(tmp_path, "trainer.accelerator=cpu", *overrides)
    with pytest.raises(Exception, match=re.escape(expected)):  # Hydra wraps errors of constructors
        run(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_data_parallel_rank_and_sums_count_a_sequence_parallel_group_once():
    sp_trainer = SimpleNamespace(
        strategy=SimpleNamespace(distributed_sampler_kwargs={"rank": 1, "num_replicas": 2}), global_rank=3,
        world_size=4,
    )  # fmt: skip
    assert data_parallel_rank(sp_trainer) == (1, 2)  # global rank 3 = data-parallel group 1 of 2
    assert data_parallel_rank(SimpleNamespace(strategy=object(), global_rank=0, world_size=1)) == (0, 1)
    # 4 ranks, groups of 2 holding the same counts: reduce() sums all 4, each group is counted once
    strategy = SimpleNamespace(
        world_size=4, root_device=torch.device("cpu"), sequence_parallel=SPGroup(None, 2, 0),
        reduce=lambda t, reduce_op: t * 4,
    )  # fmt: skip
    assert torch.equal(StrategyOps(strategy).sum(torch.tensor([3.0, 10.0])), torch.tensor([6.0, 20.0]))
    assert StrategyOps(strategy).world_size == 4  # the loss scale: FSDP averages over every rank


# test_distributed's setting (tiny Llama, GRPO with DAPO's token mean, LongAct masks, per-prompt rollouts) on
# the datamodule's own sampler (prompts dealt by data-parallel rank), masks rebuilt after every step
COMMON = [
    *(o for o in DISTRIBUTED if not o.startswith(("data._target_", "trainer.use_distributed_sampler"))),
    "strategy=fsdp",
    "data.batch_size=1",
    "masking.refresh_every=1",
    "masking.ema=0.5",
    "callbacks.model_checkpoint.save_last=false",
]


def _train(run_dir, *overrides):
    probe = [
        "+callbacks.probe._target_=tests.distributed_helpers.RolloutProbe",
        f"+callbacks.probe.out_dir={run_dir / 'probe'}",
    ]
    result = train_cli(run_dir, *COMMON, *probe, *overrides)
    assert "one row at a time" not in result.stdout + result.stderr  # the shared-prompt path ran
    return [torch.load(path) for path in sorted((run_dir / "probe").glob("rank*.pt"))]


def _train_rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_dp2_sp2_trains_like_dp2(tmp_path):
    """4 ranks (2 data-parallel groups of 2 sequence-parallel ranks) vs 2 data-parallel ranks, same prompts.

    Both runs see the same prompt per data-parallel group and step (the sampler deals by data-parallel
    rank), so after 2 GRPO steps (DAPO token mean, LongAct masks rebuilt after each step from the training
    forwards' statistics) the weights must agree up to float summation order, the masks exactly.
    """
    dp = _train(tmp_path / "dp", "trainer.devices=2")
    sp = _train(tmp_path / "sp", "trainer.devices=4", "trainer.strategy.sequence_parallel_size=2")
    assert [r["world_size"] for r in sp] == [4] * 4 and all(r["step"] == 2 for r in sp + dp)
    # the ranks of a sequence-parallel group trained on the same prompts and identical rollouts
    assert sp[0]["prompts"] == sp[1]["prompts"] == dp[0]["prompts"] != dp[1]["prompts"] == sp[2]["prompts"]
    assert _same(sp[0]["rollouts"], sp[1]["rollouts"]) and _same(sp[2]["rollouts"], sp[3]["rollouts"])
    assert torch.equal(sp[0]["rollouts"][0], dp[0]["rollouts"][0])  # step 1: the DP run's rollouts too
    start = dict(tiny_llama(seed=SEED).model.state_dict())
    assert len(dp[0]["step_masks"]) == 2 and dp[0]["masks"]
    for name, mask in dp[0]["masks"].items():
        for r in sp + dp:  # the masks of both steps and the final one: identical on every rank, in both runs
            assert torch.equal(r["masks"][name], mask)
            assert all(torch.equal(m[name], d[name]) for m, d in zip(r["step_masks"], dp[0]["step_masks"]))
        weight = sp[0]["weights"][f"{name}.weight"]
        frozen = ~dp[0]["step_masks"][0][name] & ~dp[0]["step_masks"][1][name]  # frozen in both steps
        assert frozen.any() and torch.equal(weight[frozen], start[f"{name}.weight"][frozen])
    moved = 0.0
    for key, value in dp[0]["weights"].items():
        assert all(torch.equal(r["weights"][key], sp[0]["weights"][key]) for r in sp)
        torch.testing.assert_close(sp[0]["weights"][key], value, atol=2e-6, rtol=1e-4, msg=key)
        moved = max(moved, float((value - start[key]).abs().max()))
    assert moved > 1e-3  # two AdamW steps at lr 1e-3 moved the weights well beyond the tolerance
    # AdamW hides a constant gradient scale; the loss and the gradient norm (rank 0's) do not: the counts
    # that normalise them are data-parallel sums (each sequence-parallel group once)
    dp_rows, sp_rows = _train_rows(tmp_path / "dp"), _train_rows(tmp_path / "sp")
    assert len(dp_rows) == len(sp_rows) == 2
    for key in ("train/loss", "train/grad_norm", "train/entropy"):
        for a, b in zip(dp_rows, sp_rows):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-7), key
    # every logged metric is the global one, each sequence-parallel group counted once (rewards, counts)
    assert_same_metrics(_metric_rows(tmp_path / "sp"), _metric_rows(tmp_path / "dp"))
