"""Token-budget micro-batches under FSDP2 on 2 CPU ranks (gloo) whose completion lengths differ.

Rank 0 cuts its batch into 3 micro-batches of 1 group each, rank 1 into 2 (two groups, then one): without
agreeing, rank 1 would run fewer forwards and backwards (each a collective under FSDP2) and the ranks would
hang or mix up their collectives. With ``Learner.plan`` both run 3 micro-batches of 2, 1 and 1 spans, and
the sharded gradient equals one process's over both ranks' rollouts (reference pass included).
"""

import copy
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

from longact_pl.distributed import LocalOps
from longact_pl.group_exit import close_process_group
from longact_pl.learner import OptimizerCalls
from longact_pl.models.tiny import tiny_llama
from longact_pl.rollout.types import concat_rollouts
from longact_pl.strategies import shard_model
from tests.test_learner import GRPO, _learner
from tests.test_micro_batch_tokens import LENGTHS, _rollouts

WORLD = 2
BUDGET = 17  # packed: rank 0's groups cost 17, 12 and 13 tokens; rank 1's 9, 7 and 8


class ProcessGroupOps:
    """``DistOps`` over the default ``torch.distributed`` process group."""

    world_size = WORLD
    sequence_parallel = None

    def sum(self, tensor):
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    def max(self, tensor):
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out

    def min(self, value):
        out = torch.tensor(value)
        dist.all_reduce(out, op=dist.ReduceOp.MIN)
        return int(out)


def _rank_rollouts(rank: int, vocab: int):
    ro = _rollouts(vocab)
    if rank == 1:  # 1-token completions: two groups fit one micro-batch
        ro.completion_mask[:, 1:] = 0
        ro.attention_mask[:, ro.prompt_width + 1 :] = 0
        ro.input_ids[:, ro.prompt_width + 1 :] = 0
    return ro


def _advantages(rank: int) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 9) * (1 + rank)  # [9]


def _step(model, reference, ro, ops, advantages):
    """prepare (``advantages`` are rewards there: normalised per group) + update; the step's gradient."""
    learner = _learner(GRPO(kl_coef=0.1, aggregation="token_mean"), micro_batch_tokens=BUDGET, pack=True)
    batch = learner.prepare(model, reference, ro, advantages, ops)
    grads, backwards = {}, []

    def step():
        for name, p in model.named_parameters():
            grads[name] = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad.clone()

    def backward(loss):
        backwards.append(float(loss.detach()))
        loss.backward()

    calls = OptimizerCalls(backward, step, lambda: model.zero_grad(set_to_none=True), lambda: None)
    learner.update(model, batch, calls, ops, torch.Generator().manual_seed(0))
    return grads, backwards, batch.ref_logp


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        model = tiny_llama(seed=0).model.train()
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        mesh = init_device_mesh("cpu", (WORLD,))
        shard_model(model, mesh)
        shard_model(reference, mesh)
        grads, backwards, ref = _step(
            model,
            reference,
            _rank_rollouts(rank, model.config.vocab_size),
            ProcessGroupOps(),
            _advantages(rank),
        )
        torch.save({"grads": grads, "backwards": backwards, "ref": ref}, f"{out}{rank}.pt")
    finally:
        close_process_group()  # settles gloo threads: no abort at exit


@pytest.mark.slow
def test_ranks_with_different_micro_batches_stay_in_lock_step_and_match_one_process(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [len(r["backwards"]) for r in ranks] == [3, 3]  # rank 1 ran an empty (dummy) micro-batch
    assert ranks[1]["backwards"][-1] == 0.0
    model = tiny_llama(seed=0).model.train()
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    both = concat_rollouts([_rank_rollouts(r, model.config.vocab_size) for r in range(WORLD)], 0)
    both.group_size = 3
    want, _, ref = _step(
        model, reference, both, LocalOps(), torch.cat([_advantages(r) for r in range(WORLD)])
    )
    n = len(LENGTHS) * 3
    torch.testing.assert_close(torch.cat([r["ref"] for r in ranks]), ref, rtol=1e-5, atol=1e-5)
    assert ref[:n].abs().sum() > 0
    for name, grad in want.items():
        scale = float(grad.abs().max())
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
