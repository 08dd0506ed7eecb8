"""Which process is the run's first, read from the launcher's environment before any trainer exists.

``train.run`` refuses to overwrite a run directory before a model is loaded, and only the global rank 0
may do that check (the others start later, when rank 0 may have written ``config.yaml``). Lightning's own
``rank_zero_only.rank`` is wrong at that point on a second node started without ``RANK``: it reads
``RANK``, then ``LOCAL_RANK``, then ``SLURM_PROCID`` (so a ``LOCAL_RANK=0`` exported on every node of a
SLURM job makes every node's first task "rank 0"), and falls back to 0 (so the first process of node 1
under Lightning's own launcher, ``NODE_RANK=1 python train.py ...``, which has neither, says 0 too).
After the trainer is built, ``trainer.is_global_zero`` is the answer; this is for before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def launch_global_rank_is_zero(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process will be global rank 0, from the launcher's variables.

    ``RANK`` (torchrun, and anything torch-elastic) wins; then ``SLURM_PROCID`` of a job step started with
    more than one task (srun, as in scripts/launch/slurm.sbatch); else the node (``NODE_RANK`` or
    ``GROUP_RANK``, 0 if unset) and ``LOCAL_RANK`` (0 if unset: Lightning starts a node's other processes
    with it) must both be 0.

    Args:
        env: The environment (``os.environ`` if ``None``).
    """
    env = os.environ if env is None else env
    if env.get("RANK") is not None:
        return int(env["RANK"]) == 0
    if env.get("SLURM_PROCID") is not None and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]) == 0
    node = int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")))
    return node == 0 and int(env.get("LOCAL_RANK", "0")) == 0
