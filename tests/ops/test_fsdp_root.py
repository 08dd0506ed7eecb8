"""The fast log-prob paths under FSDP2 (2 CPU ranks, gloo) equal the naive path on the unsharded model.

Both ranks hold the same batch, so FSDP2's gradient average over ranks is the single-process gradient.
"""

import functools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

from longact_pl.group_exit import close_process_group
from longact_pl.models.tiny import tiny_llama
from longact_pl.ops.fsdp_root import through_root
from longact_pl.ops.policy_logprobs import LogprobCall, LogprobPass
from longact_pl.strategies import enable_activation_checkpointing, shard_model
from tests.ops.test_shared_prefix import C, _assert_same, _batch, _naive, _run

WORLD = 2
# (shared_prefix, chunk_size, activation checkpointing, reshard_after_forward): the shared path with a whole
# head, with recomputed layers, and keeping gathered layers until backward; the per-row path, chunked head
CASES = [(True, None, False, True), (True, 4, True, True), (True, 4, False, False), (False, 5, False, True)]


def _sharded_run(model, lp: LogprobPass, ids, mask):
    """Like ``_run``, with each gradient gathered from its shards."""
    model.zero_grad(set_to_none=True)
    comp = mask[:, -C:].float()
    logp, ent = lp(model, LogprobCall(ids, mask, C, temperature=0.7, with_entropy=True))
    weights = torch.linspace(-1.0, 2.0, ids.shape[0])[:, None]
    (logp * weights * comp).sum().backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach() * comp, ent * comp, grads


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = []
        for shared, chunk, ckpt, reshard in CASES:
            model = tiny_llama(seed=0).model.train()
            if ckpt:
                enable_activation_checkpointing(model)
            shard_model(model, init_device_mesh("cpu", (WORLD,)), reshard_after_forward=reshard)
            lp = LogprobPass.for_model(model, shared_prefix=shared, chunk_size=chunk)
            ids, mask = _batch(model.config.vocab_size)
            results.append((_sharded_run(model, lp, ids, mask), lp.plan.shared, "forward" in vars(model)))
        if rank == 0:
            torch.save(results, out)
    finally:
        close_process_group()  # settles gloo threads: no abort at exit


@pytest.mark.slow
def test_fast_logprob_paths_under_fsdp2_match_the_unsharded_model(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=WORLD, join=True)
    results = torch.load(out, weights_only=False)
    model = tiny_llama(seed=0).model.train()
    want = _run(model, _naive, *_batch(model.config.vocab_size))
    for (shared, *_), (got, still_shared, leftover_forward) in zip(CASES, results, strict=True):
        assert still_shared == shared  # no fallback to the model's own per-row forward
        assert not leftover_forward  # the root's forward is the class's again
        _assert_same(got, want)


def test_through_root_calls_the_function_directly_on_plain_models(tiny):
    model = tiny.model
    seen = []
    assert through_root(model, functools.partial(seen.append, 1)) is None and seen == [1]
    assert "forward" not in vars(model)
