"""Multi-node, as launched: 2 nodes x 1 process on 127.0.0.1 equal 2 processes on one node.

``scripts/launch/torchrun.sh`` runs twice at once (``NNODES=2 NODE_RANK=0/1``: torchrun's static
rendezvous on ``MASTER_ADDR=127.0.0.1``), and ``scripts/launch/slurm.sbatch`` runs with a stand-in ``srun``
that starts its line as 2 tasks with the variables srun gives one task per node (``SLURM_PROCID=0/1``,
``SLURM_NODEID=0/1``, ``SLURM_LOCALID=0``). Each node's process has ``LOCAL_RANK`` 0 and global rank 0 or 1.
Both must train exactly like ``train.py trainer.devices=2`` (Lightning's launcher, one node): the same applied
gradients at both steps (``GradDump``), final weights, masks and logged metrics, with ``config.yaml``, the
export and the checkpoint's metadata written once, by global rank 0.
"""

from __future__ import annotations

import csv
import os
import socket
import stat
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ROOT, child_env
from tests.parity import COMMON

TIMEOUT = 900
# the parity matrix's setting (tests/parity.py: prompts dealt by rank, per-prompt seeded rollouts, odd
# sizes), 1 prompt per node, LongAct masks rebuilt after each step; the launchers set the accelerator, and
# last.ckpt is written (sharded: one file per rank)
DROP = ("trainer.accelerator", "callbacks.model_checkpoint.save_last")
OVERRIDES = [
    *(o for o in COMMON if not o.startswith(DROP)),
    "data.batch_size=1",
    "masking.refresh_every=1",
    "+callbacks.grad_dump._target_=longact_pl.diagnostics.GradDump",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in child_env().items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _wait(procs: list[subprocess.Popen]) -> None:
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, _) in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]


def _torchrun_two_nodes(run_dir) -> None:
    port = str(_free_port())
    script = str(ROOT / "scripts" / "launch" / "torchrun.sh")
    args = [*OVERRIDES, f"+callbacks.grad_dump.out_dir={run_dir / 'grads'}"]
    procs = [
        subprocess.Popen(
            ["bash", script, *args],
            env=_env(
                NNODES="2",
                NODE_RANK=str(node),
                GPUS_PER_NODE="1",
                ACCELERATOR="cpu",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                RUN_DIR=str(run_dir),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for node in (0, 1)
    ]
    _wait(procs)


# srun stand-in: runs its command as one task per "node", each with the variables srun would give it
FAKE_SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for node in 0 1; do
    SLURM_PROCID=$node SLURM_NODEID=$node SLURM_LOCALID=0 SLURM_NTASKS=2 SLURM_STEP_NUM_TASKS=2 "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""


def _slurm_two_nodes(tmp_path, run_dir) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(FAKE_SRUN)
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = _env(
        PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(ROOT), SLURM_JOB_ID="7",
        SLURM_JOB_NAME="longact", SLURM_NNODES="2", SLURM_NTASKS_PER_NODE="1", SLURM_CPUS_PER_TASK="1",
        SLURM_NODELIST="127.0.0.1", MASTER_PORT=str(_free_port()), ACCELERATOR="cpu", RUN_DIR=str(run_dir),
    )  # fmt: skip
    args = [*OVERRIDES, f"+callbacks.grad_dump.out_dir={run_dir / 'grads'}"]
    script = str(ROOT / "scripts" / "launch" / "slurm.sbatch")
    _wait([subprocess.Popen(["bash", script, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)])  # fmt: skip


def _one_node(run_dir) -> None:
    args = [*OVERRIDES, f"+callbacks.grad_dump.out_dir={run_dir / 'grads'}"]
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", "strategy=fsdp", "trainer.accelerator=cpu",
           "trainer.devices=2", *args]  # fmt: skip
    _wait(
        [
            subprocess.Popen(
                cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        ]
    )


def _result(run_dir) -> dict:
    with open(run_dir / "metrics.csv") as f:
        rows = [
            {k: float(v) for k, v in r.items() if v and "per_s" not in k}
            for r in csv.DictReader(f)
            if r.get("train/loss")
        ]
    return {
        "steps": [load_file(run_dir / "grads" / f"step{s}.safetensors") for s in (1, 2)],
        "final": load_file(run_dir / "final" / "model.safetensors"),
        "metrics": rows,
    }


def _assert_same(got: dict, want: dict) -> None:
    assert len(got["metrics"]) == len(want["metrics"]) == 2
    for g, w in zip(got["metrics"], want["metrics"]):
        assert set(g) == set(w) and g == pytest.approx(w, rel=1e-6, abs=1e-9)
    for g, w in zip(got["steps"], want["steps"]):  # applied gradients and masks of both steps
        assert set(g) == set(w) and any(k.startswith("mask/") for k in w)
        for key, value in w.items():
            torch.testing.assert_close(g[key], value, rtol=1e-6, atol=1e-9, msg=key)
    for key, value in want["final"].items():
        torch.testing.assert_close(got["final"][key], value, rtol=1e-6, atol=1e-9, msg=key)


@pytest.mark.slow
def test_torchrun_and_slurm_on_two_nodes_train_like_two_processes_on_one_node(tmp_path):
    _one_node(tmp_path / "one_node")
    want = _result(tmp_path / "one_node")
    for step in want["steps"]:  # both steps trained (mixed rewards), under masks
        assert any(float(t.abs().max()) > 0 for k, t in step.items() if k.startswith("grad/"))
    for launch, run_dir in (("torchrun", tmp_path / "torchrun"), ("slurm", tmp_path / "slurm")):
        if launch == "torchrun":
            _torchrun_two_nodes(run_dir)
        else:
            _slurm_two_nodes(tmp_path, run_dir)
        _assert_same(_result(run_dir), want)
        # global rank 0 wrote the run's files; the sharded checkpoint holds both ranks' shards
        assert (run_dir / "config.yaml").is_file() and (run_dir / "final" / "mask.safetensors").is_file()
        shards = sorted(p.name for p in (run_dir / "checkpoints" / "last.ckpt").glob("*.distcp"))
        assert shards == ["__0_0.distcp", "__1_0.distcp"], shards
