"""Node-local choices when ``LOCAL_RANK != RANK`` (a second node's first process: ``LOCAL_RANK=0, RANK=1``).

Which process checks and writes the run directory, which device a rank trains on, which GPU its vLLM
engine starts on, where its weight-push bucket lives, and who writes a checkpoint: each decided from the
launcher's variables as torchrun (``RANK``, ``LOCAL_RANK``, ``GROUP_RANK``) or srun (``SLURM_*``) set them.
"""

from __future__ import annotations

import os
import threading

import pytest
import torch
from lightning.pytorch import Trainer

from longact_pl.ranks import launch_global_rank_is_zero
from longact_pl.rollout import vllm_engine, weight_push
from longact_pl.strategies import LongActDDP, LongActFSDP
from tests.rollout.test_weight_push import FakeWorkers, _model

# node 1's only process of a 2 nodes x 1 process torchrun job
TORCHRUN_NODE1 = {
    "RANK": "1", "LOCAL_RANK": "0", "GROUP_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1",
    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511", "TORCHELASTIC_RUN_ID": "none",
}  # fmt: skip
# the same job under srun (scripts/launch/slurm.sbatch), 1 task per node
SLURM_NODE1 = {
    "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_NTASKS": "2", "SLURM_NNODES": "2",
    "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "longact", "SLURM_JOB_ID": "7",
    "SLURM_NODELIST": "127.0.0.1",
}  # fmt: skip
LAUNCH_VARS = {*TORCHRUN_NODE1, *SLURM_NODE1, "NODE_RANK"}


@pytest.fixture
def launcher_env(monkeypatch):
    """Clear every launcher variable, then set the given ones."""

    def set_env(values: dict[str, str]) -> None:
        for key in LAUNCH_VARS:
            monkeypatch.delenv(key, raising=False)
        for key, value in values.items():
            monkeypatch.setenv(key, value)

    return set_env


@pytest.mark.parametrize(
    "env,zero",
    [
        ({}, True),  # one process
        (TORCHRUN_NODE1, False),
        ({**TORCHRUN_NODE1, "RANK": "0", "GROUP_RANK": "0"}, True),
        (SLURM_NODE1, False),
        ({**SLURM_NODE1, "LOCAL_RANK": "0"}, False),  # LOCAL_RANK exported on every node by a task prolog
        ({**SLURM_NODE1, "SLURM_PROCID": "0", "SLURM_NODEID": "0"}, True),
        ({"NODE_RANK": "1"}, False),  # node 1's first process under Lightning's own launcher
        ({"NODE_RANK": "0", "LOCAL_RANK": "1"}, False),  # a process Lightning started on node 0
    ],
    ids=["single", "torchrun-node1", "torchrun-node0", "srun-node1", "srun-local-rank", "srun-node0",
         "lightning-node1", "lightning-local1"],
)  # fmt: skip
def test_only_the_global_rank_zero_checks_the_run_directory(launcher_env, env, zero):
    launcher_env(env)
    assert launch_global_rank_is_zero() is zero


@pytest.mark.parametrize("env", [TORCHRUN_NODE1, SLURM_NODE1], ids=["torchrun", "srun"])
@pytest.mark.parametrize("strategy", [LongActDDP, LongActFSDP])
def test_node1_rank_is_global_1_on_its_local_device_and_writes_no_checkpoint(
    launcher_env, tmp_path, env, strategy
):
    launcher_env(env)
    kwargs = {"save_distributed_checkpoint": False} if strategy is LongActFSDP else {}
    trainer = Trainer(
        accelerator="cpu", devices=1, num_nodes=2, strategy=strategy(**kwargs), logger=False,
        enable_progress_bar=False, enable_checkpointing=False,
    )  # fmt: skip
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (1, 0, 1)
    assert not trainer.is_global_zero  # config.yaml, metrics, exports, masks: rank 0 writes them
    # the device is picked by the node-local rank: cuda:0 of node 1 (cuda:1 does not exist there)
    trainer.strategy.parallel_devices = [torch.device("cuda", 0)]
    assert trainer.strategy.root_device == torch.device("cuda", 0)
    trainer.strategy.save_checkpoint({"state_dict": {}, "step": 1}, tmp_path / "last.ckpt")
    assert not (tmp_path / "last.ckpt").exists()  # a full checkpoint file: global rank 0 alone writes it
    launcher_env({})
    solo = Trainer(accelerator="cpu", devices=1, strategy=strategy(**kwargs), logger=False)
    solo.strategy.save_checkpoint({"state_dict": {}, "step": 1}, tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt").exists()  # the same call on global rank 0 writes


def test_vllm_engine_starts_on_the_node_local_gpu(monkeypatch, launcher_env):
    """Lightning sets the current CUDA device from the node-local rank; the engine must use that one,
    as an index into this node's CUDA_VISIBLE_DEVICES, whatever the global rank."""
    launcher_env({**TORCHRUN_NODE1, "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # torch.cuda.set_device(LOCAL_RANK)
    with vllm_engine._engine_gpus(tp=1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"


def test_weight_push_buckets_of_ranks_sharing_a_host_do_not_collide(monkeypatch, launcher_env):
    """Two nodes on one host both have LOCAL_RANK=0: their concurrent pushes must use distinct segments."""
    launcher_env(TORCHRUN_NODE1)
    segments: list[str] = []
    mapped = weight_push.map_segment

    def recording(path, size):
        segments.append(path)
        return mapped(path, size)

    monkeypatch.setattr(weight_push, "map_segment", recording)
    model = _model()
    workers = [FakeWorkers(1), FakeWorkers(1)]
    barrier, errors = threading.Barrier(2), []
    largest = weight_push.largest_tensor_bytes(model, None)

    def push(rpc):
        def rpc_after_both_mapped(*args, **kwargs):  # both segments exist before either is read
            barrier.wait(timeout=30)
            return rpc(*args, **kwargs)

        try:
            weight_push.push_buckets(
                rpc_after_both_mapped, weight_push.iter_weights(model), None, 1, 1 << 12, largest
            )
        except Exception as err:  # noqa: BLE001 - reported by the test below
            errors.append(err)

    threads = [threading.Thread(target=push, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(segments) == 2 and segments[0] != segments[1]
    want = dict(weight_push.iter_weights(model))
    for w in workers:
        assert set(w.received[0]) == set(want)
        assert all(torch.equal(w.received[0][k], v) for k, v in want.items())
