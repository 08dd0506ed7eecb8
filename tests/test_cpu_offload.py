"""FSDP2 CPU offload (``strategy=fsdp trainer.strategy.cpu_offload=true``) on 2 CPU ranks (gloo).

Each rank trains one GRPO step of the tiny Llama sharded with and without ``CPUOffloadPolicy``, LongAct
masks on q_proj/k_proj (the optimizer's pre/post hooks restore the frozen rows of the local shards, and their
gradients are zeroed): the offloaded step trains, keeps every masked row bit-identical, and lands on the
non-offloaded step's weights.
"""

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy

from longact_pl.group_exit import close_process_group
from longact_pl.learner import OptimizerCalls
from longact_pl.masking.apply import RowFreezer
from longact_pl.models.tiny import tiny_llama
from longact_pl.strategies import LongActFSDP, shard_model
from tests.test_learner import GRPO, _learner
from tests.test_lockstep_fsdp import ProcessGroupOps
from tests.test_micro_batch_tokens import _rollouts

WORLD = 2
TARGETS = ("q_proj", "k_proj")


def _masks(model) -> dict[str, torch.Tensor]:
    """A seeded 30% row mask per q_proj/k_proj (True = trained), the same on every rank."""
    gen = torch.Generator().manual_seed(1)
    return {
        name: torch.rand(m.out_features, generator=gen) < 0.3
        for name, m in model.named_modules()
        if name.endswith(TARGETS)
    }


def _train_step(rank: int, offload: bool) -> tuple[dict, dict, bool]:
    """One masked update; ``(full weights before, after, whether FSDP offloads)``."""
    model = tiny_llama(seed=0).model.train()
    masks = _masks(model)
    shard_model(model, init_device_mesh("cpu", (WORLD,)), cpu_offload=offload)
    state = model.model.layers[0]._get_fsdp_state()._fsdp_param_group
    offloaded = isinstance(state.offload_policy, CPUOffloadPolicy)
    full = lambda: {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}  # noqa: E731
    before = full()
    linears = {n: m for n, m in model.named_modules() if n in masks}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    freezer = RowFreezer()
    freezer.set_masks(linears, masks)
    freezer.attach([optimizer])
    learner = _learner(GRPO(kl_coef=0.0, aggregation="token_mean"))
    ro = _rollouts(model.config.vocab_size)
    batch = learner.prepare(model, None, ro, torch.linspace(-1.0, 1.0, len(ro.input_ids)) * (1 + rank),
                            ProcessGroupOps())  # fmt: skip
    calls = OptimizerCalls(
        backward=lambda loss: loss.backward(),
        step=lambda: (freezer.mask_grads(), optimizer.step()),
        zero_grad=lambda: optimizer.zero_grad(set_to_none=True),
        skip=lambda: None,
    )
    learner.update(model, batch, calls, ProcessGroupOps(), torch.Generator().manual_seed(0))
    return before, full(), offloaded


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        runs = {offload: _train_step(rank, offload) for offload in (False, True)}
        torch.save(runs, f"{out}{rank}.pt")
    finally:
        close_process_group()  # settles gloo threads: no abort at exit


@pytest.mark.slow
def test_offloaded_step_trains_keeps_masked_rows_and_matches_the_sharded_one(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}{r}.pt", weights_only=False) for r in range(WORLD)]
    masks = _masks(tiny_llama(seed=0).model)
    for runs in ranks:
        (before, plain, plain_offloaded), (_, offloaded, is_offloaded) = runs[False], runs[True]
        assert is_offloaded and not plain_offloaded
        moved = 0
        for name, weight in offloaded.items():
            module = name.removesuffix(".weight")
            if module in masks:
                keep = masks[module]  # [rows]
                assert torch.equal(weight[~keep], before[name][~keep]), name  # masked rows bit-identical
                assert not torch.equal(weight[keep], before[name][keep]), name  # trained rows moved
            moved += not torch.equal(weight, before[name])
            torch.testing.assert_close(weight, plain[name], rtol=1e-5, atol=1e-6, msg=name)
        assert moved == len(offloaded)  # every parameter trained
    assert all(torch.equal(ranks[0][True][1][n], ranks[1][True][1][n]) for n in ranks[0][True][1])


def test_strategy_takes_cpu_offload():
    assert LongActFSDP(cpu_offload=True).cpu_offload is True
    assert LongActFSDP().cpu_offload is False
